// Packing reference counts into space-map bitmap blocks, shared by both space-map writers.
import { BITMAP_CSUM_XOR, sealBlock } from '../checksum.js';
import { writeU64 } from '../le.js';
import { RefCounts } from '../ref-counts.js';
import { BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, IndexEntry, OVERFLOW_COUNT } from './common.js';

/** Bitmap bits of a count (capped at 3): bit 2i is the high bit, so 1 and 2 swap places. */
const ENCODE = [0, 2, 1, 3];

/**
 * Fills `buf` (a zeroed block) as bitmap `bitmap` of `counts`, located at block `location`,
 * covering `len` entries, and seals it. Calls `overflow` for each entry of count 3 or more, in
 * block order. Returns the index entry that points at it.
 */
export function packBitmap(
  buf: Buffer,
  location: number,
  counts: RefCounts,
  bitmap: number,
  len: number,
  overflow: (block: number, count: number) => void,
): IndexEntry {
  writeU64(buf, 8, location);
  const page = counts.page(bitmap);
  // Like the kernel, entries past the end of the space map count as free in the last bitmap.
  let nrFree = ENTRIES_PER_BITMAP;
  let firstFree = -1;
  if (page) {
    const base = bitmap * ENTRIES_PER_BITMAP;
    for (let i = 0; i < len; i += 4) {
      let byte = 0;
      for (let k = 0; k < 4 && i + k < len; k++) {
        let c = page[i + k];
        if (c === 0) {
          if (firstFree < 0) firstFree = i + k;
          continue;
        }
        nrFree--;
        if (c >= OVERFLOW_COUNT) {
          overflow(base + i + k, c === 255 ? counts.get(base + i + k) : c);
          c = OVERFLOW_COUNT;
        }
        byte |= ENCODE[c] << (2 * k);
      }
      buf[BITMAP_HEADER_SIZE + (i >>> 2)] = byte;
    }
  } else if (len > 0) {
    firstFree = 0;
  }
  sealBlock(buf, BITMAP_CSUM_XOR);
  return { blocknr: location, nrFree, noneFreeBefore: firstFree < 0 ? len : firstFree };
}
