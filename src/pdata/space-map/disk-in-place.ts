// The data space map, updated in place (the kernel's dm-space-map-disk): bitmaps located through
// a B-tree of index entries (bitmap number -> entry). Data blocks are handed out by a cursor that
// moves forward across commits and wraps at the end of the device, taking only blocks free now and
// at the last commit, so a block freed in this transaction is not reused before it commits.
import { BTree } from '../btree/tree.js';
import { TransactionManager } from '../transaction-manager.js';
import { INDEX_ENTRY_SIZE, IndexEntry, decodeIndexEntry, encodeIndexEntry } from './common.js';
import { CommittedCounts, IndexStore, REF_COUNT_TYPE, SpaceMapLL, findCommonFree } from './in-place.js';
import { SpaceMapRoot, spaceMapSize } from './root.js';

/** Index entries cached before they are written back into the index tree. */
const INDEX_CACHE_ENTRIES = 4096;

/** Index entries in a B-tree, read through a cache; changed ones are written back at commit. */
class TreeIndex implements IndexStore {
  readonly maxEntries = Number.MAX_SAFE_INTEGER;
  private readonly cache = new Map<number, IndexEntry>();
  private readonly dirty = new Set<number>();
  private readonly value = Buffer.alloc(INDEX_ENTRY_SIZE);

  constructor(private readonly tree: BTree, public root: number) {}

  entry(i: number): IndexEntry {
    const cached = this.cache.get(i);
    if (cached) return cached;
    if (!this.tree.lookup(this.root, [i], this.value)) throw new Error(`data space map index has no entry for bitmap ${i}`);
    if (this.cache.size >= INDEX_CACHE_ENTRIES) this.writeBack(true);
    const e = decodeIndexEntry(this.value, 0);
    this.cache.set(i, e);
    return e;
  }

  changed(i: number, e: IndexEntry): void {
    this.cache.set(i, e);
    this.dirty.add(i);
  }

  append(i: number, e: IndexEntry): void {
    this.changed(i, e);
  }

  /** Writes the changed entries into the tree (and empties the cache when asked). */
  writeBack(evict = false): void {
    for (const i of [...this.dirty].sort((a, b) => a - b)) {
      encodeIndexEntry(this.value, 0, this.cache.get(i)!);
      this.root = this.tree.insert(this.root, [i], this.value).root;
    }
    this.dirty.clear();
    if (evict) this.cache.clear();
  }
}

export class DataSpaceMap {
  private index!: TreeIndex;
  private ll!: SpaceMapLL;
  private old!: CommittedCounts;
  /** The allocation cursor: 0 when the pool is opened, never reset by a commit. */
  private begin = 0;
  private readonly indexTree: BTree;
  private readonly refTree: BTree;

  private constructor(private readonly tm: TransactionManager) {
    this.indexTree = new BTree(tm, { size: INDEX_ENTRY_SIZE });
    this.refTree = new BTree(tm, REF_COUNT_TYPE);
  }

  /** A new data space map of `nrBlocks`, all free. */
  static format(tm: TransactionManager, nrBlocks: number): DataSpaceMap {
    const sm = new DataSpaceMap(tm);
    sm.index = new TreeIndex(sm.indexTree, sm.indexTree.empty());
    sm.ll = new SpaceMapLL(tm, sm.index, 0, 0, sm.refTree.empty(), sm.refTree);
    sm.ll.extend(nrBlocks);
    // Nothing was committed before: every block counts as free at the last commit.
    sm.snapshot(0);
    return sm;
  }

  static open(tm: TransactionManager, root: SpaceMapRoot): DataSpaceMap {
    const sm = new DataSpaceMap(tm);
    sm.index = new TreeIndex(sm.indexTree, root.bitmapRoot);
    sm.ll = new SpaceMapLL(tm, sm.index, spaceMapSize(root), Number(root.nrAllocated), root.refCountRoot, sm.refTree);
    sm.snapshot(spaceMapSize(root));
    return sm;
  }

  get nrBlocks(): number {
    return this.ll.nrBlocks;
  }

  get nrFree(): number {
    return this.ll.nrBlocks - this.ll.nrAllocated;
  }

  /** The next block by the cursor (counted once), or -1 when none is free now and at the last commit. */
  newBlock(): number {
    const b = findCommonFree(this.ll, this.old, this.begin);
    if (b < 0) return -1;
    this.begin = b + 1;
    this.ll.inc(b);
    return b;
  }

  inc(b: number): void {
    this.ll.inc(b);
  }

  /** Returns true when the block became free. */
  dec(b: number): boolean {
    return this.ll.dec(b) < 0;
  }

  count(b: number): number {
    return this.ll.lookup(b);
  }

  /** Sets block `b`'s count (a repair; see SpaceMapLL.set). */
  set(b: number, count: number): void {
    this.ll.set(b, count);
  }

  dropRefCount(b: number): void {
    this.ll.dropRefCount(b);
  }

  /** See SpaceMapLL.recount; changed index entries are written at the commit. */
  recount(): boolean {
    return this.ll.recount();
  }

  extend(extra: number): void {
    this.ll.extend(extra);
  }

  /** Writes the index back; the blocks free now become reusable. */
  commit(): void {
    this.index.writeBack();
    this.snapshot(this.ll.nrBlocks);
  }

  root(): SpaceMapRoot {
    return { nrBlocks: this.ll.nrBlocks, nrAllocated: this.ll.nrAllocated, bitmapRoot: this.index.root, refCountRoot: this.ll.refCountRoot };
  }

  /** The counts just committed (the first `nrBlocks` of them) become the old view. */
  private snapshot(nrBlocks: number): void {
    const committed = new TreeIndex(this.indexTree, this.index.root);
    this.old = new CommittedCounts(this.tm, nrBlocks, (i) => committed.entry(i));
  }
}
