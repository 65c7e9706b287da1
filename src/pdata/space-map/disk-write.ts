// Writes the data space map: a bitmap per 16320 data blocks, an index B-tree (bitmap number ->
// index entry) locating them, and a B-tree of the counts of 3 and more.
import { BLOCK_SIZE } from '../../io/block-io.js';
import { BTreeBuilder } from '../btree/builder.js';
import { MetadataAllocator } from '../block-allocator.js';
import { RefCounts } from '../ref-counts.js';
import { ENTRIES_PER_BITMAP, INDEX_ENTRY_SIZE, REF_COUNT_VALUE_SIZE, bitmapsFor, encodeIndexEntry } from './common.js';
import { SpaceMapRoot } from './root.js';
import { packBitmap } from './bitmap-write.js';

/**
 * Writes the counts of `nrBlocks` data blocks. The superblock will refer to the two trees, so
 * their roots are counted here as referenced once.
 */
export function writeDataSpaceMap(alloc: MetadataAllocator, counts: RefCounts, nrBlocks: number): SpaceMapRoot {
  const index = new BTreeBuilder(alloc, { valueSize: INDEX_ENTRY_SIZE });
  const overflowTree = new BTreeBuilder(alloc, { valueSize: REF_COUNT_VALUE_SIZE });
  const entry = Buffer.alloc(INDEX_ENTRY_SIZE);
  // Packed apart from the write batch, so the ref-count tree can take blocks meanwhile.
  const bitmap = Buffer.alloc(BLOCK_SIZE);
  let nrAllocated = 0;

  for (let bm = 0; bm < bitmapsFor(nrBlocks); bm++) {
    const len = Math.min(ENTRIES_PER_BITMAP, nrBlocks - bm * ENTRIES_PER_BITMAP);
    const block = alloc.alloc();
    alloc.refCounts.inc(block);
    bitmap.fill(0);
    const ie = packBitmap(bitmap, block, counts, bm, len, overflowTree);
    alloc.writeAt(block, bitmap);
    nrAllocated += ENTRIES_PER_BITMAP - ie.nrFree;
    encodeIndexEntry(entry, 0, ie);
    index.push(bm, entry);
  }

  const refCountRoot = overflowTree.complete();
  const bitmapRoot = index.complete();
  alloc.refCounts.inc(refCountRoot);
  alloc.refCounts.inc(bitmapRoot);
  return { nrBlocks, nrAllocated, bitmapRoot, refCountRoot };
}
