// The differences between two thin devices' mappings (thin_delta), computed by walking both
// device trees side by side in thin-block order: one leaf of each in memory, whatever the size.
// A subtree both trees share (a snapshot's untouched part) is read once and is all "same".
//
// The ranges are those of the reference thin_delta 0.9.0, which compares data blocks only (not
// mapping times, so devices of different origins compare too):
// - each mapped thin block is left_only, right_only, different or same;
// - plain output merges neighbouring blocks of one kind into one range;
// - verbose output also gives the data blocks, so a range also ends where either side's mappings
//   stop being consecutive in data blocks (the reference cuts its ranges at the ends of each
//   side's runs of consecutive thin and data blocks).
import { BlockReader } from '../io/block-io.js';
import { LeafCursor, NextSubtree } from '../pdata/btree/cursor.js';
import { BTreeNode, NODE_HEADER_SIZE } from '../pdata/btree/node.js';
import { BTreeError } from '../pdata/btree/walk.js';
import { U64, readU64, u64Add } from '../pdata/le.js';
import { MAPPING_VALUE_SIZE } from './mapping-tree.js';

export type DeltaKind = 'left_only' | 'right_only' | 'different' | 'same';

/** One side of the comparison: a device (--thin1) or a tree root block (1.x's --root1). */
export type DeltaSide = { devId: number } | { root: number };

export interface DeltaHeader {
  time: number;
  transaction: U64;
  dataBlockSize: number;
  nrDataBlocks: U64;
  /** The held metadata snapshot the superblock read names, if any (the u64 on disk). */
  metadataSnap?: U64;
  left: DeltaSide;
  right: DeltaSide;
}

export interface DeltaVisitor {
  begin(h: DeltaHeader): void;
  /**
   * `length` thin blocks from `begin`, all of one kind. `leftData` / `rightData`: the data block
   * the first of them maps to on that side (0 on a side that doesn't map them).
   */
  range(kind: DeltaKind, begin: U64, length: number, leftData: number, rightData: number): void;
  end(): void;
}

const LEFT_ONLY = 0;
const RIGHT_ONLY = 1;
const DIFFERENT = 2;
const SAME = 3;
const KINDS: DeltaKind[] = ['left_only', 'right_only', 'different', 'same'];

/** Merges classified blocks, in thin-block order, into the ranges the visitor gets. */
class RangeBuilder {
  private kind = -1;
  private begin: U64 = 0;
  private end: U64 = 0;
  private len = 0;
  private left = 0;
  private right = 0;

  constructor(private readonly out: DeltaVisitor, private readonly verbose: boolean) {}

  add(thin: U64, kind: number, left: number, right: number): void {
    if (kind === this.kind && thin === this.end) {
      const len = this.len;
      // Verbose ranges also follow each side's data blocks.
      if (!this.verbose || ((kind === RIGHT_ONLY || left === this.left + len) && (kind === LEFT_ONLY || right === this.right + len))) {
        this.len = len + 1;
        this.end = typeof thin === 'number' && thin < Number.MAX_SAFE_INTEGER ? thin + 1 : u64Add(thin, 1);
        return;
      }
    }
    this.flush();
    this.kind = kind;
    this.begin = thin;
    this.end = typeof thin === 'number' && thin < Number.MAX_SAFE_INTEGER ? thin + 1 : u64Add(thin, 1);
    this.len = 1;
    this.left = left;
    this.right = right;
  }

  /**
   * The `count` thin blocks after the last one added, up to `last`, continue its range (the
   * caller checked they are consecutive, of its kind and, verbose, consecutive in data blocks).
   */
  extend(count: number, last: number): void {
    this.len += count;
    this.end = last < Number.MAX_SAFE_INTEGER ? last + 1 : u64Add(last, 1);
  }

  flush(): void {
    if (this.len === 0) return;
    this.out.range(KINDS[this.kind], this.begin, this.len, this.left, this.right);
    this.len = 0;
    this.kind = -1;
  }
}

const TWO_32 = 0x100000000;
/** High words of keys below 2^53, which fit a number exactly. */
const SAFE_HI = 0x200000;
/** Word index of leaf key 0's low half. */
const KEY_WORD = NODE_HEADER_SIZE / 4;

/** One device tree, read a leaf at a time; entries are decoded from the leaf's words in place. */
class Side {
  private node: BTreeNode | null = null;
  words: Uint32Array = new Uint32Array(0);
  /** Word index of value 0's low half in the leaf in hand. */
  valueWord = 0;
  i = 0;
  n = 0;

  constructor(readonly cursor: LeafCursor) {}

  /** Reads the next leaf; false at the end of the tree. */
  load(): boolean {
    const node = this.cursor.nextLeaf();
    if (node === null) return false;
    this.hold(node);
    return true;
  }

  /** Reads one node on the way down: true when it was a leaf (now in hand). */
  step(): boolean {
    const node = this.cursor.nextNode();
    if (node === null || !node.isLeaf) return false;
    this.hold(node);
    return true;
  }

  /** How many levels the subtree about to be read has above its leaves (Infinity before the first leaf). */
  heightOf(next: NextSubtree): number {
    return this.cursor.leafDepth === -1 ? Infinity : this.cursor.leafDepth - next.depth;
  }

  private hold(node: BTreeNode): void {
    this.node = node;
    this.words = node.words;
    this.valueWord = (NODE_HEADER_SIZE + 8 * node.maxEntries) / 4;
    this.i = 0;
    this.n = node.nrEntries;
  }

  key(): U64 {
    const w = KEY_WORD + 2 * this.i;
    const hi = this.words[w + 1];
    return hi < SAFE_HI ? hi * TWO_32 + this.words[w] : readU64(this.node!.buf, NODE_HEADER_SIZE + 8 * this.i);
  }

  data(): number {
    const v = this.valueWord + 2 * this.i;
    return this.words[v + 1] * 256 + (this.words[v] >>> 24);
  }
}

/** Emits the ranges between the device trees at `leftRoot` and `rightRoot`. Throws BTreeError on damage. */
export function diffDeviceTrees(io: BlockReader, leftRoot: number, rightRoot: number, out: DeltaVisitor, verbose: boolean): void {
  const ranges = new RangeBuilder(out, verbose);
  const L = new Side(new LeafCursor(io, leftRoot, MAPPING_VALUE_SIZE));
  const R = new Side(new LeafCursor(io, rightRoot, MAPPING_VALUE_SIZE));
  for (;;) {
    if (L.i === L.n && R.i === R.n) {
      const ls = L.cursor.peek();
      const rs = R.cursor.peek();
      if (ls !== null && rs !== null) {
        if (ls.block === rs.block) {
          L.cursor.skip();
          R.cursor.skip();
          sharedSubtree(io, ls, rs, L.cursor, R.cursor, ranges);
          continue;
        }
        // Down a level at a time, the taller side first (both when level): a subtree the trees
        // share may sit at different depths in each (trees of different heights, or split apart).
        const lh = L.heightOf(ls);
        const rh = R.heightOf(rs);
        if (lh >= rh) L.step();
        if (rh >= lh) R.step();
        continue;
      }
    }
    if (L.i === L.n && !L.load()) break;
    if (R.i === R.n && !R.load()) break;
    if (L.i === L.n || R.i === R.n) continue; // an empty leaf
    // The hot loop, on the two leaves' words, while both keys are below 2^53.
    const lw = L.words;
    const rw = R.words;
    const lv = L.valueWord;
    const rv = R.valueWord;
    let li = L.i;
    let ri = R.i;
    for (const ln = L.n, rn = R.n; li < ln && ri < rn; ) {
      const lhi = lw[KEY_WORD + 2 * li + 1];
      const rhi = rw[KEY_WORD + 2 * ri + 1];
      if (lhi >= SAFE_HI || rhi >= SAFE_HI) break; // compared exactly below
      const kl = lhi * TWO_32 + lw[KEY_WORD + 2 * li];
      const kr = rhi * TWO_32 + rw[KEY_WORD + 2 * ri];
      if (kl < kr) {
        ranges.add(kl, LEFT_ONLY, lw[lv + 2 * li + 1] * 256 + (lw[lv + 2 * li] >>> 24), 0);
        li++;
      } else if (kr < kl) {
        ranges.add(kr, RIGHT_ONLY, 0, rw[rv + 2 * ri + 1] * 256 + (rw[rv + 2 * ri] >>> 24));
        ri++;
      } else {
        const dl = lw[lv + 2 * li + 1] * 256 + (lw[lv + 2 * li] >>> 24);
        const dr = rw[rv + 2 * ri + 1] * 256 + (rw[rv + 2 * ri] >>> 24);
        ranges.add(kl, dl === dr ? SAME : DIFFERENT, dl, dr);
        if (dl === dr) {
          // What follows on both sides with the same thin blocks, consecutive, and the same data
          // blocks (consecutive too, verbose) extends this range: compared word by word, added at once.
          let lk = KEY_WORD + 2 * li;
          let rk = KEY_WORD + 2 * ri;
          let lval = lv + 2 * li;
          let rval = rv + 2 * ri;
          let run = 0;
          for (const most = Math.min(ln - li, rn - ri) - 1; run < most; run++, lk += 2, rk += 2, lval += 2, rval += 2) {
            const lo = lw[lk + 2];
            if (lo !== lw[lk] + 1 || lw[lk + 3] !== lhi || rw[rk + 2] !== lo || rw[rk + 3] !== lhi) break;
            const dataHi = lw[lval + 3];
            const dataLo = lw[lval + 2] >>> 24;
            if (rw[rval + 3] !== dataHi || rw[rval + 2] >>> 24 !== dataLo) break;
            if (verbose && dataHi * 256 + dataLo !== dl + run + 1) break;
          }
          if (run > 0) ranges.extend(run, kl + run);
          li += run;
          ri += run;
        }
        li++;
        ri++;
      }
    }
    L.i = li;
    R.i = ri;
    if (L.i === L.n || R.i === R.n) continue;
    const kl = L.key();
    const kr = R.key();
    if (kl < kr) {
      ranges.add(kl, LEFT_ONLY, L.data(), 0);
      L.i++;
    } else if (kr < kl) {
      ranges.add(kr, RIGHT_ONLY, 0, R.data());
      R.i++;
    } else {
      const dl = L.data();
      const dr = R.data();
      ranges.add(kl, dl === dr ? SAME : DIFFERENT, dl, dr);
      L.i++;
      R.i++;
    }
  }
  // What one tree has past the other's end.
  do {
    for (; L.i < L.n; L.i++) ranges.add(L.key(), LEFT_ONLY, L.data(), 0);
  } while (L.load());
  do {
    for (; R.i < R.n; R.i++) ranges.add(R.key(), RIGHT_ONLY, 0, R.data());
  } while (R.load());
  ranges.flush();
}

/** A subtree both trees point to at the same place: every mapping in it is the same on both sides. */
function sharedSubtree(
  io: BlockReader,
  ls: NextSubtree,
  rs: NextSubtree,
  left: LeafCursor,
  right: LeafCursor,
  ranges: RangeBuilder,
): void {
  // Within both parents' key ranges.
  const lowKey = ls.lowKey > rs.lowKey ? ls.lowKey : rs.lowKey;
  const highKey = ls.highKey < rs.highKey ? ls.highKey : rs.highKey;
  const sub = new LeafCursor(io, ls.block, MAPPING_VALUE_SIZE, { lowKey, highKey, subtree: ls.depth > 0 || rs.depth > 0 });
  const side = new Side(sub);
  while (side.load()) {
    for (; side.i < side.n; side.i++) {
      const data = side.data();
      ranges.add(side.key(), SAME, data, data);
    }
  }
  // Its leaves must sit as deep as the rest of each tree's.
  for (const [cursor, at] of [[left, ls], [right, rs]] as const) {
    const depth = at.depth + sub.leafDepth;
    if (cursor.leafDepth === -1) cursor.leafDepth = depth;
    else if (cursor.leafDepth !== depth) throw new BTreeError(ls.block, 'leaves at different depths', lowKey, highKey);
  }
}
