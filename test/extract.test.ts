// thin_extract: the image holds, at each thin block the device maps (per the reference's dump,
// live or of the metadata snapshot), that data block's content, and zeroes (holes) elsewhere.
// The pool's data file here marks each data block with its own number, so any misplaced copy
// shows. Errors leave no image behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { deviceNodes, flipBit } from './support/damage.js';
import { kernelPools } from './support/pools.js';
import { runOurs, runReference, sha256, tempDir } from './support/reference.js';

const dir = tempDir('thin-extract-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const BLOCK_BYTES = 128 * 512; // the kernel images' data block size
let meta = '';
let data = '';

/** thin block -> data block of one device, from the reference's dump. */
function mappingsOf(metadata: string, devId: number, snap: boolean): Map<number, number> {
  const xml = runReference('thin_dump', [...(snap ? ['-m'] : []), '--dev-id', String(devId), metadata]).stdout;
  const map = new Map<number, number>();
  for (const m of xml.matchAll(/origin_block="(\d+)" data_block="(\d+)"/g)) map.set(Number(m[1]), Number(m[2]));
  for (const m of xml.matchAll(/origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)"/g)) {
    for (let i = 0; i < Number(m[3]); i++) map.set(Number(m[1]) + i, Number(m[2]) + i);
  }
  return map;
}

beforeAll(() => {
  meta = kernelPools(dir).find((p) => p.name === 'tmeta_with_metadata_snap')!.path;
  // A sparse data file: each data block in use starts with its number and a marker, rest zero.
  data = path.join(dir, 'data.img');
  const used = new Set<number>();
  for (const snap of [false, true]) for (const id of [1, 2, 16]) for (const d of mappingsOf(meta, id, snap).values()) used.add(d);
  const fd = fs.openSync(data, 'w');
  const mark = Buffer.alloc(16);
  for (const d of used) {
    mark.writeBigUInt64LE(BigInt(d), 0);
    mark.write('DATABLK!', 8, 'latin1');
    fs.writeSync(fd, mark, 0, 16, d * BLOCK_BYTES);
  }
  fs.ftruncateSync(fd, 65536 * BLOCK_BYTES);
  fs.closeSync(fd);
});

function expectImage(image: string, map: Map<number, number>): void {
  const highest = Math.max(...map.keys());
  expect(fs.statSync(image).size).toBe((highest + 1) * BLOCK_BYTES);
  const fd = fs.openSync(image, 'r');
  const head = Buffer.alloc(16);
  try {
    for (let thin = 0; thin <= highest; thin++) {
      fs.readSync(fd, head, 0, 16, thin * BLOCK_BYTES);
      const d = map.get(thin);
      const want = Buffer.alloc(16);
      if (d !== undefined) {
        want.writeBigUInt64LE(BigInt(d), 0);
        want.write('DATABLK!', 8, 'latin1');
      }
      if (!head.equals(want)) expect.fail(`thin block ${thin}: expected data block ${d ?? 'none'}`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

describe('thin_extract', () => {
  it('copies a volume, live and from the metadata snapshot, leaving the rest holes', () => {
    const before = sha256(meta);
    for (const [devId, snap] of [[1, false], [16, true], [2, true]] as const) {
      const image = path.join(dir, `vol${devId}${snap ? 'm' : ''}.img`);
      const r = runOurs('thin_extract', ['--metadata', meta, '--data', data, '--dev-id', String(devId), '-o', image, ...(snap ? ['-m'] : [])]);
      expect(r.status, r.stderr).toBe(0);
      const map = mappingsOf(meta, devId, snap);
      expect(map.size).toBeGreaterThan(10000);
      expectImage(image, map);
      // Sparse: only the marked 4 KiB of each mapped block hold disk space.
      expect(fs.statSync(image).blocks * 512).toBeLessThanOrEqual(map.size * 8192);
      fs.rmSync(image);
    }
    expect(sha256(meta)).toBe(before);
  });

  it('--size makes the image the volume size; errors leave no image', () => {
    const image = path.join(dir, 'sized.img');
    const size = 2 ** 30 + 4096;
    expect(runOurs('thin_extract', ['--metadata', meta, '--data', data, '--dev-id', '1', '-o', image, '--size', String(size)]).status).toBe(0);
    expect(fs.statSync(image).size).toBe(size);
    fs.rmSync(image);
    const damaged = path.join(dir, 'damaged.bin');
    fs.copyFileSync(meta, damaged);
    flipBit(damaged, deviceNodes(damaged, 1).leaves[3]);
    const short = path.join(dir, 'short.img');
    fs.writeFileSync(short, Buffer.alloc(BLOCK_BYTES * 100));
    for (const args of [
      ['--metadata', meta, '--data', data, '--dev-id', '99', '-o', image],
      ['--metadata', meta, '--data', data, '--dev-id', '1', '-o', image, '--size', '4096'],
      ['--metadata', damaged, '--data', data, '--dev-id', '1', '-o', image],
      ['--metadata', meta, '--data', short, '--dev-id', '1', '-o', image],
      ['--metadata', meta, '--data', data, '--dev-id', '1', '-o', data],
      ['--metadata', meta, '--data', data, '--dev-id', '1', '-o', image, '-m7'],
      ['--metadata', meta, '--data', data, '-o', image],
    ]) {
      const r = runOurs('thin_extract', args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^thin_extract: [^\n]*\n$/);
      expect(fs.existsSync(image), `no image after ${args.join(' ')}`).toBe(false);
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    }
  });
});
