// What both space maps updated in place share (the kernel's dm-space-map-common): 2-bit counts in
// bitmap blocks changed through shadows, index entries that locate the bitmaps and track their
// free entries, and the ref-count tree for counts of 3 and more. Where the index entries live is
// the one difference: one block held in memory (metadata) or a B-tree (data).
import { BlockValidator } from '../block-manager.js';
import { BTree, KeyNotFoundError } from '../btree/tree.js';
import { BITMAP_CSUM_XOR, INDEX_CSUM_XOR } from '../checksum.js';
import { TransactionManager } from '../transaction-manager.js';
import { BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, IndexEntry, OVERFLOW_COUNT, REF_COUNT_VALUE_SIZE, bitmapCount } from './common.js';

export const BITMAP_BLOCK: BlockValidator = { name: 'space map bitmap', salt: BITMAP_CSUM_XOR };
export const INDEX_BLOCK: BlockValidator = { name: 'metadata space map index', salt: INDEX_CSUM_XOR };

/** The ref-count tree's values: plain u32 counts, pointing at nothing. */
export const REF_COUNT_TYPE = { size: REF_COUNT_VALUE_SIZE };

/** Where a space map's index entries are kept. */
export interface IndexStore {
  readonly maxEntries: number;
  /** Index entry `i`: change it, then hand it back with `changed`. */
  entry(i: number): IndexEntry;
  changed(i: number, e: IndexEntry): void;
  /** Adds entries for new bitmaps. */
  append(i: number, e: IndexEntry): void;
}

/** Sets entry `i` of a bitmap block's data to `count` (0..3): bit 2i high, 2i+1 low. */
function setBitmapCount(buf: Buffer, i: number, count: number): void {
  const at = BITMAP_HEADER_SIZE + (i >>> 2);
  const shift = (i & 3) << 1;
  const pair = ((count >>> 1) & 1) | ((count & 1) << 1);
  buf[at] = (buf[at] & ~(3 << shift)) | (pair << shift);
}

const USED_MASK = 0x55555555;

/** First entry in [begin, end) of a bitmap block whose count is 0, or -1. */
function findFreeInBitmap(buf: Buffer, begin: number, end: number): number {
  let i = begin;
  while (i < end) {
    // 16 entries per u32: an entry is free when both of its bits are clear.
    const wordStart = i & ~15;
    const word = buf.readUInt32LE(BITMAP_HEADER_SIZE + (wordStart >>> 2));
    let used = (word | (word >>> 1)) & USED_MASK;
    // Entries before i count as used.
    used |= USED_MASK & ((1 << ((i - wordStart) << 1)) - 1);
    if (used !== USED_MASK) {
      const free = ~used & USED_MASK;
      const at = wordStart + ((31 - Math.clz32(free & -free)) >>> 1);
      return at < end ? at : -1;
    }
    i = wordStart + 16;
  }
  return -1;
}

/**
 * One space map's counts (the kernel's ll_disk): `nrBlocks` entries in bitmaps reached through
 * the index, counts of 3 and more in the ref-count tree.
 */
export class SpaceMapLL {
  constructor(
    private readonly tm: TransactionManager,
    readonly index: IndexStore,
    public nrBlocks: number,
    public nrAllocated: number,
    public refCountRoot: number,
    private readonly refTree: BTree,
  ) {}

  /** The 2-bit count of block `b` (3 = see the ref-count tree). */
  lookupBitmap(b: number): number {
    const ie = this.index.entry(Math.floor(b / ENTRIES_PER_BITMAP));
    const blk = this.tm.read(ie.blocknr, BITMAP_BLOCK);
    const count = bitmapCount(blk.data, b % ENTRIES_PER_BITMAP);
    this.tm.unlock(blk);
    return count;
  }

  lookup(b: number): number {
    const count = this.lookupBitmap(b);
    return count < OVERFLOW_COUNT ? count : this.lookupBig(b);
  }

  private lookupBig(b: number): number {
    const count = this.refCountEntry(b);
    if (count < 0) throw new Error(`space map: block ${b} is marked 3+ in its bitmap but has no ref-count entry`);
    return count;
  }

  /** Block `b`'s entry in the ref-count tree, or -1 if it has none. */
  private refCountEntry(b: number): number {
    const out = Buffer.allocUnsafe(REF_COUNT_VALUE_SIZE);
    return this.refTree.lookup(this.refCountRoot, [b], out) ? out.readUInt32LE(0) : -1;
  }

  /** The first block in [begin, end) with a count of 0, or -1. */
  findFree(begin: number, end: number): number {
    const last = Math.min(end, this.nrBlocks);
    for (let i = Math.floor(begin / ENTRIES_PER_BITMAP); i * ENTRIES_PER_BITMAP < last; i++) {
      const ie = this.index.entry(i);
      if (ie.nrFree === 0) continue;
      const first = i * ENTRIES_PER_BITMAP;
      const from = Math.max(begin - first, ie.noneFreeBefore, 0);
      const to = Math.min(ENTRIES_PER_BITMAP, last - first);
      if (from >= to) continue;
      const blk = this.tm.read(ie.blocknr, BITMAP_BLOCK);
      const at = findFreeInBitmap(blk.data, from, to);
      this.tm.unlock(blk);
      if (at >= 0) return first + at;
    }
    return -1;
  }

  /** Adds one to block `b`'s count. Returns +1 if it was free (now allocated), else 0. */
  inc(b: number): number {
    return this.mutate(b, 1, -1);
  }

  /** Drops one from block `b`'s count. Returns -1 if it is now free, else 0. */
  dec(b: number): number {
    return this.mutate(b, -1, -1);
  }

  /**
   * Sets block `b`'s count. Returns +1, -1 or 0 as the block became allocated, free or neither.
   * Unlike inc and dec it also takes a bitmap saying 3+ with no ref-count entry (damage a repair
   * overwrites): the old count is then taken as 3.
   */
  set(b: number, count: number): number {
    return this.mutate(b, 0, count);
  }

  /** Removes block `b`'s ref-count entry if it has one (a stray, its bitmap not saying 3+). */
  dropRefCount(b: number): void {
    try {
      this.refCountRoot = this.refTree.remove(this.refCountRoot, [b]);
    } catch (e) {
      if (!(e instanceof KeyNotFoundError)) throw e;
    }
  }

  /**
   * Recomputes what the bitmaps imply and the index and root only summarise: each index entry's
   * free count and first free entry, and the number of blocks allocated. Changed index entries
   * are written at the commit. Returns whether anything differed.
   */
  recount(): boolean {
    let allocated = 0;
    let differed = false;
    const bitmaps = Math.ceil(this.nrBlocks / ENTRIES_PER_BITMAP);
    for (let i = 0; i < bitmaps; i++) {
      const ie = this.index.entry(i);
      const blk = this.tm.read(ie.blocknr, BITMAP_BLOCK);
      // Entries past the end of the device are zero and count as free, as the kernel's extend counts them.
      const inDevice = Math.min(ENTRIES_PER_BITMAP, this.nrBlocks - i * ENTRIES_PER_BITMAP);
      let free = 0;
      let firstFree = -1;
      for (let e = 0; e < ENTRIES_PER_BITMAP; e++) {
        if (bitmapCount(blk.data, e) !== 0) {
          if (e < inDevice) allocated++;
        } else {
          free++;
          if (firstFree < 0) firstFree = e;
        }
      }
      this.tm.unlock(blk);
      if (firstFree < 0) firstFree = ENTRIES_PER_BITMAP;
      // none_free_before is a hint: below the first free entry it only costs a longer search.
      if (ie.nrFree !== free || ie.noneFreeBefore > firstFree) {
        this.index.changed(i, { ...ie, nrFree: free, noneFreeBefore: Math.min(ie.noneFreeBefore, firstFree) });
        differed = true;
      }
    }
    if (allocated !== this.nrAllocated) differed = true;
    this.nrAllocated = allocated;
    return differed;
  }

  /** Moves block `b`'s count by `delta`, or sets it to `setTo` (a repair) when that is not -1. */
  private mutate(b: number, delta: number, setTo: number): number {
    if (b >= this.nrBlocks || b < 0) throw new Error(`space map: block ${b} is outside the space map (${this.nrBlocks} blocks)`);
    const i = Math.floor(b / ENTRIES_PER_BITMAP);
    const bit = b % ENTRIES_PER_BITMAP;
    const ie = this.index.entry(i);
    const block = this.tm.shadow(ie.blocknr, BITMAP_BLOCK);
    ie.blocknr = block.location;
    let old = bitmapCount(block.data, bit);
    let hasEntry = old >= OVERFLOW_COUNT;
    const repairing = setTo >= 0;
    if (hasEntry) {
      const big = repairing ? this.refCountEntry(b) : this.lookupBig(b);
      hasEntry = big >= 0;
      if (hasEntry) old = big;
    }
    if (old + delta < 0) throw new Error(`space map: the count of block ${b} would drop below 0`);
    const count = repairing ? setTo : old + delta;
    setBitmapCount(block.data, bit, Math.min(count, OVERFLOW_COUNT));
    this.tm.unlock(block);
    if (count < OVERFLOW_COUNT) {
      if (hasEntry) this.refCountRoot = this.refTree.remove(this.refCountRoot, [b]);
    } else {
      const value = Buffer.allocUnsafe(REF_COUNT_VALUE_SIZE);
      value.writeUInt32LE(count, 0);
      this.refCountRoot = this.refTree.insert(this.refCountRoot, [b], value).root;
    }
    let event = 0;
    if (count !== 0 && old === 0) {
      event = 1;
      this.nrAllocated++;
      ie.nrFree--;
      if (ie.noneFreeBefore === bit) ie.noneFreeBefore = bit + 1;
    } else if (old !== 0 && count === 0) {
      event = -1;
      this.nrAllocated--;
      ie.nrFree++;
      ie.noneFreeBefore = Math.min(ie.noneFreeBefore, bit);
    }
    this.index.changed(i, ie);
    return event;
  }

  /** Grows the space map by `extra` blocks: new bitmaps, all free. */
  extend(extra: number): void {
    const oldBitmaps = Math.ceil(this.nrBlocks / ENTRIES_PER_BITMAP);
    const nrBlocks = this.nrBlocks + extra;
    const bitmaps = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
    if (bitmaps > this.index.maxEntries) {
      throw new Error(`space map of ${nrBlocks} blocks needs ${bitmaps} bitmaps, more than the ${this.index.maxEntries} its index holds`);
    }
    this.nrBlocks = nrBlocks;
    for (let i = oldBitmaps; i < bitmaps; i++) {
      const b = this.tm.newBlock(BITMAP_BLOCK);
      const blocknr = b.location;
      this.tm.unlock(b);
      // Entries past the end of the device count as free in the last bitmap, as the kernel's.
      this.index.append(i, { blocknr, nrFree: ENTRIES_PER_BITMAP, noneFreeBefore: 0 });
    }
  }
}

/** A read-only view of a space map as its last commit left it: which blocks were in use. */
export class CommittedCounts {
  constructor(
    private readonly tm: TransactionManager,
    readonly nrBlocks: number,
    private readonly entry: (i: number) => IndexEntry,
  ) {}

  /** Whether block `b` was free at the last commit (blocks beyond the old end were). */
  wasFree(b: number): boolean {
    if (b >= this.nrBlocks) return true;
    const ie = this.entry(Math.floor(b / ENTRIES_PER_BITMAP));
    const blk = this.tm.read(ie.blocknr, BITMAP_BLOCK);
    const count = bitmapCount(blk.data, b % ENTRIES_PER_BITMAP);
    this.tm.unlock(blk);
    return count === 0;
  }
}

/**
 * The first block from `begin` on that is free now and was free at the last commit, wrapping
 * once past the end; -1 if there is none. `skip` rules out blocks already promised elsewhere.
 */
export function findCommonFree(ll: SpaceMapLL, old: CommittedCounts, begin: number, skip?: (b: number) => boolean): number {
  const b = findCommonFreeIn(ll, old, begin, ll.nrBlocks, skip);
  return b >= 0 ? b : findCommonFreeIn(ll, old, 0, Math.min(begin, ll.nrBlocks), skip);
}

function findCommonFreeIn(ll: SpaceMapLL, old: CommittedCounts, from: number, to: number, skip?: (b: number) => boolean): number {
  for (let at = from; ; ) {
    const b = ll.findFree(at, to);
    if (b < 0) return -1;
    if (old.wasFree(b) && !skip?.(b)) return b;
    at = b + 1;
  }
}

