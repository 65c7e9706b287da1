// Depth-first B-tree walk with full validation: every node is checked (checksum, blocknr, flags,
// sizes), keys must rise strictly and stay in the parent's range, leaves sit at one depth, and a
// block may appear once per tree (so cycles are caught). Shared subtrees can be visited once.
import { BLOCK_SIZE, BlockReader } from '../../io/block-io.js';
import { U64, u64Add } from '../le.js';
import { BTreeNode, NODE_HEADER_SIZE, nodeDefect } from './node.js';

/** A damaged node or subtree; the keys in [lowKey, highKey) could not be read through it. */
export class BTreeError extends Error {
  constructor(
    readonly block: number,
    readonly reason: string,
    readonly lowKey: U64,
    readonly highKey: U64,
  ) {
    super(`${reason} (block ${block})`);
  }

  /** The keys lost, for messages: "N", "N-M", or "N and above" when the range is open. */
  get keys(): string {
    if (this.highKey === NO_LIMIT) return `${this.lowKey} and above`;
    const last = u64Add(this.highKey, -1);
    return last === this.lowKey ? `${last}` : `${this.lowKey}-${last}`;
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
  /** Salvage walks only: entries of a node dropped for keys out of order or out of range. */
  dropped?(block: number, count: number, reason: string): void;
  /**
   * Salvage walks only: entries `from` to `to` (a prefix or a suffix) of a leaf whose keys rise
   * but lie outside the range its parent gives it, so a damaged parent may have led here: offered
   * to the visitor (instead of `dropped`), which may place them itself. The walk leaves them out.
   */
  displaced?(node: BTreeNode, from: number, to: number): void;
}

/** What a walked subtree spans, remembered so a second parent can be checked without a re-walk. */
export interface SubtreeSummary {
  height: number;
  minKey: U64;
  maxKey: U64;
  empty: boolean;
  /** Leaf entries readable under this subtree (damaged parts excluded), counted once per walk. */
  entries?: number;
}

/** Subtrees already walked, shared between walks of trees that may share nodes (snapshots). */
export type SubtreeMemo = Map<number, SubtreeSummary | null>;

export interface WalkOptions {
  /** Visit each shared subtree once across every walk given the same memo. */
  memo?: SubtreeMemo;
  /**
   * Which nodes the memo keeps (default: all). A node that may be reached again (a space-map
   * count above 1) needs remembering; others are walked again should they be, which keeps the
   * memo to the shared nodes instead of one entry per node of the pool.
   */
  memoize?: (block: number) => boolean;
  lowKey?: U64;
  /** Exclusive; default: past every u64. */
  highKey?: U64;
  /**
   * Accept non-root nodes under a third full. The kernel never leaves them (since 5.5) and the
   * reference tools report them as damage, but a salvage keeps whatever mappings they hold.
   */
  allowUnderfull?: boolean;
  /**
   * A salvage walk: underfull nodes are accepted, and a node whose keys are out of order or
   * outside its parent's range keeps its longest run of sound entries (the rest are reported
   * through `dropped`) instead of being lost whole.
   */
  salvage?: boolean;
}

/** Above every u64 key. */
export const NO_LIMIT = 1n << 64n;

/**
 * Why a node (whose header nodeDefect passed) can't stand where it is in a tree, or null: a
 * non-root node at least a third full unless `allowUnderfull`, keys rising strictly inside the
 * parent's range [lowKey, highKey), an internal node not empty. Every walker checks nodes so.
 */
export function nodePlacementDefect(node: BTreeNode, lowKey: U64, highKey: U64, isRoot: boolean, allowUnderfull = false): string | null {
  const n = node.nrEntries;
  const minEntries = Math.floor(node.maxEntries / 3);
  if (!isRoot && n < minEntries && !allowUnderfull) {
    return `too few entries in btree_node: ${n}, expected at least ${minEntries} (max_entries = ${node.maxEntries})`;
  }
  const unordered = node.firstKeyOutOfOrder();
  if (unordered >= 0) return `keys out of order: ${node.key(unordered)} after ${node.key(unordered - 1)}`;
  // Keys rise, so the first and last bound them all.
  if (n > 0) {
    const first = node.key(0);
    const last = node.key(n - 1);
    if (first < lowKey) return `key ${first} outside parent range [${lowKey}, ${rangeEnd(highKey)})`;
    // The open end (a bigint) apart: the rightmost path of every tree meets it, and a compare
    // optimised for numbers threw its code away at the first.
    if (highKey !== NO_LIMIT && last >= highKey) return `key ${last} outside parent range [${lowKey}, ${rangeEnd(highKey)})`;
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
  const inThisTree = TreeBlocks.take(io.nrBlocks);
  try {
    return new TreeWalk(io, root, leafValueSize, visitor, opts, inThisTree).walk(root, opts.lowKey ?? 0, opts.highKey ?? NO_LIMIT, 0);
  } finally {
    inThisTree.release();
  }
}

/**
 * The blocks of one tree walked so far, to catch a block reached twice (a cycle or a cross-link).
 * A bit per metadata block rather than a Set: a Set of a device's nodes grows with the tree (about
 * 1 MB for 4M mappings, and each doubling of its table leaves the old one for the GC), a bitmap is
 * 50 KB for 1.6 GiB of metadata. The bitmap is reused by the next walk (some tools walk thousands
 * of small subtrees), cleared only in the 4 KiB pages of it the walk set bits in.
 */
class TreeBlocks {
  /** Cleared sets, for the next walks (one each while walks nest). */
  private static readonly spares: TreeBlocks[] = [];
  private readonly bits: Uint8Array;
  /** A flag per 4 KiB page of `bits` that may hold a bit set (set unconditionally: no branch). */
  private readonly pageTouched: Uint8Array;
  /**
   * One block buffer per depth: a node's buffer lives while its subtree is walked, and nothing
   * is allocated per node or per walk (millions of mappings would otherwise leave megabytes for
   * the GC, and a new array per walk was a new map for the walk's optimised code).
   */
  readonly buffers: Buffer[] = [Buffer.allocUnsafe(BLOCK_SIZE)];
  /** Blocks past the metadata's end (damaged metadata only). */
  private outside: Set<number> | undefined;

  private constructor(readonly nrBlocks: number) {
    this.bits = new Uint8Array(Math.ceil(nrBlocks / 8));
    this.pageTouched = new Uint8Array(Math.ceil(this.bits.length / PAGE_BYTES));
  }

  static take(nrBlocks: number): TreeBlocks {
    const spare = TreeBlocks.spares.pop();
    return spare && spare.nrBlocks >= nrBlocks ? spare : new TreeBlocks(nrBlocks);
  }

  /** Adds `block`; false if it was there already. */
  add(block: number): boolean {
    if (block >= this.nrBlocks) {
      const outside = (this.outside ??= new Set());
      if (outside.has(block)) return false;
      outside.add(block);
      return true;
    }
    const byte = block >>> 3;
    const bit = 1 << (block & 7);
    if (this.bits[byte] & bit) return false;
    this.bits[byte] |= bit;
    this.pageTouched[byte >>> PAGE_SHIFT] = 1;
    return true;
  }

  /** Clears the set and keeps it for the next walk. */
  release(): void {
    // A page a 32 MiB of metadata: a few to scan.
    const pageTouched = this.pageTouched;
    for (let page = 0; page < pageTouched.length; page++) {
      if (pageTouched[page] === 0) continue;
      this.bits.fill(0, page << PAGE_SHIFT, (page + 1) << PAGE_SHIFT);
      pageTouched[page] = 0;
    }
    this.outside = undefined;
    TreeBlocks.spares.push(this);
  }
}

const PAGE_SHIFT = 12;
const PAGE_BYTES = 1 << PAGE_SHIFT;

/** What a walk without a memo reads as its memo: always empty. */
const NO_MEMO: SubtreeMemo = new Map();
const memoizeAll = (): boolean => true;
const noNodeRef = (): void => {};
const noRule = (): null => null;

/**
 * One walk of one tree. A class, not closures made per walk: V8 optimises its methods once for
 * every tree a tool walks (closures made per call were each a new call target, and the options
 * and visitors of different shapes each a new map: deoptimisations of the hottest code, every
 * one followed by recompiling it). Options are copied into fields of fixed shape; the visitor's
 * optional methods are looked up once.
 */
class TreeWalk {
  // Every field holds one type whatever the options (a Map, a function): a field first
  // undefined then set makes V8 generalise the class's map, and the optimised code deoptimise.
  private readonly memo: SubtreeMemo;
  private readonly memoize: (block: number) => boolean;
  private readonly salvage: boolean;
  private readonly allowUnderfull: boolean;
  private readonly nodeRef: (block: number) => void;
  private readonly leaf: (node: BTreeNode) => void;
  private readonly internal: (node: BTreeNode) => string | null;
  private readonly buffers: Buffer[];

  constructor(
    private readonly io: BlockReader,
    private readonly root: number,
    private readonly leafValueSize: number,
    private readonly visitor: BTreeVisitor,
    opts: WalkOptions,
    private readonly inThisTree: TreeBlocks,
  ) {
    this.memo = opts.memo ?? NO_MEMO;
    this.memoize = opts.memoize ?? memoizeAll;
    this.salvage = opts.salvage === true;
    this.allowUnderfull = opts.allowUnderfull === true || this.salvage;
    this.nodeRef = visitor.nodeRef ?? noNodeRef;
    this.leaf = visitor.leaf;
    this.internal = visitor.internal ?? noRule;
    this.buffers = inThisTree.buffers;
  }

  private fail(block: number, lowKey: U64, highKey: U64, reason: string): null {
    this.visitor.error(new BTreeError(block, reason, lowKey, highKey));
    return null;
  }

  walk(block: number, lowKey: U64, highKey: U64, depth: number): SubtreeSummary | null {
    this.nodeRef.call(this.visitor, block);
    if (!this.inThisTree.add(block)) return this.fail(block, lowKey, highKey, 'block referenced twice in one tree (cycle or cross-link)');

    const memo = this.memo;
    if (memo.has(block)) {
      const s = memo.get(block)!;
      if (s && !s.empty && (s.minKey < lowKey || s.maxKey >= highKey)) {
        return this.fail(block, lowKey, highKey, `shared node keys [${s.minKey}, ${s.maxKey}] outside parent range`);
      }
      return s;
    }

    const { io, buffers } = this;
    let node: BTreeNode;
    try {
      if (block >= io.nrBlocks) return this.fail(block, lowKey, highKey, `block ${block} is beyond the end of the metadata device`);
      node = new BTreeNode(block, io.readInto(block, (buffers[depth] ??= Buffer.allocUnsafe(BLOCK_SIZE))));
    } catch (e) {
      return this.fail(block, lowKey, highKey, (e as Error).message);
    }
    const result = this.walkNode(node, lowKey, highKey, depth);
    if (memo !== NO_MEMO && this.memoize(block)) memo.set(block, result);
    return result;
  }

  private walkNode(node: BTreeNode, lowKey: U64, highKey: U64, depth: number): SubtreeSummary | null {
    const defect = nodeDefect(node, node.block, this.leafValueSize);
    if (defect) return this.fail(node.block, lowKey, highKey, defect);
    if (this.salvage) node = this.salvaged(node, lowKey, highKey);
    const misplaced = nodePlacementDefect(node, lowKey, highKey, node.block === this.root, this.allowUnderfull);
    if (misplaced) return this.fail(node.block, lowKey, highKey, misplaced);
    const n = node.nrEntries;
    if (node.isLeaf) {
      this.leaf.call(this.visitor, node);
      return n === 0
        ? { height: 0, minKey: 0, maxKey: 0, empty: true, entries: 0 }
        : { height: 0, minKey: node.key(0), maxKey: node.key(n - 1), empty: false, entries: n };
    }
    const rejected = this.internal.call(this.visitor, node);
    if (rejected) return this.fail(node.block, lowKey, highKey, rejected);
    let height = -1;
    let minKey: U64 = 0;
    let maxKey: U64 = 0;
    let empty = true;
    let entries = 0;
    for (let i = 0; i < n; i++) {
      const childHigh = i + 1 < n ? node.key(i + 1) : highKey;
      const child = this.walk(node.valueBlock(i), node.key(i), childHigh, depth + 1);
      if (!child) continue;
      if (height === -1) height = child.height;
      else if (child.height !== height) {
        // A salvage keeps the leaves already taken: their keys lie in the ranges their parents
        // give, so they stay in key order, and the writer builds a balanced tree from them.
        if (!this.salvage) return this.fail(node.block, lowKey, highKey, 'leaves at different depths');
        height = Math.max(height, child.height);
      }
      entries += child.entries ?? 0;
      if (!child.empty) {
        // Children come in key order: the first non-empty one holds the minimum.
        if (empty) minKey = child.minKey;
        maxKey = child.maxKey;
        empty = false;
      }
    }
    if (height === -1) return { height: 1, minKey: 0, maxKey: 0, empty: true, entries: 0 };
    return { height: height + 1, minKey, maxKey, empty, entries };
  }

  /** A salvage's node: its sound entries only, the others offered to the visitor or dropped. */
  private salvaged(node: BTreeNode, lowKey: U64, highKey: U64): BTreeNode {
    const kept = soundEntries(node, lowKey, highKey);
    if (!kept) return node;
    const visitor = this.visitor;
    if (visitor.displaced && node.isLeaf && node.firstKeyOutOfOrder() < 0) {
      // Rising keys: those out of range are the ones below it and the ones above it.
      const first = kept.length ? kept[0] : countBelow(node, lowKey);
      const end = kept.length ? kept[kept.length - 1] + 1 : first;
      if (first > 0) visitor.displaced(node, 0, first);
      if (end < node.nrEntries) visitor.displaced(node, end, node.nrEntries);
    } else {
      visitor.dropped?.(node.block, node.nrEntries - kept.length, 'keys out of order or outside the parent node\'s range');
    }
    return compacted(node, kept);
  }
}

/** A range's end for messages: the open end past every u64 reads as 2^64. */
function rangeEnd(highKey: U64): string {
  return highKey === NO_LIMIT ? '2^64' : String(highKey);
}

/**
 * The entries of a node to keep in a salvage (the longest run of keys rising strictly inside
 * [lowKey, highKey), found as a longest increasing subsequence), or null if all are sound.
 */
function soundEntries(node: BTreeNode, lowKey: U64, highKey: U64): number[] | null {
  const n = node.nrEntries;
  // Keys rising strictly are bounded by the first and the last.
  if (node.firstKeyOutOfOrder() < 0 && (n === 0 || (node.key(0) >= lowKey && node.key(n - 1) < highKey))) return null;
  // tails[len] = index of the smallest key ending a rising run of length len + 1.
  const tails: number[] = [];
  const prev = new Int32Array(n).fill(-1);
  for (let i = 0; i < n; i++) {
    const k = node.key(i);
    if (k < lowKey || k >= highKey) continue;
    let lo = 0;
    let hi = tails.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (node.key(tails[mid]) < k) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) prev[i] = tails[lo - 1];
    tails[lo] = i;
  }
  const kept: number[] = [];
  for (let i = tails.length > 0 ? tails[tails.length - 1] : -1; i >= 0; i = prev[i]) kept.push(i);
  return kept.reverse();
}

/** How many of a leaf's (rising) keys lie below `key`. */
function countBelow(node: BTreeNode, key: U64): number {
  let i = 0;
  while (i < node.nrEntries && node.key(i) < key) i++;
  return i;
}

/** A copy of `node` holding only entries `kept` (in order), for a salvage to walk on. */
function compacted(node: BTreeNode, kept: number[]): BTreeNode {
  const buf = Buffer.from(node.buf);
  const vs = node.valueSize;
  kept.forEach((from, to) => {
    node.buf.copy(buf, NODE_HEADER_SIZE + 8 * to, NODE_HEADER_SIZE + 8 * from, NODE_HEADER_SIZE + 8 * from + 8);
    node.buf.copy(buf, node.valueOffset(to), node.valueOffset(from), node.valueOffset(from) + vs);
  });
  buf.writeUInt32LE(kept.length, 16);
  return new BTreeNode(node.block, buf);
}
