// thin_trim: after it, the pool's data file has holes exactly at the data blocks no device maps
// (the reference thin_dump's mappings, live and the held snapshot's, say which are used) and the
// used blocks keep their content; on a block device (a loop device over the file) the discards
// do the same. Metadata that fails the check, or a data device of the wrong size, is refused and
// nothing is touched.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import koffi from 'koffi';
import { generateXml } from './support/generate.js';
import { deviceNodes, flipBit } from './support/damage.js';
import { devIdsOf } from './support/pools.js';
import { referenceRestore, runOurs, runReference, sha256, tempDir } from './support/reference.js';

const dir = tempDir('thin-trim-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const BLOCK_SECTORS = 128;
const BLOCK_BYTES = BLOCK_SECTORS * 512;
const NR_DATA_BLOCKS = 1500;

let meta = '';
beforeAll(() => {
  const xml = path.join(dir, 'pool.xml');
  fs.writeFileSync(xml, generateXml({
    seed: 21, dataBlockSize: BLOCK_SECTORS, nrDataBlocks: NR_DATA_BLOCKS, origins: 2, snapshotsPerOrigin: 2,
    mappingsPerOrigin: 250, deleteSome: true,
  }));
  meta = path.join(dir, 'pool.bin');
  referenceRestore(xml, meta, 8);
});

/** Data blocks some device maps, from the reference's dumps (live, and the metadata snapshot's). */
function usedBlocks(metadata: string): Set<number> {
  const used = new Set<number>();
  for (const args of [[metadata], ['-m', metadata]]) {
    const xml = runReference('thin_dump', args).stdout;
    for (const m of xml.matchAll(/data_block="(\d+)"/g)) used.add(Number(m[1]));
    for (const m of xml.matchAll(/data_begin="(\d+)" length="(\d+)"/g)) {
      for (let i = 0; i < Number(m[2]); i++) used.add(Number(m[1]) + i);
    }
  }
  return used;
}

/** A data file whose every block holds bytes unique to it (nothing is a hole to begin with). */
function dataFile(name: string): string {
  const p = path.join(dir, name);
  const fd = fs.openSync(p, 'w');
  const block = Buffer.alloc(BLOCK_BYTES);
  for (let b = 0; b < NR_DATA_BLOCKS; b++) {
    for (let off = 0; off < BLOCK_BYTES; off += 4) block.writeUInt32LE((b * 2654435761 + off) >>> 0, off);
    fs.writeSync(fd, block, 0, BLOCK_BYTES, b * BLOCK_BYTES);
  }
  fs.closeSync(fd);
  return p;
}

const libc = koffi.load('libc.so.6');
const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** The file's data extents as data-block ranges [begin, end), from SEEK_DATA / SEEK_HOLE. */
function dataExtents(file: string): [number, number][] {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  const extents: [number, number][] = [];
  try {
    for (let at = 0; at < size; ) {
      const start = Number(lseek(fd, at, SEEK_DATA));
      if (start < 0) break;
      const end = Number(lseek(fd, start, SEEK_HOLE));
      extents.push([start / BLOCK_BYTES, end / BLOCK_BYTES]);
      at = end;
    }
  } finally {
    fs.closeSync(fd);
  }
  return extents;
}

/** Ranges [begin, end) of consecutive blocks in a set. */
function rangesOf(blocks: Set<number>): [number, number][] {
  const sorted = [...blocks].sort((a, b) => a - b);
  const ranges: [number, number][] = [];
  for (const b of sorted) {
    const last = ranges[ranges.length - 1];
    if (last && last[1] === b) last[1]++;
    else ranges.push([b, b + 1]);
  }
  return ranges;
}

function expectTrimmed(data: string, before: Buffer, used: Set<number>): void {
  expect(dataExtents(data)).toEqual(rangesOf(used));
  const after = fs.readFileSync(data);
  const zero = Buffer.alloc(BLOCK_BYTES);
  for (let b = 0; b < NR_DATA_BLOCKS; b++) {
    const got = after.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES);
    const want = used.has(b) ? before.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES) : zero;
    if (!got.equals(want)) expect.fail(`data block ${b} (${used.has(b) ? 'used' : 'unused'}) is wrong after the trim`);
  }
}

describe('thin_trim', () => {
  it('punches holes in a data file exactly at the unused data blocks, keeping the rest', () => {
    const used = usedBlocks(meta);
    expect(used.size).toBeGreaterThan(300);
    expect(used.size).toBeLessThan(NR_DATA_BLOCKS - 100);
    const data = dataFile('data.img');
    const before = fs.readFileSync(data);
    const metaBefore = sha256(meta);
    const r = runOurs('thin_trim', ['--metadata-dev', meta, '--data-dev', data]);
    expect(r.status, r.stderr).toBe(0);
    expectTrimmed(data, before, used);
    expect(sha256(meta), 'the metadata is only read').toBe(metaBefore);
    // Again: nothing left to do, nothing changes.
    expect(runOurs('thin_trim', ['--metadata-dev', meta, '--data-dev', data, '--pool-inactive']).status).toBe(0);
    expectTrimmed(data, before, used);
  });

  const loopOk = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0;
  it.skipIf(!loopOk)('on a block device (a loop device over the data file): discard requests, same result', () => {
    const data = dataFile('loop-data.img');
    const before = fs.readFileSync(data);
    const loop = execFileSync('losetup', ['-f', '--show', data], { encoding: 'utf8' }).trim();
    try {
      const r = runOurs('thin_trim', ['--metadata-dev', meta, '--data-dev', loop]);
      expect(r.status, r.stderr).toBe(0);
    } finally {
      execFileSync('losetup', ['-d', loop]);
    }
    expectTrimmed(data, before, usedBlocks(meta));
  });

  it('refuses metadata that fails the check, and a data device too small, touching nothing', () => {
    const damaged = path.join(dir, 'damaged.bin');
    fs.copyFileSync(meta, damaged);
    flipBit(damaged, deviceNodes(damaged, devIdsOf(damaged)[0]).leaves[0]);
    const data = dataFile('refused.img');
    const before = sha256(data);
    const r = runOurs('thin_trim', ['--metadata-dev', damaged, '--data-dev', data]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^thin_trim: .*fails the check[^\n]*\n$/);
    expect(sha256(data)).toBe(before);
    fs.truncateSync(data, (NR_DATA_BLOCKS - 1) * BLOCK_BYTES);
    const short = runOurs('thin_trim', ['--metadata-dev', meta, '--data-dev', data]);
    expect(short.status).toBe(1);
    expect(short.stderr).toMatch(/^thin_trim: .*size[^\n]*\n$/);
    fs.truncateSync(data, NR_DATA_BLOCKS * BLOCK_BYTES);
    expect(dataExtents(data).length).toBeGreaterThan(0);
    for (const args of [['--data-dev', data], ['--metadata-dev', meta], ['--metadata-dev', meta, '--data-dev', path.join(dir, 'none')]]) {
      const u = runOurs('thin_trim', args);
      expect(u.status, args.join(' ')).toBe(1);
      expect(u.stderr).toMatch(/^thin_trim: [^\n]*\n$/);
    }
  });
});
