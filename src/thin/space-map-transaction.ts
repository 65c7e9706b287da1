// A pool's space maps and superblock opened for change through the transaction manager, for the
// tools that change metadata without running a pool: thin_check --auto-repair (counts set in
// place) and --clear-needs-check-flag (the superblock alone). The changes follow the kernel's
// commit: a changed space-map block is first copied to a block free now and at the last commit
// (never one the old metadata uses), everything is written and synced, and only then the
// superblock, patched where it changed, so a crash at any point leaves the previous metadata.
import { BlockWriter } from '../io/block-io.js';
import { BlockManager, BlockStore } from '../pdata/block-manager.js';
import { DataSpaceMap } from '../pdata/space-map/disk-in-place.js';
import { MetadataSpaceMap } from '../pdata/space-map/metadata-in-place.js';
import { encodeSpaceMapRoot } from '../pdata/space-map/root.js';
import { TransactionManager } from '../pdata/transaction-manager.js';
import {
  SUPERBLOCK_BLOCK, SUPERBLOCK_LOCATION, Superblock, dataSpaceMapRoot, decodeSuperblock, metadataSpaceMapRoot,
} from './superblock.js';

/** Byte offsets in the superblock: the flags and the two space-map roots. */
const FLAGS_OFFSET = 4;
const DATA_SM_ROOT_OFFSET = 64;
const METADATA_SM_ROOT_OFFSET = 192;
/** The kernel's struct disk_sm_root: only these bytes of each 128-byte root area are used. */
const SM_ROOT_USED = 32;

export interface SpaceMapTransactionOptions {
  /** Metadata blocks never to hand out for copies, whatever their count (see MetadataSpaceMap.open). */
  protect?: (block: number) => boolean;
}

export class SpaceMapTransaction {
  readonly superblock: Superblock;
  readonly metadata: MetadataSpaceMap;
  readonly data: DataSpaceMap;
  private readonly bm: BlockManager;
  private readonly tm: TransactionManager;
  private readonly raw: Buffer;
  private open = true;
  private readonly owned: BlockWriter | null;

  /**
   * Opens the metadata at `source`: a path (a block device opened exclusively, so never under a
   * live pool) or a store the caller opened and closes (the tests' crashing one).
   */
  constructor(source: string | BlockStore, opts: SpaceMapTransactionOptions = {}) {
    const store = typeof source === 'string' ? new BlockWriter(source) : source;
    this.owned = typeof source === 'string' ? (store as BlockWriter) : null;
    try {
      this.bm = new BlockManager(store);
      this.tm = new TransactionManager(this.bm);
      this.raw = this.bm.readUncached(SUPERBLOCK_LOCATION, SUPERBLOCK_BLOCK);
      this.superblock = decodeSuperblock(this.raw);
      const msm = metadataSpaceMapRoot(this.superblock);
      if (msm.nrBlocks > store.nrBlocks) {
        throw new Error(`${store.path}: the metadata space map covers ${msm.nrBlocks} blocks but the device holds ${store.nrBlocks}`);
      }
      this.metadata = MetadataSpaceMap.open(this.tm, msm, opts.protect);
      this.data = DataSpaceMap.open(this.tm, dataSpaceMapRoot(this.superblock));
    } catch (e) {
      this.owned?.close();
      throw e;
    }
  }

  /** Metadata blocks written so far (the superblock included once committed). */
  get blocksWritten(): number {
    return this.bm.writes;
  }

  /**
   * Commits: the space maps write their own changes, every changed block is written and synced,
   * then the superblock with the new space-map roots and `flags`. Every other byte of the
   * superblock stays as it was. Closes the device.
   */
  commit(flags = this.superblock.flags): void {
    this.data.commit();
    this.tm.preCommit();
    const sb = Buffer.from(this.raw);
    sb.writeUInt32LE(flags >>> 0, FLAGS_OFFSET);
    encodeSpaceMapRoot(this.data.root()).copy(sb, DATA_SM_ROOT_OFFSET, 0, SM_ROOT_USED);
    encodeSpaceMapRoot(this.metadata.root()).copy(sb, METADATA_SM_ROOT_OFFSET, 0, SM_ROOT_USED);
    this.tm.commit(SUPERBLOCK_LOCATION, sb, SUPERBLOCK_BLOCK);
    this.close();
  }

  /**
   * Closes the device. Without a commit the transaction is dropped: blocks it wrote early were
   * free in the committed metadata, which stays exactly as it was.
   */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.bm.discardAll();
    this.owned?.close();
  }
}
