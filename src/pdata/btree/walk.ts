// Depth-first B-tree walk with full validation: every node is checked (checksum, blocknr, flags,
// sizes), keys must rise strictly and stay in the parent's range, leaves sit at one depth, and a
// block may appear once per tree (so cycles are caught). Shared subtrees can be visited once.
import { BLOCK_SIZE, BlockReader } from '../../io/block-io.js';
import { BTreeNode, nodeDefect } from './node.js';

/** A damaged node or subtree; the keys in [lowKey, highKey) could not be read through it. */
export class BTreeError extends Error {
  constructor(
    readonly block: number,
    readonly reason: string,
    readonly lowKey: number,
    readonly highKey: number,
  ) {
    super(`${reason} (block ${block})`);
  }
}

export interface BTreeVisitor {
  /** A validated leaf, in key order. Its buffer is reused once this returns: copy what you keep. */
  leaf(node: BTreeNode): void;
  /** Every reference to a node (root included), even one to a shared subtree not walked again. */
  nodeRef?(block: number): void;
  /** A defect; the subtree under it is skipped. */
  error(err: BTreeError): void;
  /**
   * A validated internal node, before its children are walked: a returned reason rejects the
   * node as damaged (reported through `error`, subtree skipped), for callers with stricter rules.
   */
  internal?(node: BTreeNode): string | null;
}

/** What a walked subtree spans, remembered so a second parent can be checked without a re-walk. */
export interface SubtreeSummary {
  height: number;
  minKey: number;
  maxKey: number;
  empty: boolean;
  /** Leaf entries readable under this subtree (damaged parts excluded), counted once per walk. */
  entries?: number;
}

/** Subtrees already walked, shared between walks of trees that may share nodes (snapshots). */
export type SubtreeMemo = Map<number, SubtreeSummary | null>;

export interface WalkOptions {
  /** Visit each shared subtree once across every walk given the same memo. */
  memo?: SubtreeMemo;
  lowKey?: number;
  highKey?: number;
  /**
   * Accept non-root nodes under a third full. The kernel never leaves them (since 5.5) and the
   * reference tools report them as damage, but a salvage keeps whatever mappings they hold.
   */
  allowUnderfull?: boolean;
}

/** The high bound of a whole tree's key range. */
export const NO_LIMIT = Number.MAX_SAFE_INTEGER + 1;

/**
 * Why a node can't stand where it is in a tree, or null: its header (nodeDefect), its fill (a
 * non-root node at least a third full unless `allowUnderfull`), keys rising strictly inside the
 * parent's range [lowKey, highKey). Every walker of a tree checks nodes with this.
 */
export function nodeDefectInTree(
  node: BTreeNode,
  leafValueSize: number,
  lowKey: number,
  highKey: number,
  isRoot: boolean,
  allowUnderfull = false,
): string | null {
  const defect = nodeDefect(node, node.block, leafValueSize);
  if (defect) return defect;
  const n = node.nrEntries;
  const minEntries = Math.floor(node.maxEntries / 3);
  if (!isRoot && n < minEntries && !allowUnderfull) {
    return `too few entries in btree_node: ${n}, expected at least ${minEntries} (max_entries = ${node.maxEntries})`;
  }
  let prev = -1;
  for (let i = 0; i < n; i++) {
    const k = node.key(i);
    if (k <= prev && i > 0) return `keys out of order: ${k} after ${prev}`;
    if (k < lowKey || k >= highKey) return `key ${k} outside parent range [${lowKey}, ${highKey})`;
    prev = k;
  }
  if (!node.isLeaf && n === 0) return 'internal node with no entries';
  return null;
}

/** Walks the tree at `root`; returns its summary, or null if the root itself was unreadable. */
export function walkBTree(
  io: BlockReader,
  root: number,
  leafValueSize: number,
  visitor: BTreeVisitor,
  opts: WalkOptions = {},
): SubtreeSummary | null {
  const inThisTree = new Set<number>();
  const memo = opts.memo;
  // One block buffer per depth: a node's buffer lives while its subtree is walked, and nothing
  // is allocated per node (millions of mappings would otherwise leave megabytes for the GC).
  const buffers: Buffer[] = [];

  const walk = (block: number, lowKey: number, highKey: number, depth: number): SubtreeSummary | null => {
    visitor.nodeRef?.(block);
    const fail = (reason: string): null => {
      visitor.error(new BTreeError(block, reason, lowKey, highKey));
      return null;
    };
    if (inThisTree.has(block)) return fail('block referenced twice in one tree (cycle or cross-link)');
    inThisTree.add(block);

    if (memo?.has(block)) {
      const s = memo.get(block)!;
      if (s && !s.empty && (s.minKey < lowKey || s.maxKey >= highKey)) {
        return fail(`shared node keys [${s.minKey}, ${s.maxKey}] outside parent range`);
      }
      return s;
    }

    let node: BTreeNode;
    try {
      if (block >= io.nrBlocks) return fail(`block ${block} is beyond the end of the metadata device`);
      node = new BTreeNode(block, io.readInto(block, (buffers[depth] ??= Buffer.allocUnsafe(BLOCK_SIZE))));
    } catch (e) {
      return fail((e as Error).message);
    }
    const result = walkNode(node, lowKey, highKey, depth, fail);
    memo?.set(block, result);
    return result;
  };

  const walkNode = (
    node: BTreeNode,
    lowKey: number,
    highKey: number,
    depth: number,
    fail: (reason: string) => null,
  ): SubtreeSummary | null => {
    const defect = nodeDefectInTree(node, leafValueSize, lowKey, highKey, node.block === root, opts.allowUnderfull);
    if (defect) return fail(defect);
    const n = node.nrEntries;
    if (node.isLeaf) {
      visitor.leaf(node);
      return n === 0
        ? { height: 0, minKey: 0, maxKey: 0, empty: true, entries: 0 }
        : { height: 0, minKey: node.key(0), maxKey: node.key(n - 1), empty: false, entries: n };
    }
    const rejected = visitor.internal?.(node);
    if (rejected) return fail(rejected);
    let height = -1;
    let minKey = NO_LIMIT;
    let maxKey = -1;
    let entries = 0;
    for (let i = 0; i < n; i++) {
      const childHigh = i + 1 < n ? node.key(i + 1) : highKey;
      const child = walk(node.valueU64(i), node.key(i), childHigh, depth + 1);
      if (!child) continue;
      if (height === -1) height = child.height;
      else if (child.height !== height) return fail('leaves at different depths');
      entries += child.entries ?? 0;
      if (!child.empty) {
        minKey = Math.min(minKey, child.minKey);
        maxKey = Math.max(maxKey, child.maxKey);
      }
    }
    if (height === -1) return { height: 1, minKey: 0, maxKey: 0, empty: true, entries: 0 };
    return { height: height + 1, minKey, maxKey, empty: maxKey < 0, entries };
  };

  return walk(root, opts.lowKey ?? 0, opts.highKey ?? NO_LIMIT, 0);
}
