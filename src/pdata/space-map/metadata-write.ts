// Writes the metadata space map, which must count its own blocks. The circularity is broken by
// order: first the ref-count tree (its nodes are new blocks of count 1, so they never join it),
// then every bitmap and the index block are allocated and counted, and only then, with every
// count final, are the bitmaps packed and written.
import { BLOCK_SIZE } from '../../io/block-io.js';
import { BTreeBuilder } from '../btree/builder.js';
import { MetadataAllocator } from '../block-allocator.js';
import { MAX_METADATA_BITMAPS } from './metadata.js';
import { INDEX_CSUM_XOR, sealBlock } from '../checksum.js';
import { writeU64 } from '../le.js';
import {
  ENTRIES_PER_BITMAP,
  INDEX_ENTRY_SIZE,
  OVERFLOW_COUNT,
  REF_COUNT_VALUE_SIZE,
  bitmapsFor,
  encodeIndexEntry,
} from './common.js';
import { SpaceMapRoot } from './root.js';
import { packBitmap } from './bitmap-write.js';

const INDEX_HEADER_SIZE = 16;

/** Blocks the metadata space map itself takes for a device of `nrBlocks`, besides its ref-count tree. */
export function metadataSpaceMapBlocks(nrBlocks: number): number {
  return bitmapsFor(nrBlocks) + 1;
}

/**
 * Writes the space map of every block `alloc` handed out; call it last, when nothing else will
 * be allocated. The superblock refers to the index block and the ref-count tree, so both count once.
 */
export function writeMetadataSpaceMap(alloc: MetadataAllocator): SpaceMapRoot {
  const counts = alloc.refCounts;
  const nrBlocks = alloc.nrBlocks;
  const nrBitmaps = bitmapsFor(nrBlocks);
  if (nrBitmaps > MAX_METADATA_BITMAPS) throw new Error(`metadata of ${nrBlocks} blocks needs too many bitmaps`);

  // Shared blocks (snapshot leaves, ...) referenced 3 times or more.
  const overflowTree = new BTreeBuilder(alloc, { valueSize: REF_COUNT_VALUE_SIZE });
  const used = alloc.used;
  for (let bm = 0; bm * ENTRIES_PER_BITMAP < used; bm++) {
    const page = counts.page(bm);
    if (!page) continue;
    for (let i = 0; i < ENTRIES_PER_BITMAP; i++) {
      if (page[i] < OVERFLOW_COUNT) continue;
      const b = bm * ENTRIES_PER_BITMAP + i;
      overflowTree.pushU32(b, counts.get(b));
    }
  }
  const refCountRoot = overflowTree.complete();
  counts.inc(refCountRoot);

  const bitmapBlocks: number[] = [];
  for (let bm = 0; bm < nrBitmaps; bm++) {
    const b = alloc.alloc();
    counts.inc(b);
    bitmapBlocks.push(b);
  }
  const indexBlock = alloc.alloc();
  counts.inc(indexBlock);

  const index = Buffer.alloc(BLOCK_SIZE);
  writeU64(index, 8, indexBlock);
  const bitmap = Buffer.alloc(BLOCK_SIZE);
  let nrAllocated = 0;
  for (let bm = 0; bm < nrBitmaps; bm++) {
    bitmap.fill(0);
    const len = Math.min(ENTRIES_PER_BITMAP, nrBlocks - bm * ENTRIES_PER_BITMAP);
    const ie = packBitmap(bitmap, bitmapBlocks[bm], counts, bm, len);
    alloc.writeAt(bitmapBlocks[bm], bitmap);
    nrAllocated += ENTRIES_PER_BITMAP - ie.nrFree;
    encodeIndexEntry(index, INDEX_HEADER_SIZE + bm * INDEX_ENTRY_SIZE, ie);
  }
  sealBlock(index, INDEX_CSUM_XOR);
  alloc.writeAt(indexBlock, index);
  return { nrBlocks, nrAllocated, bitmapRoot: indexBlock, refCountRoot };
}
