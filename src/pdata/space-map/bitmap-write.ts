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
 * One page's packing into a bitmap: the entries of 3 to 254 sent to the ref-count tree a stretch
 * at a time (`start`: where the open stretch began, or -1; each stretch's counts as its values),
 * spilled counts one by one, and the totals of the index entry.
 */
class Packing implements RunValues {
  start = -1;
  /** Entries of count 1 or more so far. */
  nrUsed = 0;
  /** The first unused entry seen, `len` or beyond if none. */
  firstFree: number;

  constructor(
    private readonly page: Uint8Array,
    private readonly base: number,
    len: number,
    private readonly counts: RefCounts,
    private readonly tree: BTreeBuilder | undefined,
  ) {
    this.firstFree = len;
  }

  /** Closes the open stretch, if any, before entry `end`. */
  end(end: number): void {
    if (this.start < 0) return;
    this.tree?.pushRun(this.base + this.start, end - this.start, this);
    this.start = -1;
  }

  /** Entry `i` is 255 or more: its exact count, alone. */
  spilled(i: number): void {
    this.end(i);
    this.tree?.pushU32(this.base + i, this.counts.get(this.base + i));
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
  // Like the kernel, entries past the end of the space map count as free in the last bitmap.
  if (!page) return seal(buf, location, ENTRIES_PER_BITMAP, len > 0 ? 0 : len);
  const packing = new Packing(page, bitmap * ENTRIES_PER_BITMAP, len, counts, overflow);
  if (LITTLE_ENDIAN) packWords(buf, packing, page, len);
  else packEntries(buf, packing, page, len);
  packing.end(len);
  return seal(buf, location, ENTRIES_PER_BITMAP - packing.nrUsed, Math.min(packing.firstFree, len));
}

/**
 * Four entries a word (a byte each of the page's u32 words on a little-endian host), the last
 * word's bytes past `len` taken as zero. Every word takes the same steps up to the overflow
 * stretches (an unused stretch and the last word included): in this loop, run once per pool,
 * a branch first taken late would throw V8's optimised code away (so is anything done only
 * before or after it: the totals are kept in `packing` as the loop goes).
 */
function packWords(buf: Buffer, packing: Packing, page: Uint8Array, len: number): void {
  const fullWords = len >>> 2;
  const tailMask = 2 ** (8 * (len & 3)) - 1;
  const pageWords = new Uint32Array(page.buffer, page.byteOffset, (len + 3) >>> 2);
  for (let j = 0; j < pageWords.length; j++) {
    const w = pageWords[j] & (j < fullWords ? 0xffffffff : tailMask);
    // Bit 7 of each byte: count >= 1, count >= 3 (no carry crosses a byte: at most 0x7f + 0x7f).
    const used = (((w & LOW7) + LOW7) | w) & HIGH1;
    const high = (((w & LOW7) + 0x7d7d7d7d) | w) & HIGH1;
    // Counts capped at 3, then each byte's two bits side by side, then 1 and 2 swapped.
    const capped = (w & 0x03030303) | ((high >>> 7) * 3);
    const packed = (capped | (capped >>> 6) | (capped >>> 12) | (capped >>> 18)) & 0xff;
    buf[BITMAP_HEADER_SIZE + j] = ((packed & 0x55) << 1) | ((packed >>> 1) & 0x55);
    packing.nrUsed += Math.imul(used >>> 7, BYTES1) >>> 24;
    // The first unused byte of the word; with none, (31 - 32) >>> 3 is 2^29 - 1, past any bitmap.
    const free = ~used & HIGH1;
    packing.firstFree = Math.min(packing.firstFree, 4 * j + ((31 - Math.clz32(free & -free)) >>> 3));
    if (high === 0) {
      packing.end(4 * j);
      continue;
    }
    if (high === HIGH1 && ((~w - BYTES1) & w & HIGH1) === 0) {
      // All four in the tree, none spilled past 254: the stretch goes on.
      if (packing.start < 0) packing.start = 4 * j;
      continue;
    }
    for (let k = 0; k < 4; k++) {
      const i = 4 * j + k;
      if ((high >>> (8 * k + 7)) & 1) {
        if (page[i] === SPILLED) packing.spilled(i);
        else if (packing.start < 0) packing.start = i;
      } else {
        packing.end(i);
      }
    }
  }
}

/** One entry at a time: hosts where a u32 word's bytes are not in the page's order. */
function packEntries(buf: Buffer, packing: Packing, page: Uint8Array, len: number): void {
  for (let i = 0; i < len; i++) {
    let c = page[i];
    if (c === 0) {
      packing.firstFree = Math.min(packing.firstFree, i);
    } else {
      packing.nrUsed++;
    }
    if (c >= OVERFLOW_COUNT) {
      if (c === SPILLED) packing.spilled(i);
      else if (packing.start < 0) packing.start = i;
      c = OVERFLOW_COUNT;
    } else {
      packing.end(i);
    }
    buf[BITMAP_HEADER_SIZE + (i >>> 2)] |= ENCODE[c] << (2 * (i & 3));
  }
}

function seal(buf: Buffer, location: number, nrFree: number, noneFreeBefore: number): IndexEntry {
  sealBlock(buf, BITMAP_CSUM_XOR);
  return { blocknr: location, nrFree, noneFreeBefore };
}
