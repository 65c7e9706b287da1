// thin_delta, thin_ls, thin_rmap, thin_trim, thin_metadata_pack/unpack and thin_extract on bad
// input and damaged metadata: every failure is a one-line error naming the problem, exit 1, and
// nothing crashes (no programming error escapes: TypeError, RangeError, ...), on 56
// damaged variants of a generated pool and a kernel image (bits flipped in node headers, keys
// and values, blocks zeroed, the device truncated).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE } from '../src/io/block-io.js';
import { blockChecksum, sealBlock } from '../src/pdata/checksum.js';
import { deltaDevices } from '../src/tools/delta.js';
import { extractVolume } from '../src/tools/extract.js';
import { lsPool, LS_FIELDS } from '../src/tools/ls.js';
import { packMetadata, unpackMetadata } from '../src/tools/pack.js';
import { rmapPool } from '../src/tools/rmap.js';
import { trimDataDevice } from '../src/tools/trim.js';
import { rng } from './support/generate.js';
import { Pool, devIdsOf, generatedPools, kernelPools } from './support/pools.js';
import { runOurs, tempDir } from './support/reference.js';

const dir = tempDir('thin-suite-damage-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let sources: Pool[] = [];
let data = '';
beforeAll(() => {
  sources = [generatedPools(dir).find((p) => p.name === 'snapshot-chains')!, kernelPools(dir).find((p) => p.name === 'tmeta_with_metadata_snap')!];
  data = path.join(dir, 'data.img');
  fs.writeFileSync(data, '');
  fs.truncateSync(data, 65536 * 64 * 1024);
});

/** A programming error, as opposed to an error reporting bad input. */
function isCrash(e: unknown): boolean {
  return e instanceof TypeError || e instanceof RangeError || e instanceof ReferenceError || e instanceof SyntaxError || !(e instanceof Error);
}

describe('bad inputs', () => {
  it('missing, a directory, empty, tiny, XML: one line, exit 1, for every tool', () => {
    const xml = path.join(dir, 'pool.xml');
    fs.writeFileSync(xml, '<superblock uuid="" time="0" transaction="0" flags="0" version="2" data_block_size="128" nr_data_blocks="0">\n</superblock>\n');
    const empty = path.join(dir, 'empty');
    fs.writeFileSync(empty, '');
    const tiny = path.join(dir, 'tiny');
    fs.writeFileSync(tiny, Buffer.alloc(100, 1));
    const out = path.join(dir, 'out');
    const tools: [string, (input: string) => string[]][] = [
      ['thin_delta', (i) => ['--snap1', '0', '--snap2', '1', i]],
      ['thin_ls', (i) => ['-o', 'DEV,EXCLUSIVE', i]],
      ['thin_rmap', (i) => ['--region', '0..10', i]],
      ['thin_trim', (i) => ['--metadata-dev', i, '--data-dev', data]],
      ['thin_metadata_pack', (i) => ['-i', i, '-o', out]],
      ['thin_metadata_unpack', (i) => ['-i', i, '-o', out]],
      ['thin_extract', (i) => ['--metadata', i, '--data', data, '--dev-id', '0', '-o', out]],
    ];
    for (const [tool, args] of tools) {
      for (const input of [path.join(dir, 'missing'), dir, empty, tiny, xml]) {
        const r = runOurs(tool, args(input));
        expect(r.status, `${tool} ${input}`).toBe(1);
        expect(r.stderr, `${tool} ${input}`).toMatch(new RegExp(`^${tool}: [^\\n]+\\n$`));
        expect(fs.existsSync(out), `${tool} left an output`).toBe(false);
      }
    }
  });
});

describe('damaged metadata never crashes a tool', () => {
  it('56 damaged variants through every reader, in process', () => {
    const rand = rng(99);
    const int = (n: number) => Math.floor(rand() * n);
    const variant = path.join(dir, 'variant.bin');
    const sink = fs.openSync('/dev/null', 'w');
    const out = path.join(dir, 'variant.out');
    let failures = 0;
    let runs = 0;
    for (const src of sources) {
      const bytes = fs.readFileSync(src.path);
      const ids = devIdsOf(src.path);
      // Blocks in use: the damage lands where the readers look.
      const used: number[] = [];
      for (let b = 0; b * BLOCK_SIZE < bytes.length; b++) {
        if (bytes.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE).some((x) => x !== 0)) used.push(b);
      }
      const variants = src.name === 'snapshot-chains' ? 40 : 16;
      for (let v = 0; v < variants; v++) {
        const buf = Buffer.from(bytes);
        const kind = v % 4;
        const block = v % 10 === 0 ? 0 : used[int(used.length)];
        const at = block * BLOCK_SIZE;
        if (kind === 0) buf[at + int(BLOCK_SIZE)] ^= 1 << int(8); // a bit anywhere: a checksum error
        if (kind === 1) buf.fill(0, at, at + BLOCK_SIZE);
        if (kind === 2) {
          // A header field, key or value changed and the block re-sealed: wrong but valid-looking.
          const block = buf.subarray(at, at + BLOCK_SIZE);
          const salt = (blockChecksum(block, 0) ^ block.readUInt32LE(0)) >>> 0;
          const off = 8 + 4 * int(v % 3 === 0 ? 6 : 400);
          block.writeUInt32LE((block.readUInt32LE(off) ^ (1 << int(32))) >>> 0, off);
          sealBlock(block, salt);
        }
        const data2 = kind === 3 ? buf.subarray(0, at + BLOCK_SIZE) : buf;
        fs.writeFileSync(variant, data2);
        const attempts: (() => void)[] = [
          () => deltaDevices(variant, { left: { devId: ids[0] }, right: { devId: ids[1] }, verbose: true, stdoutFd: sink }),
          () => deltaDevices(variant, { left: { devId: ids[1] }, right: { devId: ids[0] }, metadataSnap: true, stdoutFd: sink }),
          () => lsPool(variant, { fields: [...LS_FIELDS], stdoutFd: sink }),
          () => rmapPool(variant, [{ begin: 0, end: 1 << 20 }], sink),
          () => packMetadata(variant, out, { force: true }),
          () => unpackMetadata(out, `${out}.unpacked`, { force: true }),
          () => extractVolume(variant, data, `${out}.img`, { devId: ids[0] }),
          () => trimDataDevice(variant, data),
        ];
        for (const attempt of attempts) {
          runs++;
          try {
            attempt();
          } catch (e) {
            failures++;
            if (isCrash(e)) expect.fail(`${src.name} variant ${v} (kind ${kind}, block ${block}): ${(e as Error).stack}`);
          }
        }
      }
    }
    fs.closeSync(sink);
    expect(runs).toBe((40 + 16) * 8);
    // Most variants are caught as damage by some tool.
    expect(failures).toBeGreaterThan(runs / 8);
  });
});
