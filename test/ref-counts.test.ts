// RefCounts holds its first pages a byte a count and packs the later ones in 2, 4 or 8 bits a
// block (and a map past 254), widening a page as its counts grow: every operation is checked
// against a plain array of counts, across each widening, the spill to the map and back, page
// boundaries and the last, partial bitmap, with every page packed, none, and a mix.
import { describe, expect, it } from 'vitest';
import { RefCounts } from '../src/pdata/ref-counts.js';
import { ENTRIES_PER_BITMAP } from '../src/pdata/space-map/common.js';

/** A deterministic stream of numbers in [0, n) (xorshift32). */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

const BITMAPS = 3;
const NR_BLOCKS = BITMAPS * ENTRIES_PER_BITMAP - 1234;

/** Every count of `counts` as get(), fillBitmap() and page() give them, against the model's. */
function expectSame(counts: RefCounts, model: number[]): void {
  const out = new Uint32Array(ENTRIES_PER_BITMAP);
  for (let bm = 0; bm < BITMAPS; bm++) {
    const first = bm * ENTRIES_PER_BITMAP;
    const len = Math.min(ENTRIES_PER_BITMAP, NR_BLOCKS - first);
    const want = model.slice(first, first + len);
    const filled = out.subarray(0, len);
    counts.fillBitmap(bm, filled);
    expect(Array.from(filled)).toEqual(want);
    const got = Array.from({ length: len }, (_, i) => counts.get(first + i));
    expect(got).toEqual(want);
    const page = counts.page(bm);
    if (want.every((c) => c === 0)) expect(page === undefined || page.subarray(0, len).every((c) => c === 0)).toBe(true);
    else expect(Array.from(page!.subarray(0, len), (c, i) => (c === 255 ? counts.get(first + i) : c))).toEqual(want);
  }
}

/** Budgets for pages of bytes: none (every page packed), one page (a mix), the default (no packing here). */
const BUDGETS: [string, number | undefined][] = [
  ['every page packed', 0],
  ['the first page in bytes, the others packed', ENTRIES_PER_BITMAP],
  ['every page in bytes (the default budget)', undefined],
];

describe.each(BUDGETS)('RefCounts, %s', (_, budget) => {
  it('holds exact counts through every widening, the spill past 254 and decrements', () => {
    const counts = new RefCounts(budget);
    const model = new Array<number>(NR_BLOCKS).fill(0);
    const next = rng(9);
    // Blocks that will be counted high: past 3, past 15, past 254 (spilled) in different pages.
    const hot = [5, 6, ENTRIES_PER_BITMAP - 1, ENTRIES_PER_BITMAP, 2 * ENTRIES_PER_BITMAP + 77];
    for (let round = 0; round < 300; round++) {
      // Runs of every length, some across a page boundary; single blocks; the hot ones.
      const b = next(NR_BLOCKS);
      const n = Math.min(1 + next(round % 3 === 0 ? 40000 : 50), NR_BLOCKS - b);
      counts.incRange(b, n);
      for (let i = b; i < b + n; i++) model[i]++;
      for (const h of hot) {
        counts.inc(h);
        model[h]++;
      }
      if (round % 4 === 0) {
        const d = next(NR_BLOCKS);
        const m = Math.min(1 + next(30), NR_BLOCKS - d);
        counts.decRange(d, m);
        for (let i = d; i < d + m; i++) model[i] = Math.max(0, model[i] - 1);
      }
      if (round === 2 || round === 20 || round === 299) expectSame(counts, model);
    }
    expect(model[5]).toBeGreaterThan(255);
    // Down through the spill again: the map's counts come back to the page.
    for (let k = 0; k < 60; k++) {
      counts.dec(5);
      model[5]--;
    }
    expect(model[5]).toBeLessThan(255);
    expectSame(counts, model);
  });

  it('a page in 2-bit counts widens when a count passes 3, without touching its neighbours', () => {
    const counts = new RefCounts(budget);
    const model = new Array<number>(NR_BLOCKS).fill(0);
    // Every block of the first page at 1, 2 or 3, then one past 3, then one past 15.
    for (let i = 0; i < ENTRIES_PER_BITMAP; i++) {
      const c = 1 + (i % 3);
      for (let k = 0; k < c; k++) counts.inc(i);
      model[i] = c;
    }
    expectSame(counts, model);
    counts.incRange(2, 3);
    for (let i = 2; i < 5; i++) model[i]++;
    expectSame(counts, model);
    for (let k = 0; k < 14; k++) counts.inc(ENTRIES_PER_BITMAP - 1);
    model[ENTRIES_PER_BITMAP - 1] += 14;
    expectSame(counts, model);
    // Decrementing below zero leaves zero.
    counts.decRange(ENTRIES_PER_BITMAP, 4);
    expectSame(counts, model);
  });
});
