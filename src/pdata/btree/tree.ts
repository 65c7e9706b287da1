// B-trees changed in place of their old versions, through the transaction manager, as the
// kernel's dm-btree: lookup, insert, remove, range remove and delete, one or more levels (the
// mapping tree has two: dev_id, then thin block), with value types that count what the values
// point to. Nodes split, redistribute and merge as the kernel's do, so no node but the root is
// ever under a third full and the reference checkers accept every commit.
//
// The algorithms follow dm-btree.c and dm-btree-remove.c (read for behaviour, written anew):
// inserting makes room on the way down (a full root splits beneath itself; a full child first
// moves entries to a sibling with room, else splits one node into two at the ends of its parent
// or two into three elsewhere), and removing rebalances the child it is about to enter with its
// siblings (merging them when together they would be too empty).
import * as os from 'node:os';
import { Block } from '../block-manager.js';
import { BTREE_CSUM_XOR } from '../checksum.js';
import { U64, readBlockNr, readU64, u64Add, writeU64 } from '../le.js';
import { TransactionManager } from '../transaction-manager.js';
import { INTERNAL_NODE, LEAF_NODE, NODE_HEADER_SIZE, maxEntriesFor } from './node.js';

/** A B-tree node, as the kernel's node_check sees it on the way in. */
export const BTREE_NODE = {
  name: 'btree node',
  salt: BTREE_CSUM_XOR,
  check(buf: Buffer): string | null {
    const flags = buf.readUInt32LE(4);
    const nr = buf.readUInt32LE(16);
    const max = buf.readUInt32LE(20);
    const valueSize = buf.readUInt32LE(24);
    if (NODE_HEADER_SIZE + (8 + valueSize) * max > 4096) return `btree node max_entries ${max} too large for value size ${valueSize}`;
    if (nr > max) return `btree node has ${nr} entries, more than its max of ${max}`;
    if ((flags & (INTERNAL_NODE | LEAF_NODE)) === 0) return `btree node flags ${flags} are neither internal nor leaf`;
    return null;
  },
};

/**
 * What a tree's leaf values are: their size and, for values that point at something counted
 * (data blocks, subtree roots), how to add or drop a reference to `count` consecutive values.
 */
export interface ValueType {
  readonly size: number;
  inc?(values: Buffer, offset: number, count: number): void;
  dec?(values: Buffer, offset: number, count: number): void;
  /** Whether two values point at the same thing (an overwrite with it drops no reference). */
  equal?(a: Buffer, aOffset: number, b: Buffer, bOffset: number): boolean;
}

/** A key that should be in the tree is not (the caller's bookkeeping disagrees with the tree). */
export class KeyNotFoundError extends Error {}

// ---- node access, straight on the block's words

/**
 * A node's bytes as u32 words (blocks are whole, aligned buffers; the machine little-endian), so
 * the binary searches of every lookup read words instead of assembling them from bytes: four
 * times faster. One view per buffer, kept while the buffer lives.
 */
const views = new WeakMap<Buffer, Uint32Array>();
if (os.endianness() !== 'LE') throw new Error('btree: node access assumes a little-endian machine');
/** The last two nodes asked for: a walk down alternates between a parent and its child. */
let lastNode: Buffer | null = null;
let lastWords: Uint32Array | null = null;
let prevNode: Buffer | null = null;
let prevWords: Uint32Array | null = null;
function words(n: Buffer): Uint32Array {
  if (n === lastNode) return lastWords!;
  let w: Uint32Array | undefined;
  if (n === prevNode) {
    w = prevWords!;
  } else {
    w = views.get(n);
    if (!w) {
      w = new Uint32Array(n.buffer, n.byteOffset, n.length >>> 2);
      views.set(n, w);
    }
  }
  prevNode = lastNode;
  prevWords = lastWords;
  lastNode = n;
  lastWords = w;
  return w;
}

const TWO_32 = 0x100000000;
/** Word indexes of the header fields. */
const FLAGS_WORD = 1;
const NR_ENTRIES_WORD = 4;
const MAX_ENTRIES_WORD = 5;
const VALUE_SIZE_WORD = 6;
const KEYS_WORD = NODE_HEADER_SIZE / 4;

const nrEntries = (n: Buffer): number => words(n)[NR_ENTRIES_WORD];
const setNrEntries = (n: Buffer, v: number): void => {
  words(n)[NR_ENTRIES_WORD] = v;
};
const maxEntries = (n: Buffer): number => words(n)[MAX_ENTRIES_WORD];
const isLeaf = (n: Buffer): boolean => (words(n)[FLAGS_WORD] & LEAF_NODE) !== 0;
const keyAt = (n: Buffer, i: number): U64 => {
  const w = words(n);
  const hi = w[KEYS_WORD + 2 * i + 1];
  return hi === 0 ? w[KEYS_WORD + 2 * i] : readU64(n, NODE_HEADER_SIZE + 8 * i);
};
const setKey = (n: Buffer, i: number, k: U64): void => {
  if (typeof k === 'number') setWords(words(n), KEYS_WORD + 2 * i, k);
  else writeU64(n, NODE_HEADER_SIZE + 8 * i, k);
};
/** A u64 below 2^53 into two words (ToUint32 of an integer is its low 32 bits). */
function setWords(w: Uint32Array, at: number, v: number): void {
  const lo = v >>> 0;
  w[at] = lo;
  w[at + 1] = (v - lo) / TWO_32;
}
const valueSizeOf = (n: Buffer): number => words(n)[VALUE_SIZE_WORD];
const valueOffset = (n: Buffer, i: number): number => {
  const w = words(n);
  return NODE_HEADER_SIZE + 8 * w[MAX_ENTRIES_WORD] + w[VALUE_SIZE_WORD] * i;
};
/** An internal node's child (its values are u64 block numbers, word aligned). */
const childAt = (n: Buffer, i: number): number => {
  const w = words(n);
  const at = KEYS_WORD + 2 * w[MAX_ENTRIES_WORD] + 2 * i;
  return w[at + 1] * TWO_32 + w[at];
};
const setChild = (n: Buffer, i: number, block: number): void => {
  const w = words(n);
  setWords(w, KEYS_WORD + 2 * w[MAX_ENTRIES_WORD] + 2 * i, block);
};

/**
 * Binary search for `key`: its index if present, else the boundary between the keys below and
 * above it. Keys below 2^32 (nearly all) compare as words without building a U64.
 */
function search(n: Buffer, key: U64, wantHigh: boolean): number {
  const w = words(n);
  let lo = -1;
  let hi = w[NR_ENTRIES_WORD];
  if (typeof key === 'number' && key < TWO_32) {
    while (hi - lo > 1) {
      const mid = lo + ((hi - lo) >> 1);
      const at = KEYS_WORD + 2 * mid;
      if (w[at + 1] !== 0) {
        hi = mid;
        continue;
      }
      const k = w[at];
      if (k === key) return mid;
      if (k < key) lo = mid;
      else hi = mid;
    }
  } else {
    while (hi - lo > 1) {
      const mid = lo + ((hi - lo) >> 1);
      const k = keyAt(n, mid);
      if (k === key) return mid;
      if (k < key) lo = mid;
      else hi = mid;
    }
  }
  return wantHigh ? hi : lo;
}

/** Index of `key`, or of the last key below it (-1 if all are above): the kernel's lower_bound. */
function lowerBound(n: Buffer, key: U64): number {
  return search(n, key, false);
}

/** Index of `key`, or of the first key above it (nr_entries if none): the kernel's upper_bound. */
function upperBound(n: Buffer, key: U64): number {
  return search(n, key, true);
}

function initNode(n: Buffer, flags: number, valueSize: number): void {
  n.writeUInt32LE(flags, 4);
  setNrEntries(n, 0);
  n.writeUInt32LE(maxEntriesFor(valueSize), 20);
  n.writeUInt32LE(valueSize, 24);
}

/** Same kind and geometry as `like`, no entries. */
function initLike(n: Buffer, like: Buffer): void {
  like.copy(n, 4, 4, 8);
  setNrEntries(n, 0);
  like.copy(n, 20, 20, 28);
}

/**
 * Copies `count` entries (keys and values) from src[srcAt..] to dest[destAt..]; may overlap.
 * Word by word: keys, values and their offsets are all multiples of 4 bytes, and the entries
 * moved are too few for Buffer.copy's set-up (a view per call) to pay.
 */
function moveEntries(dest: Buffer, destAt: number, src: Buffer, srcAt: number, count: number): void {
  if (count <= 0) return;
  const sw = words(src);
  const dw = words(dest);
  const vw = sw[VALUE_SIZE_WORD] >>> 2;
  const sk = KEYS_WORD + 2 * srcAt;
  const dk = KEYS_WORD + 2 * destAt;
  const sv = KEYS_WORD + 2 * sw[MAX_ENTRIES_WORD] + vw * srcAt;
  const dv = KEYS_WORD + 2 * dw[MAX_ENTRIES_WORD] + vw * destAt;
  if (sw === dw) {
    dw.copyWithin(dk, sk, sk + 2 * count);
    dw.copyWithin(dv, sv, sv + vw * count);
    return;
  }
  for (let i = 0; i < 2 * count; i++) dw[dk + i] = sw[sk + i];
  const nv = vw * count;
  for (let i = 0; i < nv; i++) dw[dv + i] = sw[sv + i];
}

/** Copies `size` bytes, too few for Buffer.copy's set-up to pay. */
function copyBytes(src: Buffer, srcAt: number, dest: Buffer, destAt: number, size: number): void {
  for (let i = 0; i < size; i++) dest[destAt + i] = src[srcAt + i];
}

function insertAt(n: Buffer, index: number, key: U64, value: Buffer, valueAt = 0): void {
  const nr = nrEntries(n);
  if (nr >= maxEntries(n) || index > nr) throw new Error(`btree: no room to insert at ${index} in a node of ${nr} entries`);
  moveEntries(n, index + 1, n, index, nr - index);
  setKey(n, index, key);
  copyBytes(value, valueAt, n, valueOffset(n, index), valueSizeOf(n));
  setNrEntries(n, nr + 1);
}

function deleteAt(n: Buffer, index: number): void {
  const nr = nrEntries(n);
  moveEntries(n, index, n, index + 1, nr - index - 1);
  setNrEntries(n, nr - 1);
}

/** Moves entries so both nodes hold half (left the smaller half). */
function redistribute2(left: Buffer, right: Buffer): void {
  const nrLeft = nrEntries(left);
  const nrRight = nrEntries(right);
  const total = nrLeft + nrRight;
  const targetLeft = Math.floor(total / 2);
  if (nrLeft < targetLeft) {
    const delta = targetLeft - nrLeft;
    moveEntries(left, nrLeft, right, 0, delta);
    moveEntries(right, 0, right, delta, nrRight - delta);
  } else if (nrLeft > targetLeft) {
    const delta = nrLeft - targetLeft;
    moveEntries(right, delta, right, 0, nrRight);
    moveEntries(right, 0, left, targetLeft, delta);
  }
  setNrEntries(left, targetLeft);
  setNrEntries(right, total - targetLeft);
}

/** Spreads two nodes' entries over three; `center` is new and empty. */
function redistribute3Insert(left: Buffer, center: Buffer, right: Buffer): void {
  const nrLeft = nrEntries(left);
  const nrRight = nrEntries(right);
  const total = nrLeft + nrRight;
  const targetLeft = Math.floor(total / 3);
  const targetCenter = Math.floor((total - targetLeft) / 2);
  const targetRight = total - targetLeft - targetCenter;
  if (nrLeft < targetLeft) {
    const leftShort = targetLeft - nrLeft;
    moveEntries(left, nrLeft, right, 0, leftShort);
    moveEntries(center, 0, right, leftShort, targetCenter);
    moveEntries(right, 0, right, nrRight - targetRight, targetRight);
  } else if (nrLeft < targetLeft + targetCenter) {
    const leftToCenter = nrLeft - targetLeft;
    moveEntries(center, 0, left, targetLeft, leftToCenter);
    moveEntries(center, leftToCenter, right, 0, targetCenter - leftToCenter);
    moveEntries(right, 0, right, nrRight - targetRight, targetRight);
  } else {
    const rightShort = targetRight - nrRight;
    moveEntries(right, rightShort, right, 0, nrRight);
    moveEntries(right, 0, left, nrLeft - rightShort, rightShort);
    moveEntries(center, 0, left, targetLeft, nrLeft - targetLeft - rightShort);
  }
  setNrEntries(left, targetLeft);
  setNrEntries(center, targetCenter);
  setNrEntries(right, targetRight);
}

/**
 * Moves `count` entries across the boundary of two siblings: from the end of `left` to the front
 * of `right` when positive, from the front of `right` to the end of `left` when negative.
 */
function shift(left: Buffer, right: Buffer, count: number): void {
  if (count === 0) return;
  const nrLeft = nrEntries(left);
  const nrRight = nrEntries(right);
  const max = maxEntries(left);
  if (max !== maxEntries(right) || nrLeft - count > max || nrRight + count > max) {
    throw new Error('btree: bad shift between siblings');
  }
  if (count > 0) {
    moveEntries(right, count, right, 0, nrRight);
    moveEntries(right, 0, left, nrLeft - count, count);
  } else {
    moveEntries(left, nrLeft, right, 0, -count);
    moveEntries(right, 0, right, -count, nrRight + count);
  }
  setNrEntries(left, nrLeft - count);
  setNrEntries(right, nrRight + count);
}

/** Minimum entries of a non-root node: a third of the maximum. */
const mergeThreshold = (n: Buffer): number => Math.floor(maxEntries(n) / 3);

/** The nodes being changed on the way down: the current one and its parent. */
class ShadowSpine {
  /** Null until the first step. */
  private node: Block | null = null;
  private parentNode: Block | null = null;
  root = -1;

  constructor(private readonly tree: BTree) {}

  /** Shadows `location` and makes it the current node, the previous one its parent. */
  step(location: number, vt: ValueType): void {
    const tm = this.tree.tm;
    if (this.parentNode) tm.unlock(this.parentNode);
    const block = tm.shadow(location, BTREE_NODE);
    if (tm.shadowedShared) this.tree.incChildren(block.data, vt);
    if (!this.node) this.root = block.location;
    this.parentNode = this.node;
    this.node = block;
  }

  get current(): Block {
    return this.node!;
  }

  set current(b: Block) {
    this.node = b;
  }

  get hasParent(): boolean {
    return this.parentNode !== null;
  }

  get parent(): Block {
    return this.parentNode!;
  }

  exit(): void {
    const tm = this.tree.tm;
    if (this.parentNode) tm.unlock(this.parentNode);
    if (this.node) tm.unlock(this.node);
    this.node = this.parentNode = null;
    this.root = -1;
  }
}

/** Room is made when a sibling has at least this many free entries. */
const SPACE_THRESHOLD = 8;

export class BTree {
  /** Values of the upper levels: subtree roots, counted as metadata blocks. */
  private readonly subtreeType: ValueType;
  /** Spines done with, for the next change (one per change in progress: changes may nest). */
  private readonly spines: ShadowSpine[] = [];

  constructor(readonly tm: TransactionManager, readonly valueType: ValueType, readonly levels = 1) {
    this.subtreeType = {
      size: 8,
      inc: (values, offset, count) => {
        for (let i = 0; i < count; i++) tm.inc(readBlockNr(values, offset + 8 * i));
      },
      dec: (values, offset, count) => {
        for (let i = 0; i < count; i++) tm.dec(readBlockNr(values, offset + 8 * i));
      },
      equal: (a, ao, b, bo) => a.compare(b, bo, bo + 8, ao, ao + 8) === 0,
    };
  }

  /** A new empty tree: its root, an empty leaf. */
  empty(): number {
    const b = this.tm.newBlock(BTREE_NODE);
    initNode(b.data, LEAF_NODE, this.valueType.size);
    const location = b.location;
    this.tm.unlock(b);
    return location;
  }

  /** Adds a reference to everything the node points to (it became one more node's child). */
  incChildren(n: Buffer, vt: ValueType): void {
    const nr = nrEntries(n);
    if (!isLeaf(n)) {
      for (let i = 0; i < nr; i++) this.tm.inc(childAt(n, i));
    } else if (vt.inc && nr > 0) {
      vt.inc(n, valueOffset(n, 0), nr);
    }
  }

  // ---- lookups

  /** Copies the value under `keys` into `out` (at `outAt`); false if there is none. */
  lookup(root: number, keys: readonly U64[], out: Buffer, outAt = 0): boolean {
    let block = root;
    for (let level = 0; level < this.levels; level++) {
      const last = level === this.levels - 1;
      const key = keys[level];
      for (;;) {
        const b = this.tm.read(block, BTREE_NODE);
        const n = b.data;
        // The hot path of every IO: the node's words read once, its search inline.
        const w = words(n);
        const i = search(n, key, false);
        const leaf = (w[FLAGS_WORD] & LEAF_NODE) !== 0;
        if (i < 0 || i >= w[NR_ENTRIES_WORD] || (leaf && keyAt(n, i) !== key)) {
          this.tm.unlock(b);
          return false;
        }
        if (leaf && last) {
          copyBytes(n, NODE_HEADER_SIZE + 8 * w[MAX_ENTRIES_WORD] + w[VALUE_SIZE_WORD] * i, out, outAt, this.valueType.size);
        } else {
          const at = KEYS_WORD + 2 * w[MAX_ENTRIES_WORD] + 2 * i;
          block = w[at + 1] * TWO_32 + w[at];
        }
        this.tm.unlock(b);
        if (leaf) break;
      }
    }
    return true;
  }

  /**
   * The first key at or above `key` in the single-level tree at `root`, its value copied into
   * `out`; null if there is none.
   */
  lookupNext(root: number, key: U64, out: Buffer, outAt = 0): U64 | null {
    const b = this.tm.read(root, BTREE_NODE);
    const n = b.data;
    const nr = nrEntries(n);
    try {
      if (!isLeaf(n)) {
        let i = lowerBound(n, key);
        if (i < 0) i = 0;
        if (i >= nr) return null;
        const found = this.lookupNext(childAt(n, i), key, out, outAt);
        if (found !== null || i === nr - 1) return found;
        return this.lookupNext(childAt(n, i + 1), key, out, outAt);
      }
      const i = upperBound(n, key);
      if (i >= nr) return null;
      const off = valueOffset(n, i);
      n.copy(out, outAt, off, off + this.valueType.size);
      return keyAt(n, i);
    } finally {
      this.tm.unlock(b);
    }
  }

  /**
   * Calls `fn` with each leaf entry of the single-level tree at `root`, in key order. The buffer
   * is the leaf's block, valid only during the call.
   */
  forEach(root: number, fn: (key: U64, values: Buffer, offset: number) => void): void {
    const b = this.tm.read(root, BTREE_NODE);
    try {
      const n = b.data;
      const nr = nrEntries(n);
      if (isLeaf(n)) {
        for (let i = 0; i < nr; i++) fn(keyAt(n, i), n, valueOffset(n, i));
      } else {
        for (let i = 0; i < nr; i++) this.forEach(childAt(n, i), fn);
      }
    } finally {
      this.tm.unlock(b);
    }
  }

  /** Calls `fn` with each entry of the single-level tree at `root` whose key is in [begin, end). */
  forEachInRange(root: number, begin: U64, end: U64, fn: (key: U64, values: Buffer, offset: number) => void): void {
    const b = this.tm.read(root, BTREE_NODE);
    try {
      const n = b.data;
      const nr = nrEntries(n);
      let i = lowerBound(n, begin);
      if (isLeaf(n)) {
        if (i < 0 || keyAt(n, i) < begin) i++;
        for (; i < nr; i++) {
          const k = keyAt(n, i);
          if (!(k < end)) break;
          fn(k, n, valueOffset(n, i));
        }
      } else {
        for (i = Math.max(i, 0); i < nr && keyAt(n, i) < end; i++) this.forEachInRange(childAt(n, i), begin, end, fn);
      }
    } finally {
      this.tm.unlock(b);
    }
  }

  // ---- insert

  /**
   * Sets the value under `keys` (creating the lower levels' trees as needed). An existing value
   * is replaced, dropping its reference unless it is equal to the new one; the new value's
   * reference is the caller's. Returns the new root and whether the key was new.
   */
  insert(root: number, keys: readonly U64[], value: Buffer, valueAt = 0): { root: number; inserted: boolean } {
    const spine = this.spines.pop() ?? new ShadowSpine(this);
    try {
      let block = root;
      let index = -1;
      const last = this.levels - 1;
      for (let level = 0; level < last; level++) {
        index = this.insertRaw(spine, block, this.subtreeType, keys[level], index);
        const n = spine.current.data;
        if (index >= nrEntries(n) || keyAt(n, index) !== keys[level]) {
          const sub = Buffer.allocUnsafe(8);
          writeU64(sub, 0, this.emptyAt(level + 1));
          insertAt(n, index, keys[level], sub);
        }
        block = childAt(n, index);
      }
      index = this.insertRaw(spine, block, this.valueType, keys[last], index);
      const n = spine.current.data;
      let inserted: boolean;
      if (index >= nrEntries(n) || keyAt(n, index) !== keys[last]) {
        insertAt(n, index, keys[last], value, valueAt);
        inserted = true;
      } else {
        const vt = this.valueType;
        const off = valueOffset(n, index);
        if (vt.dec && !(vt.equal && vt.equal(n, off, value, valueAt))) vt.dec(n, off, 1);
        copyBytes(value, valueAt, n, off, vt.size);
        inserted = false;
      }
      return { root: spine.root, inserted };
    } finally {
      spine.exit();
      this.spines.push(spine);
    }
  }

  /** An empty tree for level `level` (its leaves hold that level's values). */
  private emptyAt(level: number): number {
    const b = this.tm.newBlock(BTREE_NODE);
    initNode(b.data, LEAF_NODE, level === this.levels - 1 ? this.valueType.size : 8);
    const location = b.location;
    this.tm.unlock(b);
    return location;
  }

  /**
   * Walks one level down to the leaf for `key`, shadowing every node and making room so the leaf
   * can take one more entry. `index` is where the parent (the level above's leaf) points at
   * `root`. Returns the index in the leaf where `key` is or goes.
   */
  private insertRaw(spine: ShadowSpine, root: number, vt: ValueType, key: U64, index: number): number {
    let i = index;
    let top = true;
    let block = root;
    for (;;) {
      spine.step(block, vt);
      if (spine.hasParent && i >= 0) setChild(spine.parent.data, i, spine.current.location);
      let n = spine.current.data;
      if (!this.hasSpaceForInsert(n, key)) {
        if (top) this.splitBeneath(spine);
        else this.rebalanceOrSplit(spine, vt, i, key);
        n = spine.current.data;
      }
      i = lowerBound(n, key);
      if (isLeaf(n)) break;
      if (i < 0) {
        // The key goes below everything: the first child's range now starts at it.
        setKey(n, 0, key);
        i = 0;
      }
      block = childAt(n, i);
      top = false;
    }
    if (i < 0 || keyAt(spine.current.data, i) !== key) i++;
    return i;
  }

  private hasSpaceForInsert(n: Buffer, key: U64): boolean {
    if (nrEntries(n) < maxEntries(n)) return true;
    if (!isLeaf(n)) return false;
    const i = lowerBound(n, key);
    return i >= 0 && keyAt(n, i) === key;
  }

  /** The root is full: its entries move to two new children and it becomes their parent. */
  private splitBeneath(spine: ShadowSpine): void {
    const pn = spine.current.data;
    const nr = nrEntries(pn);
    const nrLeft = Math.floor(nr / 2);
    const left = this.tm.newBlock(BTREE_NODE);
    initLike(left.data, pn);
    moveEntries(left.data, 0, pn, 0, nrLeft);
    setNrEntries(left.data, nrLeft);
    const right = this.tm.newBlock(BTREE_NODE);
    initLike(right.data, pn);
    moveEntries(right.data, 0, pn, nrLeft, nr - nrLeft);
    setNrEntries(right.data, nr - nrLeft);

    initNode(pn, INTERNAL_NODE, 8);
    setKey(pn, 0, keyAt(left.data, 0));
    setChild(pn, 0, left.location);
    setKey(pn, 1, keyAt(right.data, 0));
    setChild(pn, 1, right.location);
    setNrEntries(pn, 2);
    this.tm.unlock(left);
    this.tm.unlock(right);
  }

  /** The child at `parentIndex` is full: move entries to an unshared sibling with room, else split. */
  private rebalanceOrSplit(spine: ShadowSpine, vt: ValueType, parentIndex: number, key: U64): void {
    const parent = spine.parent.data;
    const nrParent = nrEntries(parent);
    let leftShared = false;
    let rightShared = false;
    if (parentIndex > 0) {
      const leftAt = childAt(parent, parentIndex - 1);
      leftShared = this.tm.isShared(leftAt);
      if (!leftShared && this.freeSpace(leftAt) >= SPACE_THRESHOLD) {
        this.rebalanceLeft(spine, vt, parentIndex, key);
        return;
      }
    }
    if (parentIndex < nrParent - 1) {
      const rightAt = childAt(parent, parentIndex + 1);
      rightShared = this.tm.isShared(rightAt);
      if (!rightShared && this.freeSpace(rightAt) >= SPACE_THRESHOLD) {
        this.rebalanceRight(spine, vt, parentIndex, key);
        return;
      }
    }
    // Two into three saves space, but sequential inserts at either end fill better one into two.
    if (leftShared || rightShared || nrParent <= 2 || parentIndex === 0 || parentIndex + 1 === nrParent) {
      this.splitOneIntoTwo(spine, parentIndex, key);
    } else {
      this.splitTwoIntoThree(spine, vt, parentIndex, key);
    }
  }

  private freeSpace(location: number): number {
    const b = this.tm.read(location, BTREE_NODE);
    const space = maxEntries(b.data) - nrEntries(b.data);
    this.tm.unlock(b);
    return space;
  }

  /** Shadows the child at `index` of `parent` (a sibling about to change) and points at the copy. */
  private shadowChild(parent: Buffer, index: number, vt: ValueType): Block {
    const block = this.tm.shadow(childAt(parent, index), BTREE_NODE);
    if (this.tm.shadowedShared) this.incChildren(block.data, vt);
    setChild(parent, index, block.location);
    return block;
  }

  private rebalanceLeft(spine: ShadowSpine, vt: ValueType, parentIndex: number, key: U64): void {
    const parent = spine.parent.data;
    const sib = this.shadowChild(parent, parentIndex - 1, vt);
    const right = spine.current.data;
    redistribute2(sib.data, right);
    setKey(parent, parentIndex, keyAt(right, 0));
    if (key < keyAt(right, 0)) {
      this.tm.unlock(spine.current);
      spine.current = sib;
    } else {
      this.tm.unlock(sib);
    }
  }

  private rebalanceRight(spine: ShadowSpine, vt: ValueType, parentIndex: number, key: U64): void {
    const parent = spine.parent.data;
    const sib = this.shadowChild(parent, parentIndex + 1, vt);
    redistribute2(spine.current.data, sib.data);
    setKey(parent, parentIndex + 1, keyAt(sib.data, 0));
    if (key < keyAt(sib.data, 0)) {
      this.tm.unlock(sib);
    } else {
      this.tm.unlock(spine.current);
      spine.current = sib;
    }
  }

  private splitOneIntoTwo(spine: ShadowSpine, parentIndex: number, key: U64): void {
    const left = spine.current;
    const right = this.tm.newBlock(BTREE_NODE);
    initLike(right.data, left.data);
    redistribute2(left.data, right.data);
    const loc = Buffer.allocUnsafe(8);
    writeU64(loc, 0, right.location);
    insertAt(spine.parent.data, parentIndex + 1, keyAt(right.data, 0), loc);
    if (key < keyAt(right.data, 0)) {
      this.tm.unlock(right);
    } else {
      this.tm.unlock(left);
      spine.current = right;
    }
  }

  private splitTwoIntoThree(spine: ShadowSpine, vt: ValueType, parentIndex: number, key: U64): void {
    const pn = spine.parent.data;
    let left: Block;
    let right: Block;
    let middleIndex: number;
    if (parentIndex === 0) {
      middleIndex = 1;
      left = spine.current;
      right = this.shadowChild(pn, parentIndex + 1, vt);
    } else {
      middleIndex = parentIndex;
      right = spine.current;
      left = this.shadowChild(pn, parentIndex - 1, vt);
    }
    const middle = this.tm.newBlock(BTREE_NODE);
    initLike(middle.data, left.data);
    redistribute3Insert(left.data, middle.data, right.data);
    setKey(pn, middleIndex, keyAt(right.data, 0));
    const loc = Buffer.allocUnsafe(8);
    writeU64(loc, 0, middle.location);
    insertAt(pn, middleIndex, keyAt(middle.data, 0), loc);

    let keep: Block;
    if (key < keyAt(middle.data, 0)) keep = left;
    else if (key < keyAt(right.data, 0)) keep = middle;
    else keep = right;
    for (const b of [left, middle, right]) if (b !== keep) this.tm.unlock(b);
    spine.current = keep;
  }

  // ---- remove

  /** Removes the entry under `keys` (which must exist), dropping its value's reference. */
  remove(root: number, keys: readonly U64[]): number {
    const spine = this.spines.pop() ?? new ShadowSpine(this);
    try {
      let block = root;
      let index = -1;
      const last = this.levels - 1;
      for (let level = 0; level < this.levels; level++) {
        const vt = level === last ? this.valueType : this.subtreeType;
        const at = this.removeRaw(spine, vt, block, keys[level], index, true);
        if (at === null || at < 0) throw new KeyNotFoundError(`btree: key ${keys[level]} is not in the tree`);
        index = at;
        const n = spine.current.data;
        if (level !== last) {
          block = childAt(n, index);
          continue;
        }
        this.valueType.dec?.(n, valueOffset(n, index), 1);
        deleteAt(n, index);
      }
      return spine.root;
    } finally {
      spine.exit();
      this.spines.push(spine);
    }
  }

  /**
   * Removes every entry with a key in [begin, end) from the single-level tree at `root`, each
   * value's reference dropped. Returns the new root and how many entries went.
   */
  removeRange(root: number, begin: U64, end: U64): { root: number; removed: number } {
    let removed = 0;
    let next: U64 = begin;
    const scratch = Buffer.allocUnsafe(this.valueType.size);
    while (next < end) {
      const found = this.lookupNext(root, next, scratch);
      if (found === null || found >= end) break;
      next = found;
      // Removes the run of consecutive keys from `next` on, one entry at a time, as the kernel's
      // dm_btree_remove_leaves does (each removal rebalances its path).
      for (;;) {
        const r = this.removeOne(root, next, end);
        root = r.root;
        if (r.removed === null) break;
        removed++;
        next = u64Add(r.removed, 1);
        if (!(next < end)) break;
      }
    }
    return { root, removed };
  }

  /** Removes the entry at `key` if it is in [key, end); returns the key removed, or null. */
  private removeOne(root: number, key: U64, end: U64): { root: number; removed: U64 | null } {
    const spine = this.spines.pop() ?? new ShadowSpine(this);
    try {
      const at = this.removeRaw(spine, this.valueType, root, key, -1, false);
      const n = spine.current.data;
      const index = at === null ? -1 : Math.max(at, 0);
      let removed: U64 | null = null;
      if (index >= 0 && index < nrEntries(n)) {
        const k = keyAt(n, index);
        if (k >= key && k < end) {
          this.valueType.dec?.(n, valueOffset(n, index), 1);
          deleteAt(n, index);
          removed = k;
        }
      }
      return { root: spine.root, removed };
    } finally {
      spine.exit();
      this.spines.push(spine);
    }
  }

  /**
   * Walks one level down towards `key`, shadowing each node and rebalancing the child about to
   * be entered. Returns the key's index in the leaf: with `exact`, -1 when it is absent; without,
   * the lower bound (the kernel's remove_nearest). Null when the key is below the whole tree.
   */
  private removeRaw(spine: ShadowSpine, vt: ValueType, root: number, key: U64, index: number, exact: boolean): number | null {
    let i = index;
    let block = root;
    for (;;) {
      spine.step(block, vt);
      if (spine.hasParent) setChild(spine.parent.data, i, spine.current.location);
      let n = spine.current.data;
      if (!isLeaf(n)) {
        if (!this.rebalanceChildren(spine, vt, key)) return null;
        n = spine.current.data;
      }
      if (isLeaf(n)) {
        const at = lowerBound(n, key);
        if (!exact) return at;
        return at >= 0 && at < nrEntries(n) && keyAt(n, at) === key ? at : -1;
      }
      i = lowerBound(n, key);
      block = childAt(n, i);
    }
  }

  /** Rebalances the child of the current node that `key` falls in; false if it falls in none. */
  private rebalanceChildren(spine: ShadowSpine, vt: ValueType, key: U64): boolean {
    const n = spine.current.data;
    const nr = nrEntries(n);
    if (nr === 1) {
      // A lone child: pull its contents up into this node, which takes its place.
      const childLoc = childAt(n, 0);
      const shared = this.tm.isShared(childLoc);
      const child = this.tm.read(childLoc, BTREE_NODE);
      if (shared) this.incChildren(child.data, vt);
      child.data.copy(n);
      this.tm.unlock(child);
      this.tm.dec(childLoc);
      return true;
    }
    const i = lowerBound(n, key);
    if (i < 0) return false;
    if (i === 0) this.rebalance2(n, vt, i);
    else if (i === nr - 1) this.rebalance2(n, vt, i - 1);
    else this.rebalance3(n, vt, i - 1);
    return true;
  }

  private rebalance2(parent: Buffer, vt: ValueType, leftIndex: number): void {
    const left = this.shadowChild(parent, leftIndex, vt);
    const right = this.shadowChild(parent, leftIndex + 1, vt);
    this.rebalanced2(parent, left, right, leftIndex + 1);
    this.tm.unlock(left);
    this.tm.unlock(right);
  }

  /** Merges two siblings if together they are too few for two nodes, else evens them out. */
  private rebalanced2(parent: Buffer, left: Block, right: Block, rightIndex: number): void {
    const l = left.data;
    const r = right.data;
    const nrLeft = nrEntries(l);
    const nrRight = nrEntries(r);
    // Each child keeps at least a third + 1, so a removal below it never leaves it under a third.
    const threshold = 2 * (mergeThreshold(l) + 1);
    if (nrLeft + nrRight < threshold) {
      moveEntries(l, nrLeft, r, 0, nrRight);
      setNrEntries(l, nrLeft + nrRight);
      deleteAt(parent, rightIndex);
      // The right node goes; its children stay, now referenced from the left one.
      this.tm.dec(right.location);
    } else {
      shift(l, r, nrLeft - Math.floor((nrLeft + nrRight) / 2));
      setKey(parent, rightIndex, keyAt(r, 0));
    }
  }

  private rebalance3(parent: Buffer, vt: ValueType, leftIndex: number): void {
    const left = this.shadowChild(parent, leftIndex, vt);
    const center = this.shadowChild(parent, leftIndex + 1, vt);
    const right = this.shadowChild(parent, leftIndex + 2, vt);
    const l = left.data;
    const c = center.data;
    const r = right.data;
    if (maxEntries(l) !== maxEntries(c) || maxEntries(c) !== maxEntries(r)) throw new Error('btree: siblings of different geometry');
    const nrLeft = nrEntries(l);
    const nrCenter = nrEntries(c);
    const nrRight = nrEntries(r);
    if (nrLeft + nrCenter + nrRight < mergeThreshold(l) * 4 + 1) {
      // Few enough for two nodes: empty the center into its siblings and drop it.
      const toLeft = Math.min(maxEntries(l) - nrLeft, nrCenter);
      moveEntries(l, nrLeft, c, 0, toLeft);
      setNrEntries(l, nrLeft + toLeft);
      if (toLeft !== nrCenter) {
        const toRight = nrCenter - toLeft;
        moveEntries(r, toRight, r, 0, nrRight);
        moveEntries(r, 0, c, toLeft, toRight);
        setNrEntries(r, nrRight + toRight);
      }
      setKey(parent, leftIndex + 2, keyAt(r, 0));
      deleteAt(parent, leftIndex + 1);
      this.tm.dec(center.location);
      this.rebalanced2(parent, left, right, leftIndex + 1);
    } else {
      redistribute3Remove(l, c, r, nrLeft, nrCenter, nrRight);
      setKey(parent, leftIndex + 1, keyAt(c, 0));
      setKey(parent, leftIndex + 2, keyAt(r, 0));
    }
    this.tm.unlock(left);
    this.tm.unlock(center);
    this.tm.unlock(right);
  }

  // ---- delete

  /**
   * Drops the tree at `root`: a node still referenced elsewhere just loses this reference; one
   * held only here is released with everything below it (values' references dropped).
   */
  del(root: number): void {
    interface Frame {
      block: Block;
      level: number;
      next: number;
    }
    const stack: Frame[] = [];
    const push = (location: number, level: number): void => {
      if (this.tm.refCount(location) > 1) {
        this.tm.dec(location);
        return;
      }
      stack.push({ block: this.tm.read(location, BTREE_NODE), level, next: 0 });
    };
    const pop = (): void => {
      const f = stack.pop()!;
      const location = f.block.location;
      this.tm.unlock(f.block);
      this.tm.dec(location);
    };
    push(root, 0);
    while (stack.length > 0) {
      const f = stack[stack.length - 1];
      const n = f.block.data;
      const nr = nrEntries(n);
      if (f.next >= nr) {
        pop();
        continue;
      }
      if (!isLeaf(n)) {
        push(childAt(n, f.next++), f.level);
      } else if (f.level < this.levels - 1) {
        push(childAt(n, f.next++), f.level + 1);
      } else {
        this.valueType.dec?.(n, valueOffset(n, 0), nr);
        f.next = nr;
        pop();
      }
    }
  }
}

/** Spreads three siblings' entries evenly (left takes the remainder), as dm-btree-remove. */
function redistribute3Remove(l: Buffer, c: Buffer, r: Buffer, nrLeft: number, nrCenter: number, nrRight: number): void {
  const total = nrLeft + nrCenter + nrRight;
  const targetRight = Math.floor(total / 3);
  const targetLeft = targetRight + (targetRight * 3 !== total ? 1 : 0);
  if (nrLeft < nrRight) {
    let s = nrLeft - targetLeft;
    if (s < 0 && nrCenter < -s) {
      // Not enough in the center node.
      shift(l, c, -nrCenter);
      s += nrCenter;
      shift(l, r, s);
      nrRight += s;
    } else {
      shift(l, c, s);
    }
    shift(c, r, targetRight - nrRight);
  } else {
    let s = targetRight - nrRight;
    if (s > 0 && nrCenter < s) {
      shift(c, r, nrCenter);
      s -= nrCenter;
      shift(l, r, s);
      nrLeft -= s;
    } else {
      shift(c, r, s);
    }
    shift(l, c, nrLeft - targetLeft);
  }
}

