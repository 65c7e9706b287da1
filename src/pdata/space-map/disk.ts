// The data space map's index: a B-tree (value size 16) from bitmap number to index entry.
import { BlockReader } from '../../io/block-io.js';
import { BTreeNode } from '../btree/node.js';
import { walkBTree } from '../btree/walk.js';
import { SpaceMapRoot, spaceMapSize } from './root.js';
import {
  INDEX_ENTRY_SIZE, IndexEntry, SpaceMapError, SpaceMapReader, SpaceMapSink, bitmapAtSuperblock, bitmapsFor, decodeIndexEntry,
} from './common.js';

/**
 * Reads every index entry of a data space map, in bitmap order. Missing entries (a damaged
 * index node, or gaps in the keys) are reported to `sink`; the result then holds only what
 * could be read, with `blocknr` 0 marking the holes so callers keep positions aligned (an entry
 * that points at block 0, the superblock, is reported and left as such a hole).
 */
export function readDiskIndex(io: BlockReader, root: SpaceMapRoot, sink: SpaceMapSink): IndexEntry[] {
  const expected = bitmapsFor(spaceMapSize(root));
  const entries: IndexEntry[] = [];
  let next = 0;
  walkBTree(io, root.bitmapRoot, INDEX_ENTRY_SIZE, {
    leaf(node: BTreeNode) {
      for (let i = 0; i < node.nrEntries; i++) {
        const key = node.keyNumber(i);
        if (key >= expected) {
          sink.error(new SpaceMapError(node.block, `index entry for bitmap ${key}, but ${root.nrBlocks} blocks need only ${expected} bitmaps`));
          continue;
        }
        for (; next < key; next++) entries.push({ blocknr: 0, nrFree: 0, noneFreeBefore: 0 });
        const e = decodeIndexEntry(node.buf, node.valueOffset(i));
        if (e.blocknr === 0) sink.error(new SpaceMapError(node.block, bitmapAtSuperblock(key)));
        entries.push(e);
        next = key + 1;
      }
    },
    nodeRef: sink.nodeRef,
    error: sink.error,
  });
  if (next < expected) {
    sink.error(new SpaceMapError(root.bitmapRoot, `data space map index lacks bitmaps ${next}-${expected - 1}`));
  }
  return entries;
}

/** Opens the data space map described by `root` for reading. */
export function openDiskSpaceMap(io: BlockReader, root: SpaceMapRoot, sink: SpaceMapSink): SpaceMapReader {
  return new SpaceMapReader(io, spaceMapSize(root), readDiskIndex(io, root, sink), root.refCountRoot);
}
