// The data space map writer (bitmaps packed four entries a word, counts of 3 and more sent to the
// ref-count tree a run at a time) read back through the reader side, which decodes each bitmap
// entry on its own and walks the ref-count tree: every count must come back as it was set.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockReader, BlockWriter } from '../src/io/block-io.js';
import { BlockAllocator } from '../src/pdata/block-allocator.js';
import { RefCounts } from '../src/pdata/ref-counts.js';
import { ENTRIES_PER_BITMAP, OVERFLOW_COUNT, walkRefCountTree } from '../src/pdata/space-map/common.js';
import { openDiskSpaceMap } from '../src/pdata/space-map/disk.js';
import { writeDataSpaceMap } from '../src/pdata/space-map/disk-write.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('thin-sm-write-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A deterministic generator (xorshift32), so a failure can be replayed. */
function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

/** Counts in stretches of one kind: unused, low (1-2), shared (3-254), spilled (255 and more), mixed. */
function makeCounts(nrBlocks: number, seed: number): number[] {
  const rnd = random(seed);
  const want: number[] = [];
  while (want.length < nrBlocks) {
    const kind = Math.floor(rnd() * 5);
    const n = 1 + Math.floor(rnd() * (rnd() < 0.5 ? 9 : 700));
    for (let i = 0; i < n && want.length < nrBlocks; i++) {
      if (kind === 0) want.push(0);
      else if (kind === 1) want.push(1 + Math.floor(rnd() * 2));
      else if (kind === 2) want.push(3 + Math.floor(rnd() * 252));
      else if (kind === 3) want.push(255 + Math.floor(rnd() * 400));
      else want.push([0, 1, 2, 3, 4, 254, 255, 256][Math.floor(rnd() * 8)]);
    }
  }
  return want;
}

function writeAndReadBack(want: number[]): { got: number[]; nrAllocated: number; firstFree: number[] } {
  const file = path.join(dir, `sm${Math.random().toString(36).slice(2)}.bin`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 16 << 20);
  const out = new BlockWriter(file);
  const counts = new RefCounts();
  want.forEach((c, b) => {
    if (c > 0) counts.incRange(b, 1);
    for (let k = 1; k < c; k++) counts.inc(b);
  });
  const alloc = new BlockAllocator(out);
  const root = writeDataSpaceMap(alloc, counts, want.length);
  alloc.flush();
  out.close();

  const io = new BlockReader(file);
  try {
    const errors: unknown[] = [];
    const sink = { error: (e: unknown) => errors.push(e) };
    const sm = openDiskSpaceMap(io, root, sink);
    const got: number[] = [];
    sm.forEachBitmap(sink, (_first, c) => got.push(...c));
    const overflow = new Map<number, number>();
    walkRefCountTree(io, root.refCountRoot, { entry: (b, c) => overflow.set(b, c), error: (e) => errors.push(e) });
    for (let b = 0; b < got.length; b++) {
      if (got[b] === OVERFLOW_COUNT) {
        got[b] = overflow.get(b) ?? -1;
        overflow.delete(b);
      }
    }
    expect(errors).toEqual([]);
    expect([...overflow.keys()], 'ref-count entries for blocks whose bitmap entry is not 3').toEqual([]);
    return { got, nrAllocated: Number(root.nrAllocated), firstFree: sm.index.map((e) => e.noneFreeBefore) };
  } finally {
    io.close();
  }
}

describe('writeDataSpaceMap', () => {
  // Whole bitmaps, then a last one whose length is not a multiple of 4 (the per-entry tail).
  it.each([
    { nrBlocks: 2 * ENTRIES_PER_BITMAP + 1237, seed: 1 },
    { nrBlocks: ENTRIES_PER_BITMAP, seed: 2 },
    { nrBlocks: 3 * ENTRIES_PER_BITMAP + 2, seed: 3 },
    { nrBlocks: 5, seed: 4 },
  ])('reads back every count it was given: %o', ({ nrBlocks, seed }) => {
    const want = makeCounts(nrBlocks, seed);
    const { got, nrAllocated, firstFree } = writeAndReadBack(want);
    expect(got.length).toBe(nrBlocks);
    const diff = got.findIndex((c, b) => c !== want[b]);
    expect(diff, `block ${diff}: ${got[diff]}, set to ${want[diff]}`).toBe(-1);
    expect(nrAllocated).toBe(want.filter((c) => c > 0).length);
    // Each index entry's none_free_before is the bitmap's first unused entry (or its length).
    firstFree.forEach((at, bm) => {
      const span = want.slice(bm * ENTRIES_PER_BITMAP, (bm + 1) * ENTRIES_PER_BITMAP);
      const free = span.indexOf(0);
      expect(at, `bitmap ${bm}`).toBe(free < 0 ? span.length : free);
    });
  });
});
