// The transaction manager: copy-on-write over the block manager, as the kernel's
// dm-transaction-manager. Nothing the last commit uses is changed in place: a block is changed
// through a shadow, a copy at a block the space map hands out (never one the last commit used),
// unless it was itself created or shadowed in this transaction. A commit flushes every changed
// block and only then writes the superblock, so a crash at any point leaves the last commit.
import { Block, BlockManager, BlockValidator } from './block-manager.js';

/** What the transaction manager needs from the metadata space map. */
export interface TransactionalSpaceMap {
  /** A block free now and at the last commit, counted once. Throws NoSpaceError when none is. */
  newBlock(): number;
  inc(block: number): void;
  dec(block: number): void;
  count(block: number): number;
  /** Whether more than one reference holds the block (its copy must then share its children). */
  isShared(block: number): boolean;
  /** Writes the space map's own changes (it may allocate while doing so). */
  commit(): void;
}

/** The space map has no block to give. */
export class NoSpaceError extends Error {}

export class TransactionManager {
  private sm!: TransactionalSpaceMap;
  /** Blocks created or shadowed in this transaction: changed in place until the commit. */
  private readonly shadows = new Set<number>();
  /**
   * Those of them nothing has taken a second reference to since: shadowing one needs no count
   * lookup (the hot path of every B-tree change). A reference taken through inc() removes it.
   */
  private readonly exclusive = new Set<number>();

  constructor(readonly bm: BlockManager) {}

  /** The space map is built on this transaction manager, so it is attached after construction. */
  attach(sm: TransactionalSpaceMap): void {
    this.sm = sm;
  }

  get spaceMap(): TransactionalSpaceMap {
    return this.sm;
  }

  read(location: number, v: BlockValidator): Block {
    return this.bm.read(location, v);
  }

  unlock(b: Block): void {
    this.bm.unlock(b);
  }

  /** A new zeroed block of kind `v`, locked for writing, with a count of one. */
  newBlock(v: BlockValidator): Block {
    const location = this.sm.newBlock();
    const b = this.bm.zero(location, v);
    this.shadows.add(location);
    this.exclusive.add(location);
    return b;
  }

  /**
   * Whether the original of the last shadow was shared: the copy's children (or values) then
   * each need one more reference. (A field, not a result object: shadows are the hot path.)
   */
  shadowedShared = false;

  /**
   * The block to change in place of `location`. A block already created or shadowed in this
   * transaction and held once is changed where it is; any other is copied to a new block, and
   * the original loses the reference the caller's pointer gave it. See shadowedShared.
   */
  shadow(location: number, v: BlockValidator): Block {
    if (this.exclusive.has(location)) {
      this.shadowedShared = false;
      return this.bm.write(location, v);
    }
    const incChildren = this.sm.isShared(location);
    this.shadowedShared = incChildren;
    if (!incChildren && this.shadows.has(location)) return this.bm.write(location, v);
    const copyAt = this.sm.newBlock();
    this.sm.dec(location);
    const orig = this.bm.read(location, v);
    let block: Block;
    if (!incChildren && orig.pins === 1 && !orig.dirty) {
      // Nothing else reads the original in this transaction: its buffer becomes the copy's.
      block = this.bm.relocate(orig, copyAt);
    } else {
      block = this.bm.zero(copyAt, v, false);
      orig.data.copy(block.data);
      this.bm.unlock(orig);
    }
    this.shadows.add(copyAt);
    this.exclusive.add(copyAt);
    // The space map's changes above may have shadowed too.
    this.shadowedShared = incChildren;
    return block;
  }

  inc(location: number): void {
    this.exclusive.delete(location);
    this.sm.inc(location);
  }

  dec(location: number): void {
    this.sm.dec(location);
  }

  refCount(location: number): number {
    return this.sm.count(location);
  }

  isShared(location: number): boolean {
    return this.sm.isShared(location);
  }

  /** First half of a commit: the space map writes its own changes, then every changed block. */
  preCommit(): void {
    this.sm.commit();
    this.bm.flush();
  }

  /** Second half: the superblock, written and synced after everything it points to. */
  commit(superblockLocation: number, superblock: Buffer, v: BlockValidator): void {
    this.bm.commitSuperblock(superblockLocation, superblock, v);
    this.shadows.clear();
    this.exclusive.clear();
  }
}
