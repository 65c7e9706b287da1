// A thin pool on the transactional persistent-data library: the kernel's dm-thin-metadata (the
// trees, the device details, commits, the metadata snapshot) and the parts of dm-thin that decide
// what the metadata becomes (messages commit, data allocation and its out-of-space rules, the pool
// modes). The IO path is offered as steps (lookup, allocate, insert, remove) so the caller does the
// data IO between them, and a scheduler could interleave them.
import { BLOCK_SIZE } from '../io/block-io.js';
import { BlockManager, BlockManagerOptions, BlockStore, CrashError } from '../pdata/block-manager.js';
import { BTree, ValueType } from '../pdata/btree/tree.js';
import { U64, readBlockNr, u64Add, writeU64 } from '../pdata/le.js';
import { DataSpaceMap } from '../pdata/space-map/disk-in-place.js';
import { MetadataSpaceMap } from '../pdata/space-map/metadata-in-place.js';
import { encodeSpaceMapRoot } from '../pdata/space-map/root.js';
import { NoSpaceError, TransactionManager } from '../pdata/transaction-manager.js';
import { DEVICE_DETAILS_SIZE, DeviceDetails, decodeDeviceDetails, encodeDeviceDetails } from './device-details.js';
import { MAX_DATA_BLOCK, MAX_TIME, mappingDataBlock, mappingTime, writeMapping } from './mapping.js';
import {
  NEEDS_CHECK_FLAG, SPACE_MAP_ROOT_SIZE, SUPERBLOCK_BLOCK, SUPERBLOCK_LOCATION, SUPERBLOCK_MAGIC, Superblock, dataSpaceMapRoot, decodeSuperblock,
  encodeSuperblock, metadataSpaceMapRoot, validDataBlockSize,
} from './superblock.js';

/** dm-thin's device ids are 24 bits. */
export const MAX_DEV_ID = 2 ** 24 - 1;
/** The metadata block size in sectors, the only one the kernel uses. */
const METADATA_BLOCK_SECTORS = BLOCK_SIZE / 512;
/** The kernel records at most this many metadata blocks in the superblock (255 bitmaps of 2^14). */
const THIN_METADATA_MAX_BLOCKS = 255 * (1 << 14);

/**
 * The pool's modes, in degraded order, as dm-thin's: out of data space still changes metadata but
 * allocates nothing; out of metadata space and read-only change nothing; fail fails all IO.
 */
export const POOL_MODES = ['write', 'out-of-data-space', 'out-of-metadata-space', 'read-only', 'fail'] as const;
export type PoolMode = (typeof POOL_MODES)[number];
const modeRank = (m: PoolMode): number => POOL_MODES.indexOf(m);

/** An operation the pool refuses, as the kernel would (the message or IO fails, nothing changes). */
export class PoolError extends Error {
  constructor(message: string, readonly reason: 'refused' | 'no-data-space' | 'read-only' | 'aborted' | 'failed' = 'refused') {
    super(message);
  }
}

export interface PoolFormatOptions {
  /** Data block size in 512-byte sectors. */
  dataBlockSize: number;
  nrDataBlocks: number;
}

export interface PoolOpenOptions extends BlockManagerOptions {
  /** Called after every commit, with what caused it. */
  onCommit?: (cause: CommitCause) => void;
  /** Called when the pool changes mode, with why. */
  onModeChange?: (mode: PoolMode, cause: string) => void;
}

export type CommitCause = 'requested' | 'message' | 'no-data-space' | 'metadata-reserve' | 'resize';

/** What the pool knows about one device while it is in use (the kernel's dm_thin_device). */
interface DeviceState extends DeviceDetails {
  changed: boolean;
}

/** A mapping as the IO path sees it. */
export interface Mapping {
  dataBlock: number;
  time: number;
  /** Mapped before the device's last snapshot: a write must copy it first. */
  shared: boolean;
}

/** A mapping in a range of thin blocks: what a discard locks and removes (and passes down). */
export interface RemovedMapping {
  thinBlock: U64;
  dataBlock: number;
  time: number;
}

export class Pool {
  private bm!: BlockManager;
  private tm!: TransactionManager;
  private msm!: MetadataSpaceMap;
  private dsm!: DataSpaceMap;
  /** dev_id, thin block -> data block and time (the kernel's info). */
  private mappingTree!: BTree;
  /** dev_id -> device tree root, whose values are subtrees (tl_info). */
  private topTree!: BTree;
  /** thin block -> data block and time, one device's tree (bl_info). */
  private bottomTree!: BTree;
  private detailsTree!: BTree;

  private sb!: Superblock;
  time = 0;
  transactionId: U64 = 0;
  private root = 0;
  private detailsRoot = 0;
  private flags = 0;
  /** The flags of the superblock last written (a crash can lose the write that sets needs_check). */
  private flagsOnDisk = 0;
  private heldRoot = 0;
  private readonly devices = new Map<number, DeviceState>();
  private metadataReserve = 0;
  private currentMode: PoolMode = 'write';
  /** Set when an abort could not write needs_check: written at the next commit point. */
  private needsCheckPending = false;
  /** Devices whose changes an abort lost: a flush through them fails (dm-thin's aborted_with_changes). */
  private readonly abortedWithChanges = new Set<number>();
  commits = 0;
  private readonly scratch = Buffer.alloc(DEVICE_DETAILS_SIZE);
  /** A mapping value on its way in or out (one at a time: the pool is not reentrant). */
  private readonly mappingValue = Buffer.alloc(8);
  /** The mapping tree's keys of that mapping: dev_id, thin block. */
  private readonly mappingKeys: [number, U64] = [0, 0];

  private constructor(private readonly store: BlockStore, private readonly opts: PoolOpenOptions) {}

  /** Formats the metadata device as a new, empty pool, committed. */
  static format(store: BlockStore, format: PoolFormatOptions, opts: PoolOpenOptions = {}): Pool {
    if (!validDataBlockSize(format.dataBlockSize)) {
      throw new PoolError(`data block size ${format.dataBlockSize} sectors is not a multiple of 128 between 128 and 2097152`);
    }
    if (!Number.isSafeInteger(format.nrDataBlocks) || format.nrDataBlocks < 0 || format.nrDataBlocks > MAX_DATA_BLOCK + 1) {
      throw new PoolError(`nr_data_blocks ${format.nrDataBlocks} is beyond the 2^40 data blocks a mapping can address`);
    }
    const pool = new Pool(store, opts);
    pool.bm = new BlockManager(store, opts);
    pool.tm = new TransactionManager(pool.bm);
    pool.msm = MetadataSpaceMap.format(pool.tm, store.nrBlocks);
    pool.dsm = DataSpaceMap.format(pool.tm, format.nrDataBlocks);
    pool.makeTrees();
    pool.root = pool.mappingTree.empty();
    pool.detailsRoot = pool.detailsTree.empty();
    pool.sb = {
      flags: 0, blocknr: SUPERBLOCK_LOCATION, uuid: Buffer.alloc(16), magic: SUPERBLOCK_MAGIC, version: 2, time: 0,
      transactionId: 0, heldRoot: 0, dataSpaceMapRoot: Buffer.alloc(SPACE_MAP_ROOT_SIZE), metadataSpaceMapRoot: Buffer.alloc(SPACE_MAP_ROOT_SIZE),
      dataMappingRoot: 0, deviceDetailsRoot: 0, dataBlockSize: format.dataBlockSize, metadataBlockSize: METADATA_BLOCK_SECTORS,
      metadataNrBlocks: Math.min(store.nrBlocks, THIN_METADATA_MAX_BLOCKS), compatFlags: 0, compatRoFlags: 0, incompatFlags: 0,
    };
    pool.setReserve();
    pool.writeCommit();
    return pool;
  }

  /** Opens the pool on the metadata device (ours or the kernel's) at its last commit. */
  static open(store: BlockStore, opts: PoolOpenOptions = {}): Pool {
    const pool = new Pool(store, opts);
    pool.load();
    return pool;
  }

  get dataBlockSize(): number {
    return this.sb.dataBlockSize;
  }

  get nrDataBlocks(): number {
    return this.dsm.nrBlocks;
  }

  get freeDataBlocks(): number {
    return this.dsm.nrFree;
  }

  /** Free metadata blocks as the kernel reports them (the reserve not included). */
  get freeMetadataBlocks(): number {
    return Math.max(0, this.msm.nrFree - this.metadataReserve);
  }

  /** Metadata blocks in use, as the metadata space map counts them. */
  get usedMetadataBlocks(): number {
    return Number(this.msm.root().nrAllocated);
  }

  get mode(): PoolMode {
    return this.currentMode;
  }

  private setMode(mode: PoolMode, cause: string): void {
    // As dm-thin: a failed pool never comes back.
    if (this.currentMode === mode || this.currentMode === 'fail') return;
    this.currentMode = mode;
    this.opts.onModeChange?.(mode, cause);
  }

  get needsCheck(): boolean {
    return (this.flags & NEEDS_CHECK_FLAG) !== 0;
  }

  /** Whether the superblock on disk says needs_check. */
  get needsCheckOnDisk(): boolean {
    return (this.flagsOnDisk & NEEDS_CHECK_FLAG) !== 0;
  }

  get metadataSnapHeld(): boolean {
    return this.heldRoot !== 0;
  }

  /** Metadata block reads and writes so far. */
  get io(): { reads: number; writes: number } {
    return { reads: this.bm.reads, writes: this.bm.writes };
  }

  /** Whether anything changed since the last commit that a commit would write. */
  get changed(): boolean {
    for (const d of this.devices.values()) if (d.changed) return true;
    return false;
  }

  /** Whether device `devId` changed (mappings) in this transaction. */
  deviceChanged(devId: number): boolean {
    return this.devices.get(devId)?.changed ?? false;
  }

  // ---- opening, committing, aborting

  private makeTrees(): void {
    const tm = this.tm;
    const data: ValueType = {
      size: 8,
      inc: (values, offset, count) => {
        for (let i = 0; i < count; i++) this.dsm.inc(mappingDataBlock(values, offset + 8 * i));
      },
      dec: (values, offset, count) => {
        for (let i = 0; i < count; i++) this.dsm.dec(mappingDataBlock(values, offset + 8 * i));
      },
      equal: (a, ao, b, bo) => mappingDataBlock(a, ao) === mappingDataBlock(b, bo),
    };
    this.mappingTree = new BTree(tm, data, 2);
    this.bottomTree = new BTree(tm, data);
    this.topTree = new BTree(tm, {
      size: 8,
      inc: (values, offset, count) => {
        for (let i = 0; i < count; i++) tm.inc(readBlockNr(values, offset + 8 * i));
      },
      dec: (values, offset, count) => {
        for (let i = 0; i < count; i++) this.bottomTree.del(readBlockNr(values, offset + 8 * i));
      },
      equal: (a, ao, b, bo) => a.compare(b, bo, bo + 8, ao, ao + 8) === 0,
    });
    this.detailsTree = new BTree(tm, { size: DEVICE_DETAILS_SIZE });
  }

  /** Reads the committed superblock and opens everything it points to. */
  private load(): void {
    this.bm = new BlockManager(this.store, this.opts);
    this.tm = new TransactionManager(this.bm);
    const raw = this.bm.readUncached(SUPERBLOCK_LOCATION, SUPERBLOCK_BLOCK);
    const sb = decodeSuperblock(raw);
    if (sb.version < 1 || sb.version > 2) throw new PoolError(`unsupported metadata version ${sb.version}`);
    if (sb.incompatFlags !== 0) throw new PoolError(`unsupported incompatible feature flags 0x${sb.incompatFlags.toString(16)}`);
    if (sb.metadataBlockSize !== METADATA_BLOCK_SECTORS) throw new PoolError(`metadata block size ${sb.metadataBlockSize} is not ${METADATA_BLOCK_SECTORS} sectors`);
    const msmRoot = metadataSpaceMapRoot(sb);
    if (msmRoot.nrBlocks > this.store.nrBlocks) {
      throw new PoolError(`${this.store.path}: the metadata space map covers ${msmRoot.nrBlocks} blocks but the device holds ${this.store.nrBlocks}`);
    }
    this.sb = sb;
    this.msm = MetadataSpaceMap.open(this.tm, msmRoot);
    this.dsm = DataSpaceMap.open(this.tm, dataSpaceMapRoot(sb));
    this.makeTrees();
    this.time = sb.time;
    this.root = sb.dataMappingRoot;
    this.detailsRoot = sb.deviceDetailsRoot;
    this.transactionId = sb.transactionId;
    this.flags = sb.flags;
    this.flagsOnDisk = sb.flags;
    this.heldRoot = sb.heldRoot;
    this.devices.clear();
    this.setReserve();
    // dm-thin never lets a pool that needs checking write.
    this.currentMode = this.needsCheck ? 'read-only' : 'write';
  }

  private setReserve(): void {
    this.metadataReserve = Math.min(4096, Math.floor(this.msm.nrBlocks / 10));
  }

  /**
   * Commits the open transaction: changed device details, the space maps, every changed block,
   * then the superblock. Then, as dm-thin, notices running out of metadata space (the pool turns
   * read-only) or data space coming back (writes allowed again).
   */
  commit(cause: CommitCause = 'requested'): void {
    if (modeRank(this.mode) >= modeRank('out-of-metadata-space')) {
      throw new PoolError(`the pool is ${this.mode}: nothing can be committed`, 'read-only');
    }
    this.guard(() => this.writeCommit());
    this.opts.onCommit?.(cause);
    if (this.freeMetadataBlocks === 0) this.setMode('out-of-metadata-space', 'no free metadata blocks left but the reserve');
    else if (this.mode === 'out-of-data-space' && this.dsm.nrFree > 0) this.setMode('write', 'a commit found free data blocks');
  }

  private writeCommit(): void {
    for (const [devId, d] of this.devices) {
      if (!d.changed) continue;
      encodeDeviceDetails(this.scratch, 0, d);
      this.detailsRoot = this.detailsTree.insert(this.detailsRoot, [devId], this.scratch).root;
      d.changed = false;
    }
    this.dsm.commit();
    this.tm.preCommit();
    this.tm.commit(SUPERBLOCK_LOCATION, this.encodeSuperblock(), SUPERBLOCK_BLOCK);
    this.flagsOnDisk = this.flags;
    this.devices.clear();
    this.commits++;
  }

  private encodeSuperblock(): Buffer {
    const sb: Superblock = {
      ...this.sb,
      flags: this.flags,
      time: this.time,
      transactionId: this.transactionId,
      heldRoot: this.heldRoot,
      dataMappingRoot: this.root,
      deviceDetailsRoot: this.detailsRoot,
      dataSpaceMapRoot: encodeSpaceMapRoot(this.dsm.root()),
      metadataSpaceMapRoot: encodeSpaceMapRoot(this.msm.root()),
    };
    return encodeSuperblock(sb);
  }

  /**
   * Runs a change to the metadata. A failure inside it (out of metadata space, a damaged block)
   * leaves the transaction half done, so, as dm-thin, the transaction is aborted: the pool goes
   * back to its last commit, needs_check is set, and it turns read-only.
   */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      return this.failed(e);
    }
  }

  /** A change to the metadata failed half way: abort (see guard). */
  private failed(e: unknown): never {
    if (e instanceof PoolError || e instanceof CrashError) throw e;
    const why = e instanceof NoSpaceError ? 'out of metadata space' : (e as Error).message;
    this.abort(why);
    if (this.mode === 'fail') throw new PoolError(`${why}: the transaction could not be aborted and the pool has failed`, 'failed');
    throw new PoolError(`${why}: the transaction was aborted, needs_check set and the pool is read-only`, 'aborted');
  }

  /**
   * Drops the open transaction, reopens the last commit (reads only) and marks it as needing a
   * check, read-only. dm-thin sets needs_check in its cached superblock; it is written here at
   * once, or, when that write fails, at the next commit point (writeNeedsCheck).
   */
  private abort(why: string): void {
    for (const [devId, d] of this.devices) if (d.changed) this.abortedWithChanges.add(devId);
    this.bm.discardAll();
    try {
      this.load();
    } catch (e) {
      if (e instanceof CrashError) throw e;
      this.setMode('fail', `${why}, and the last commit could not be reopened: ${(e as Error).message}`);
      return;
    }
    this.flags |= NEEDS_CHECK_FLAG;
    this.needsCheckPending = true;
    this.setMode('read-only', `${why}: the transaction was aborted and needs_check set`);
    try {
      this.writeNeedsCheck();
    } catch (e) {
      if (e instanceof CrashError) throw e;
      // Kept in memory, as the kernel's dirty superblock: written at the next commit point.
    }
  }

  /** The committed superblock with the flags changed, written in place. */
  private writeNeedsCheck(): void {
    const buf = this.bm.readUncached(SUPERBLOCK_LOCATION, SUPERBLOCK_BLOCK);
    buf.writeUInt32LE(this.flags, 4);
    this.bm.commitSuperblock(SUPERBLOCK_LOCATION, buf, SUPERBLOCK_BLOCK);
    this.flagsOnDisk = this.flags;
    this.needsCheckPending = false;
  }

  /**
   * A commit point of a read-only pool: the needs_check flag an abort could not write is written
   * now. Failing again turns the pool to fail mode (all IO fails).
   */
  flushNeedsCheck(): void {
    if (!this.needsCheckPending || this.mode === 'fail') return;
    try {
      this.writeNeedsCheck();
    } catch (e) {
      if (e instanceof CrashError) throw e;
      this.setMode('fail', `writing needs_check failed: ${(e as Error).message}`);
      throw new PoolError(`writing needs_check failed (${(e as Error).message}): the pool has failed`, 'failed');
    }
  }

  /** Whether an abort lost changes made through device `devId` (a flush through it fails). */
  lostChanges(devId: number): boolean {
    return this.abortedWithChanges.has(devId);
  }

  // ---- devices and messages (each commits when it succeeds, as pool messages do)

  private requireMessages(): void {
    if (modeRank(this.mode) >= modeRank('out-of-metadata-space')) {
      throw new PoolError(`${this.modeError().message}: messages are refused`, 'read-only');
    }
  }

  /** The device's state, from this transaction or the details tree; null if there is none. */
  private device(devId: number): DeviceState | null {
    const open = this.devices.get(devId);
    if (open) return open;
    if (!this.detailsTree.lookup(this.detailsRoot, [devId], this.scratch)) return null;
    const d: DeviceState = { ...decodeDeviceDetails(this.scratch, 0), changed: false };
    this.devices.set(devId, d);
    return d;
  }

  /** The device's details, or null if there is no such device. */
  details(devId: number): DeviceDetails | null {
    const d = this.device(devId);
    return d && { mappedBlocks: d.mappedBlocks, transactionId: d.transactionId, creationTime: d.creationTime, snapshottedTime: d.snapshottedTime };
  }

  private checkDevId(devId: number): void {
    if (!Number.isSafeInteger(devId) || devId < 0 || devId > MAX_DEV_ID) throw new PoolError(`device id ${devId} is not below 2^24`);
  }

  createThin(devId: number): void {
    this.requireMessages();
    this.checkDevId(devId);
    if (this.device(devId)) throw new PoolError(`device ${devId} already exists`);
    this.guard(() => {
      const devRoot = this.bottomTree.empty();
      this.root = this.topTree.insert(this.root, [devId], u64Value(devRoot)).root;
      this.devices.set(devId, this.newDevice());
    });
    this.commit('message');
  }

  createSnap(devId: number, originId: number): void {
    this.requireMessages();
    this.checkDevId(devId);
    if (this.device(devId)) throw new PoolError(`device ${devId} already exists`);
    const origin = this.device(originId);
    const value = Buffer.alloc(8);
    if (!origin || !this.topTree.lookup(this.root, [originId], value)) throw new PoolError(`origin device ${originId} does not exist`);
    if (this.time >= MAX_TIME) throw new PoolError(`the pool's time would pass ${MAX_TIME}, the most a mapping records`);
    this.guard(() => {
      // The snapshot shares the origin's tree: one more reference to its root.
      this.tm.inc(readBlockNr(value, 0));
      this.root = this.topTree.insert(this.root, [devId], value).root;
      this.time++;
      origin.changed = true;
      origin.snapshottedTime = this.time;
      this.devices.set(devId, { ...this.newDevice(), mappedBlocks: origin.mappedBlocks });
    });
    this.commit('message');
  }

  private newDevice(): DeviceState {
    return { mappedBlocks: 0, transactionId: this.transactionId, creationTime: this.time, snapshottedTime: this.time, changed: true };
  }

  /** Removes the device, releasing what only it held (shared subtrees lose one reference). */
  deleteDevice(devId: number): void {
    this.requireMessages();
    if (!this.device(devId)) throw new PoolError(`device ${devId} does not exist`);
    this.guard(() => {
      this.devices.delete(devId);
      if (this.detailsTree.lookup(this.detailsRoot, [devId], this.scratch)) {
        this.detailsRoot = this.detailsTree.remove(this.detailsRoot, [devId]);
      }
      this.root = this.topTree.remove(this.root, [devId]);
    });
    this.commit('message');
  }

  setTransactionId(current: U64, next: U64): void {
    this.requireMessages();
    if (current !== this.transactionId) throw new PoolError(`transaction id is ${this.transactionId}, not ${current}`);
    this.transactionId = next;
    this.commit('message');
  }

  /**
   * Takes the metadata snapshot: commits, then copies the superblock into a new block whose trees
   * gain a reference each, and records it in the superblock. One at a time.
   */
  reserveMetadataSnap(): void {
    this.requireMessages();
    this.commit('message');
    if (this.heldRoot !== 0) throw new PoolError(`a metadata snapshot is already held (block ${this.heldRoot}); release it first`);
    this.guard(() => {
      // As the kernel's shadow of the superblock: one more reference, a copy, the reference dropped.
      this.tm.inc(SUPERBLOCK_LOCATION);
      const copy = this.tm.newBlock(SUPERBLOCK_BLOCK);
      this.tm.dec(SUPERBLOCK_LOCATION);
      const image = this.encodeSuperblock();
      image.copy(copy.data);
      // The copy is not a live pool: its space map roots are wiped.
      copy.data.fill(0, 64, 64 + 2 * SPACE_MAP_ROOT_SIZE);
      this.heldRoot = copy.location;
      this.tm.unlock(copy);
      this.tm.inc(this.root);
      this.tm.inc(this.detailsRoot);
    });
    this.commit('message');
  }

  /** Drops the metadata snapshot: its trees lose the references it held. */
  releaseMetadataSnap(): void {
    this.requireMessages();
    if (this.heldRoot === 0) throw new PoolError('no metadata snapshot is held');
    this.guard(() => {
      const held = this.heldRoot;
      this.heldRoot = 0;
      const copy = this.tm.read(held, SUPERBLOCK_BLOCK);
      const snap = decodeSuperblock(copy.data);
      this.tm.unlock(copy);
      this.mappingTree.del(snap.dataMappingRoot);
      this.detailsTree.del(snap.deviceDetailsRoot);
      this.tm.dec(held);
    });
    this.commit('message');
  }

  /**
   * Rolls origin `originId` back to its snapshot `snapId`, as lvm2 merges a thin snapshot: the
   * origin's tree is released (what only it held is freed), the snapshot's tree and details
   * (mapped_blocks, transaction, creation and snapshot times) take the origin's id, and the
   * snapshot's id is gone. The pool's time does not change. Commits, as a message does.
   */
  mergeSnapshot(snapId: number, originId: number): void {
    this.requireMessages();
    if (snapId === originId) throw new PoolError(`device ${snapId} cannot be merged into itself`);
    const snap = this.device(snapId);
    if (!snap) throw new PoolError(`snapshot device ${snapId} does not exist`);
    if (!this.device(originId)) throw new PoolError(`origin device ${originId} does not exist`);
    const value = Buffer.alloc(8);
    if (!this.topTree.lookup(this.root, [snapId], value)) throw new PoolError(`device ${snapId} has no mapping tree`);
    this.guard(() => {
      // Under the origin's id the snapshot's tree gains a reference (the origin's old tree loses
      // one, freeing what only it held); the snapshot's entry then drops the extra one.
      this.tm.inc(readBlockNr(value, 0));
      this.root = this.topTree.insert(this.root, [originId], value).root;
      this.root = this.topTree.remove(this.root, [snapId]);
      this.devices.set(originId, { ...snap, changed: true });
      this.devices.delete(snapId);
      if (this.detailsTree.lookup(this.detailsRoot, [snapId], this.scratch)) this.detailsRoot = this.detailsTree.remove(this.detailsRoot, [snapId]);
    });
    this.commit('message');
  }

  /** Grows the data device to `nrBlocks`, committing before and after as a pool reload does. */
  resizeData(nrBlocks: number): void {
    const old = this.dsm.nrBlocks;
    if (!Number.isSafeInteger(nrBlocks) || nrBlocks < old) throw new PoolError(`the data device cannot shrink (from ${old} to ${nrBlocks} blocks)`);
    if (nrBlocks > MAX_DATA_BLOCK + 1) throw new PoolError(`${nrBlocks} data blocks are beyond the 2^40 a mapping can address`);
    if (this.needsCheck) throw new PoolError('the data device cannot grow until the metadata is repaired (needs_check is set)', 'read-only');
    this.requireMessages();
    if (this.changed) this.commit('resize');
    if (nrBlocks === old) return;
    this.guard(() => this.dsm.extend(nrBlocks - old));
    this.commit('resize');
  }

  // ---- the IO path, in steps

  /** The mapping of `thinBlock` in device `devId`, or null if unmapped. Throws if there is no such device. */
  lookup(devId: number, thinBlock: U64): Mapping | null {
    const d = this.device(devId);
    if (!d) throw new PoolError(`device ${devId} does not exist`);
    const value = this.mappingValue;
    if (!this.mappingTree.lookup(this.root, this.keysOf(devId, thinBlock), value)) return null;
    const time = mappingTime(value, 0);
    return { dataBlock: mappingDataBlock(value, 0), time, shared: d.snapshottedTime > time };
  }

  private keysOf(devId: number, thinBlock: U64): [number, U64] {
    const keys = this.mappingKeys;
    keys[0] = devId;
    keys[1] = thinBlock;
    return keys;
  }

  /**
   * A data block for a write that needs one, as dm-thin's alloc_data_block: with no free block at
   * all the pool commits and runs out of data space; with only blocks freed in this transaction
   * it runs out without a commit. After allocating, a pool short of metadata commits before it
   * would eat into the reserve (and then turns read-only).
   */
  allocDataBlock(): number {
    if (this.mode !== 'write') throw this.modeError();
    if (this.dsm.nrFree === 0) {
      this.commit('no-data-space');
      if (this.dsm.nrFree === 0) {
        this.setMode('out-of-data-space', 'no free data block');
        throw new PoolError('out of data space', 'no-data-space');
      }
    }
    const b = this.guard(() => this.dsm.newBlock());
    if (b < 0) {
      this.setMode('out-of-data-space', 'the only free data blocks were freed in this transaction');
      throw new PoolError('out of data space (the only free blocks were freed in this transaction)', 'no-data-space');
    }
    if (this.freeMetadataBlocks === 0) this.commit('metadata-reserve');
    return b;
  }

  /** Why a write that needs a new block is refused in this mode. */
  modeError(): PoolError {
    switch (this.mode) {
      case 'out-of-data-space':
        return new PoolError('out of data space', 'no-data-space');
      case 'fail':
        return new PoolError('the pool has failed: all IO fails', 'read-only');
      case 'read-only':
        return new PoolError('the pool is read-only', 'read-only');
      default:
        return new PoolError(`the pool is ${this.mode}`, 'read-only');
    }
  }

  /** Maps `thinBlock` of `devId` to `dataBlock` (whose reference the caller holds) at the pool's time. */
  insertMapping(devId: number, thinBlock: U64, dataBlock: number): void {
    if (this.mode !== 'write' && this.mode !== 'out-of-data-space') throw this.modeError();
    const d = this.device(devId);
    if (!d) throw new PoolError(`device ${devId} does not exist`);
    const value = this.mappingValue;
    writeMapping(value, 0, dataBlock, this.time);
    let inserted: boolean;
    try {
      const r = this.mappingTree.insert(this.root, this.keysOf(devId, thinBlock), value);
      this.root = r.root;
      inserted = r.inserted;
    } catch (e) {
      return this.failed(e);
    }
    d.changed = true;
    if (inserted) d.mappedBlocks = u64Add(d.mappedBlocks, 1);
  }

  /** Calls `fn` with each mapping of thin blocks [begin, end) of `devId`, in order (what a discard locks). */
  mappingsInRange(devId: number, begin: U64, end: U64, fn: (m: RemovedMapping) => void): void {
    if (!this.device(devId)) throw new PoolError(`device ${devId} does not exist`);
    const value = Buffer.alloc(8);
    if (!this.topTree.lookup(this.root, [devId], value)) throw new PoolError(`device ${devId} has no mapping tree`);
    this.bottomTree.forEachInRange(readBlockNr(value, 0), begin, end, (thinBlock, values, offset) => {
      fn({ thinBlock, dataBlock: mappingDataBlock(values, offset), time: mappingTime(values, offset) });
    });
  }

  /**
   * Unmaps thin blocks [begin, end) of `devId`, as dm-thin's remove_range: each removed mapping's
   * data block loses the reference its leaf held. Returns what was removed, in order.
   */
  removeRange(devId: number, begin: U64, end: U64, onRemoved?: (m: RemovedMapping) => void): number {
    if (this.mode !== 'write' && this.mode !== 'out-of-data-space') throw this.modeError();
    const d = this.device(devId);
    if (!d) throw new PoolError(`device ${devId} does not exist`);
    const value = Buffer.alloc(8);
    if (!this.topTree.lookup(this.root, [devId], value)) throw new PoolError(`device ${devId} has no mapping tree`);
    const removed = this.guard(() => {
      let devRoot = readBlockNr(value, 0);
      // Out of the top level and back in, with a reference held so the tree survives the removal.
      this.tm.inc(devRoot);
      this.root = this.topTree.remove(this.root, [devId]);
      if (onRemoved) {
        this.bottomTree.forEachInRange(devRoot, begin, end, (thinBlock, values, offset) => {
          onRemoved({ thinBlock, dataBlock: mappingDataBlock(values, offset), time: mappingTime(values, offset) });
        });
      }
      const r = this.bottomTree.removeRange(devRoot, begin, end);
      devRoot = r.root;
      this.root = this.topTree.insert(this.root, [devId], u64Value(devRoot)).root;
      return r.removed;
    });
    d.mappedBlocks = u64Add(d.mappedBlocks, -removed);
    d.changed = true;
    return removed;
  }

  /** The data block's reference count (distinct live leaves holding it). */
  dataBlockCount(b: number): number {
    return this.dsm.count(b);
  }

  /** Closes the pool without committing (what is not committed is lost, as in a crash). */
  close(): void {
    this.bm.discardAll();
  }

  /** Metadata blocks in use by the locks of an unfinished operation: 0 between operations. */
  get lockedBlocks(): number {
    return this.bm.locked;
  }
}

function u64Value(v: number): Buffer {
  const buf = Buffer.alloc(8);
  writeU64(buf, 0, v);
  return buf;
}

