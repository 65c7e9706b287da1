// Packing reference counts into space-map bitmap blocks, shared by both space-map writers.
import { BTreeBuilder } from '../btree/builder.js';
import { BITMAP_CSUM_XOR, sealBlock } from '../checksum.js';
import { writeU64 } from '../le.js';
import { RefCounts } from '../ref-counts.js';
import { BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, IndexEntry, OVERFLOW_COUNT } from './common.js';

/** Bitmap bits of a count (capped at 3): bit 2i is the high bit, so 1 and 2 swap places. */
const ENCODE = [0, 2, 1, 3];
/** RefCounts' page value meaning "above 254, ask get()". */
const SPILLED = 255;

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
  let nrFree = ENTRIES_PER_BITMAP;
  let firstFree = -1;
  if (page) {
    const base = bitmap * ENTRIES_PER_BITMAP;
    for (let i = 0; i < len; i += 4) {
      // Four entries a byte; a stretch of unused blocks is all zero bytes, left as they are.
      if (i + 4 <= len && (page[i] | page[i + 1] | page[i + 2] | page[i + 3]) === 0) {
        if (firstFree < 0) firstFree = i;
        continue;
      }
      let byte = 0;
      for (let k = 0; k < 4 && i + k < len; k++) {
        let c = page[i + k];
        if (c === 0) {
          if (firstFree < 0) firstFree = i + k;
          continue;
        }
        nrFree--;
        if (c >= OVERFLOW_COUNT) {
          overflow?.pushU32(base + i + k, c === SPILLED ? counts.get(base + i + k) : c);
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
