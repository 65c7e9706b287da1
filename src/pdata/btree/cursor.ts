// A B-tree read leaf by leaf on demand, for walking two trees side by side in key order (a
// recursive walk can only be driven from inside). Nodes are validated as walkBTree validates them;
// damage throws a BTreeError. Memory is one block buffer per level.
import { BLOCK_SIZE, BlockReader } from '../../io/block-io.js';
import { U64 } from '../le.js';
import { BTreeNode, nodeDefect } from './node.js';
import { BTreeError, NO_LIMIT, nodePlacementDefect } from './walk.js';

/** Deeper than any real tree: a cycle of internal nodes would otherwise never end. */
const MAX_DEPTH = 32;

interface Level {
  node: BTreeNode;
  /** The next child to descend into. */
  next: number;
  highKey: U64;
}

/** The subtree a cursor is about to enter: its root and the key range its parent gives it. */
export interface NextSubtree {
  block: number;
  lowKey: U64;
  highKey: U64;
  depth: number;
}

export interface CursorOptions {
  lowKey?: U64;
  highKey?: U64;
  /** Accept non-root nodes under a third full (as readers that save what they can do). */
  allowUnderfull?: boolean;
  /** The root given is inside a tree, so it too must be a third full. */
  subtree?: boolean;
}

export class LeafCursor {
  private readonly levels: Level[] = [];
  private readonly buffers: Buffer[] = [];
  private pending: NextSubtree | null;
  /** Depth of the leaves, once one has been read: every leaf must sit there. */
  leafDepth = -1;

  constructor(
    private readonly io: BlockReader,
    root: number,
    private readonly leafValueSize: number,
    private readonly opts: CursorOptions = {},
  ) {
    this.pending = { block: root, lowKey: opts.lowKey ?? 0, highKey: opts.highKey ?? NO_LIMIT, depth: 0 };
  }

  /** The subtree the next read descends into, or null when the tree is done. */
  peek(): NextSubtree | null {
    if (this.pending === null) this.pending = this.advance();
    return this.pending;
  }

  /** Passes over the subtree peek() names (the caller reads it some other way). */
  skip(): void {
    this.peek();
    this.pending = null;
  }

  /**
   * The next leaf in key order, or null at the end. Its buffer is reused by the next call.
   * Empty leaves are returned too (an empty tree is one empty leaf).
   */
  nextLeaf(): BTreeNode | null {
    for (;;) {
      const node = this.nextNode();
      if (node === null || node.isLeaf) return node;
    }
  }

  /**
   * The node peek() names, read: a leaf (its buffer reused as nextLeaf's), or an internal node,
   * entered (peek() then names its first child); null at the end. For walkers of two trees that
   * look for a subtree both share at every level on the way down.
   */
  nextNode(): BTreeNode | null {
    const sub = this.peek();
    if (sub === null) return null;
    this.pending = null;
    const node = this.readNode(sub);
    if (node.isLeaf) {
      if (this.leafDepth === -1) this.leafDepth = sub.depth;
      else if (sub.depth !== this.leafDepth) throw new BTreeError(sub.block, 'leaves at different depths', sub.lowKey, sub.highKey);
      return node;
    }
    this.levels.length = sub.depth;
    this.levels.push({ node, next: 0, highKey: sub.highKey });
    return node;
  }

  private readNode(sub: NextSubtree): BTreeNode {
    const fail = (reason: string) => new BTreeError(sub.block, reason, sub.lowKey, sub.highKey);
    if (sub.depth >= MAX_DEPTH) throw fail(`tree deeper than ${MAX_DEPTH} levels (a cycle?)`);
    if (sub.block >= this.io.nrBlocks) throw fail(`block ${sub.block} is beyond the end of the metadata device`);
    let node: BTreeNode;
    try {
      node = new BTreeNode(sub.block, this.io.readInto(sub.block, (this.buffers[sub.depth] ??= Buffer.allocUnsafe(BLOCK_SIZE))));
    } catch (e) {
      throw fail((e as Error).message);
    }
    const defect =
      nodeDefect(node, sub.block, this.leafValueSize) ??
      nodePlacementDefect(node, sub.lowKey, sub.highKey, sub.depth === 0 && !this.opts.subtree, this.opts.allowUnderfull);
    if (defect) throw fail(defect);
    return node;
  }

  /** The next child of the deepest internal node with children left. */
  private advance(): NextSubtree | null {
    while (this.levels.length > 0) {
      const depth = this.levels.length - 1;
      const level = this.levels[depth];
      const { node } = level;
      const i = level.next;
      // Read whichever child it is: V8 optimises this while the first internal node is read,
      // and a property first read at its last child threw that code away.
      const parentHigh = level.highKey;
      if (i < node.nrEntries) {
        level.next++;
        const highKey = i + 1 < node.nrEntries ? node.key(i + 1) : parentHigh;
        return { block: node.valueBlock(i), lowKey: node.key(i), highKey, depth: depth + 1 };
      }
      this.levels.pop();
    }
    return null;
  }
}
