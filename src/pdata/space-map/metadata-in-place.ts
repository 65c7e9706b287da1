// The metadata space map, updated in place (the kernel's dm-space-map-metadata). It counts its own
// blocks: changing a count shadows a bitmap, which allocates a block, which changes a count. As in
// the kernel, a change made while another is under way is queued and applied once the outer one
// is done, and the queue is drained until nothing more is queued.
import { BTree } from '../btree/tree.js';
import { NoSpaceError, TransactionManager, TransactionalSpaceMap } from '../transaction-manager.js';
import { INDEX_ENTRY_SIZE, IndexEntry, OVERFLOW_COUNT, bitmapsFor, decodeIndexEntry, encodeIndexEntry } from './common.js';
import { CommittedCounts, INDEX_BLOCK, IndexStore, REF_COUNT_TYPE, SpaceMapLL, findCommonFree } from './in-place.js';
import { INDEX_HEADER_SIZE, MAX_METADATA_BITMAPS, MAX_METADATA_BLOCKS } from './metadata.js';
import { SpaceMapRoot, spaceMapSize } from './root.js';

/** The index: one block's worth of entries, kept in memory and written at each commit. */
class MemoryIndex implements IndexStore {
  readonly maxEntries = MAX_METADATA_BITMAPS;
  changedSinceCommit = false;
  constructor(readonly entries: IndexEntry[]) {}

  entry(i: number): IndexEntry {
    const e = this.entries[i];
    if (!e) throw new Error(`metadata space map: no index entry for bitmap ${i}`);
    return e;
  }

  changed(i: number, e: IndexEntry): void {
    this.entries[i] = e;
    this.changedSinceCommit = true;
  }

  append(i: number, e: IndexEntry): void {
    this.changed(i, e);
  }

  copy(): IndexEntry[] {
    return this.entries.map((e) => ({ ...e }));
  }
}

export class MetadataSpaceMap implements TransactionalSpaceMap {
  private ll!: SpaceMapLL;
  private old!: CommittedCounts;
  private oldNrAllocated = 0;
  /** Where the next search for a free block starts. */
  private begin = 0;
  /** Nesting of count changes; inside one, further changes are queued. */
  private depth = 0;
  /** Queued changes: b + 1 to increment block b, -(b + 1) to decrement it. */
  private readonly queue: number[] = [];
  /** The first queued change not yet applied (it stays queued while it is being applied). */
  private queueHead = 0;
  /** The block an outer allocation is counting right now (not yet visible in its bitmap). */
  private inflight = -1;
  private allocatedThisTransaction = 0;
  /** While formatting: blocks are handed out in order, counted all at once afterwards. */
  private bootstrapLimit = -1;
  private indexLocation = 0;
  private index!: MemoryIndex;
  private protect?: (b: number) => boolean;
  /** Blocks free in the bitmaps that may not be handed out: promised already, or protected. */
  private readonly unavailable = (b: number): boolean => this.promised(b) || (this.protect?.(b) ?? false);

  private constructor(private readonly tm: TransactionManager) {}

  /**
   * A new space map for a metadata device of `nrBlocks` (capped at what one index block can
   * describe), with the superblock at block 0 counted. Its own blocks follow the superblock.
   */
  static format(tm: TransactionManager, nrBlocks: number): MetadataSpaceMap {
    const sm = new MetadataSpaceMap(tm);
    tm.attach(sm);
    const size = Math.min(nrBlocks, MAX_METADATA_BLOCKS);
    sm.bootstrapLimit = size;
    sm.begin = 1;
    const refTree = new BTree(tm, REF_COUNT_TYPE);
    const indexBlock = tm.newBlock(INDEX_BLOCK);
    sm.indexLocation = indexBlock.location;
    tm.unlock(indexBlock);
    sm.index = new MemoryIndex([]);
    sm.ll = new SpaceMapLL(tm, sm.index, 0, 0, refTree.empty(), refTree);
    sm.ll.extend(size);
    sm.bootstrapLimit = -1;
    // Count what was handed out while bootstrapping: the superblock and the blocks above.
    const used = sm.begin;
    sm.depth = 1;
    for (let b = 0; b < used; b++) sm.queue.push(b + 1);
    sm.out();
    sm.commit();
    return sm;
  }

  /**
   * The space map a committed superblock describes. `protect` names blocks never to hand out
   * whatever their count says: a repair protects every block the old metadata references, since
   * a count that is too low would otherwise let a live block be overwritten.
   */
  static open(tm: TransactionManager, root: SpaceMapRoot, protect?: (b: number) => boolean): MetadataSpaceMap {
    const sm = new MetadataSpaceMap(tm);
    sm.protect = protect;
    tm.attach(sm);
    const nrBlocks = spaceMapSize(root);
    if (nrBlocks > MAX_METADATA_BLOCKS) {
      throw new Error(`metadata space map claims ${root.nrBlocks} blocks, more than the ${MAX_METADATA_BLOCKS} it can describe`);
    }
    const blk = tm.read(root.bitmapRoot, INDEX_BLOCK);
    const entries: IndexEntry[] = [];
    for (let i = 0; i < bitmapsFor(nrBlocks); i++) entries.push(decodeIndexEntry(blk.data, INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE));
    tm.unlock(blk);
    sm.indexLocation = root.bitmapRoot;
    sm.index = new MemoryIndex(entries);
    sm.ll = new SpaceMapLL(tm, sm.index, nrBlocks, Number(root.nrAllocated), root.refCountRoot, new BTree(tm, REF_COUNT_TYPE));
    sm.snapshot();
    return sm;
  }

  get nrBlocks(): number {
    return this.ll.nrBlocks;
  }

  /** Free blocks as the kernel reports them: free at the last commit, less this transaction's allocations. */
  get nrFree(): number {
    return this.old.nrBlocks - this.oldNrAllocated - this.allocatedThisTransaction;
  }

  root(): SpaceMapRoot {
    return { nrBlocks: this.ll.nrBlocks, nrAllocated: this.ll.nrAllocated, bitmapRoot: this.indexLocation, refCountRoot: this.ll.refCountRoot };
  }

  newBlock(): number {
    if (this.bootstrapLimit >= 0) {
      if (this.begin >= this.bootstrapLimit) throw new NoSpaceError('metadata device too small for its own space map');
      return this.begin++;
    }
    const b = findCommonFree(this.ll, this.old, this.begin, this.unavailable);
    if (b < 0) throw new NoSpaceError('out of metadata space');
    this.begin = b + 1;
    if (this.depth > 0) {
      this.queue.push(b + 1);
    } else {
      this.depth++;
      this.inflight = b;
      try {
        this.ll.inc(b);
      } finally {
        this.inflight = -1;
      }
      this.out();
    }
    this.allocatedThisTransaction++;
    return b;
  }

  inc(b: number): void {
    if (this.depth > 0) {
      this.queue.push(b + 1);
      return;
    }
    this.depth++;
    this.ll.inc(b);
    this.out();
  }

  dec(b: number): void {
    if (this.depth > 0) {
      this.queue.push(-(b + 1));
      return;
    }
    this.depth++;
    this.ll.dec(b);
    this.out();
  }

  count(b: number): number {
    return this.ll.lookup(b) + this.adjustment(b);
  }

  // ---- repairs (thin_check --auto-repair), each made outside any other change

  /** Sets block `b`'s count (see SpaceMapLL.set). */
  set(b: number, count: number): void {
    this.outermost(() => this.ll.set(b, count));
  }

  /** Moves block `b`'s count by `delta`. */
  adjust(b: number, delta: number): void {
    this.outermost(() => this.ll.set(b, this.ll.lookup(b) + delta));
  }

  dropRefCount(b: number): void {
    this.outermost(() => this.ll.dropRefCount(b));
  }

  /** See SpaceMapLL.recount; the index is written at the commit if it changed. */
  recount(): boolean {
    return this.outermost(() => this.ll.recount());
  }

  private outermost<T>(fn: () => T): T {
    if (this.depth !== 0) throw new Error('metadata space map: a repair may not run inside another change');
    // As inc and dec: a failure half way (out of space) leaves the transaction to be abandoned.
    this.depth++;
    const r = fn();
    this.out();
    return r;
  }

  isShared(b: number): boolean {
    const adjustment = this.adjustment(b);
    if (adjustment > 1) return true;
    const count = this.ll.lookupBitmap(b);
    // 3 means "3 or more" whatever is queued.
    return count === OVERFLOW_COUNT || count + adjustment > 1;
  }

  /** Writes the index to a new block if it changed; the blocks free now become reusable. */
  commit(): void {
    if (this.index.changedSinceCommit) {
      const block = this.tm.shadow(this.indexLocation, INDEX_BLOCK);
      this.indexLocation = block.location;
      // The shadow itself changed counts (the copy allocated, the original released): written too.
      const entries = this.index.entries;
      for (let i = 0; i < entries.length; i++) encodeIndexEntry(block.data, INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE, entries[i]);
      this.tm.unlock(block);
      this.index.changedSinceCommit = false;
    }
    this.snapshot();
  }

  private snapshot(): void {
    const entries = this.index.copy();
    this.old = new CommittedCounts(this.tm, this.ll.nrBlocks, (i) => entries[i]);
    this.oldNrAllocated = this.ll.nrAllocated;
    this.allocatedThisTransaction = 0;
  }

  /** Leaves a nesting level; the outermost applies everything queued meanwhile. */
  private out(): void {
    if (this.depth === 1) {
      // Applying a change may queue more; they are applied in turn.
      while (this.queueHead < this.queue.length) {
        const op = this.queue[this.queueHead];
        if (op > 0) this.ll.inc(op - 1);
        else this.ll.dec(-op - 1);
        this.queueHead++;
      }
      this.queue.length = 0;
      this.queueHead = 0;
    }
    this.depth--;
  }

  /** Net queued change to block b's count. */
  private adjustment(b: number): number {
    let n = 0;
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const op = this.queue[i];
      if (op === b + 1) n++;
      else if (op === -(b + 1)) n--;
    }
    return n;
  }

  /** Handed out but not yet counted in its bitmap. */
  private promised(b: number): boolean {
    if (b === this.inflight) return true;
    for (let i = this.queueHead; i < this.queue.length; i++) if (this.queue[i] === b + 1) return true;
    return false;
  }
}
