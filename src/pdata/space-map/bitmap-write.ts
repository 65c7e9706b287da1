// Packing reference counts into space-map bitmap blocks, shared by both space-map writers.
import { BTreeBuilder, RunValues } from '../btree/builder.js';
import { BITMAP_CSUM_XOR, sealBlock } from '../checksum.js';
import { writeU64 } from '../le.js';
import { RefCounts } from '../ref-counts.js';
import { BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, IndexEntry, OVERFLOW_COUNT } from './common.js';

/** Bitmap bits of a count (capped at 3): bit 2i is the high bit, so 1 and 2 swap places. */
const ENCODE = [0, 2, 1, 3];
/** RefCounts' page value meaning "above 254, ask get()". */
const SPILLED = 255;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const LOW7 = 0x7f7f7f7f;
/** Bit 7 of each byte, as the signed int32 that bitwise operators give. */
const HIGH1 = 0x80808080 | 0;
const BYTES1 = 0x01010101;

/**
 * The entries of 3 to 254 of a page, sent to the ref-count tree a stretch at a time (`start`:
 * where the open stretch began, or -1), each stretch's counts as its values.
 */
class OverflowRuns implements RunValues {
  start = -1;

  constructor(
    private readonly page: Uint8Array,
    private readonly base: number,
    private readonly tree: BTreeBuilder | undefined,
  ) {}

  /** Closes the open stretch, if any, before entry `end`. */
  end(end: number): void {
    if (this.start < 0) return;
    this.tree?.pushRun(this.base + this.start, end - this.start, this);
    this.start = -1;
  }

  fill(words: Uint32Array, at: number, offset: number, n: number): void {
    const from = this.start + offset;
    words.set(this.page.subarray(from, from + n), at);
  }
}

/**
 * Fills `buf` (a zeroed block) as bitmap `bitmap` of `counts`, located at block `location`,
 * covering `len` entries, and seals it. Each entry of count 3 or more goes into `overflow` (the
 * ref-count tree, which may allocate: `buf` must not be a block of the allocator's batch), in
 * block order; without `overflow` they are only marked 3. Returns the index entry for the bitmap.
 */
export function packBitmap(
  buf: Buffer,
  location: number,
  counts: RefCounts,
  bitmap: number,
  len: number,
  overflow?: BTreeBuilder,
): IndexEntry {
  writeU64(buf, 8, location);
  const page = counts.page(bitmap);
  if (!page) return seal(buf, location, ENTRIES_PER_BITMAP, len > 0 ? 0 : len);
  const base = bitmap * ENTRIES_PER_BITMAP;
  // Like the kernel, entries past the end of the space map count as free in the last bitmap.
  let nrFree = ENTRIES_PER_BITMAP;
  let firstFree = -1;
  const runs = new OverflowRuns(page, base, overflow);

  // Four entries a word, each a byte of the page (one per u32 word byte on a little-endian host).
  const words = LITTLE_ENDIAN ? (len >>> 2) : 0;
  const pageWords = new Uint32Array(page.buffer, page.byteOffset, words);
  for (let j = 0; j < words; j++) {
    const w = pageWords[j];
    if (w === 0) {
      // An unused stretch: the bitmap's byte stays zero.
      if (firstFree < 0) firstFree = 4 * j;
      runs.end(4 * j);
      continue;
    }
    // Bit 7 of each byte: count >= 1, count >= 3 (no carry crosses a byte: at most 0x7f + 0x7f).
    const used = (((w & LOW7) + LOW7) | w) & HIGH1;
    const high = (((w & LOW7) + 0x7d7d7d7d) | w) & HIGH1;
    // Counts capped at 3, then each byte's two bits side by side, then 1 and 2 swapped.
    const capped = (w & 0x03030303) | ((high >>> 7) * 3);
    const packed = (capped | (capped >>> 6) | (capped >>> 12) | (capped >>> 18)) & 0xff;
    buf[BITMAP_HEADER_SIZE + j] = ((packed & 0x55) << 1) | ((packed >>> 1) & 0x55);
    nrFree -= Math.imul(used >>> 7, BYTES1) >>> 24;
    if (used !== HIGH1 && firstFree < 0) {
      const free = ~used & HIGH1;
      firstFree = 4 * j + ((31 - Math.clz32(free & -free)) >>> 3);
    }
    if (high === HIGH1 && ((~w - BYTES1) & w & HIGH1) === 0) {
      // All four in the tree, none spilled past 254: the run goes on.
      if (runs.start < 0) runs.start = 4 * j;
      continue;
    }
    for (let k = 0; k < 4; k++) {
      const i = 4 * j + k;
      if ((high >>> (8 * k + 7)) & 1) {
        if (page[i] !== SPILLED) {
          if (runs.start < 0) runs.start = i;
          continue;
        }
        runs.end(i);
        overflow?.pushU32(base + i, counts.get(base + i));
      } else {
        runs.end(i);
      }
    }
  }

  // The last few entries (or every entry on a big-endian host), one at a time.
  for (let i = 4 * words; i < len; i++) {
    let c = page[i];
    if (c === 0) {
      if (firstFree < 0) firstFree = i;
    } else {
      nrFree--;
    }
    if (c >= OVERFLOW_COUNT) {
      if (c !== SPILLED) {
        if (runs.start < 0) runs.start = i;
      } else {
        runs.end(i);
        overflow?.pushU32(base + i, counts.get(base + i));
      }
      c = OVERFLOW_COUNT;
    } else {
      runs.end(i);
    }
    buf[BITMAP_HEADER_SIZE + (i >>> 2)] |= ENCODE[c] << (2 * (i & 3));
  }
  runs.end(len);
  return seal(buf, location, nrFree, firstFree < 0 ? len : firstFree);
}

function seal(buf: Buffer, location: number, nrFree: number, noneFreeBefore: number): IndexEntry {
  sealBlock(buf, BITMAP_CSUM_XOR);
  return { blocknr: location, nrFree, noneFreeBefore };
}
