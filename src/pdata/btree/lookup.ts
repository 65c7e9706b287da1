// Finding one key in a B-tree: the path from the root down, each node validated on the way.
import { BLOCK_SIZE, BlockReader } from '../../io/block-io.js';
import { U64 } from '../le.js';
import { BTreeNode, nodeDefect } from './node.js';
import { BTreeError, NO_LIMIT, nodePlacementDefect } from './walk.js';

const MAX_DEPTH = 32;

export interface Entry {
  node: BTreeNode;
  index: number;
}

/** The leaf holding `key` and the entry's index in it, or null when the tree has no such key. */
export function lookupBTree(io: BlockReader, root: number, leafValueSize: number, key: U64, allowUnderfull = false): Entry | null {
  const e = floorBTree(io, root, leafValueSize, key, allowUnderfull);
  return e && e.node.key(e.index) === key ? e : null;
}

/**
 * The entry with the highest key at or below `key` (U64_MAX: the last entry), or null when every
 * key is above it. Throws BTreeError on a damaged node along the path.
 */
export function floorBTree(
  io: BlockReader,
  root: number,
  leafValueSize: number,
  key: U64,
  allowUnderfull = false,
): Entry | null {
  let block = root;
  let lowKey: U64 = 0;
  let highKey: U64 = NO_LIMIT;
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const fail = (reason: string) => new BTreeError(block, reason, lowKey, highKey);
    if (block >= io.nrBlocks) throw fail(`block ${block} is beyond the end of the metadata device`);
    let node: BTreeNode;
    try {
      node = new BTreeNode(block, io.readInto(block, Buffer.allocUnsafe(BLOCK_SIZE)));
    } catch (e) {
      throw fail((e as Error).message);
    }
    const defect = nodeDefect(node, block, leafValueSize) ?? nodePlacementDefect(node, lowKey, highKey, depth === 0, allowUnderfull);
    if (defect) throw fail(defect);
    // The last entry whose key is at or below `key`.
    let lo = 0;
    let hi = node.nrEntries;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (node.key(mid) <= key) lo = mid + 1;
      else hi = mid;
    }
    const i = lo - 1;
    if (i < 0) return null;
    if (node.isLeaf) return { node, index: i };
    lowKey = node.key(i);
    if (i + 1 < node.nrEntries) highKey = node.key(i + 1);
    block = node.valueBlock(i);
  }
  throw new BTreeError(block, `tree deeper than ${MAX_DEPTH} levels (a cycle?)`, lowKey, highKey);
}
