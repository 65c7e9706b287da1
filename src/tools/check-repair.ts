// thin_check --auto-repair: when the trees are sound and only the space maps disagree with them
// (leaked blocks, counts too high or too low, wrong totals), every count is set to what the trees
// (and the space maps' own blocks) vouch for.
//
// The counts are set in place through the transactional layer (thin/space-map-transaction.ts),
// as the kernel changes them: each changed bitmap, index or ref-count node is first copied to a
// block free now and at the last commit, which no block the old metadata references can be (they
// are protected whatever their count says, so a count that is too low cannot lead to a live block
// being overwritten); everything is written and synced, and only then does the superblock switch.
// A crash at any point before that leaves the previous metadata, consistent but leaky, as it was.
// The copies need only a few free blocks (one per changed bitmap, plus the paths to the changed
// index and ref-count entries), so a pool that ran out of metadata space can still be repaired.
//
// The 1.x tools fix leaks only, in place; 0.9.0 fixes metadata leaks only. Setting every count
// the trees can vouch for fixes counts that are too low as well, so a pool that would be refused
// for a wrong count can activate.
import { BlockReader, InputError } from '../io/block-io.js';
import { BlockStore } from '../pdata/block-manager.js';
import { BTreeError } from '../pdata/btree/walk.js';
import { U64 } from '../pdata/le.js';
import { RefCounts } from '../pdata/ref-counts.js';
import { SpaceMapError, SpaceMapReader, SpaceMapSink } from '../pdata/space-map/common.js';
import { openDiskSpaceMap } from '../pdata/space-map/disk.js';
import { openMetadataSpaceMap, sharedMetadataBlocks } from '../pdata/space-map/metadata.js';
import { SpaceMapRoot, spaceMapSize } from '../pdata/space-map/root.js';
import { NoSpaceError } from '../pdata/transaction-manager.js';
import { readDeviceDetails, readDeviceRoots } from '../thin/mapping-tree.js';
import { PoolLimits, PoolWalker, deviceListDefects } from '../thin/pool-walk.js';
import { SpaceMapTransaction } from '../thin/space-map-transaction.js';
import {
  NEEDS_CHECK_FLAG, SUPERBLOCK_LOCATION, Superblock, SuperblockError, dataSpaceMapRoot, metadataSpaceMapRoot,
  readSuperblock,
} from '../thin/superblock.js';
import { CheckResult, checkMetadata } from './check.js';

/** Why the space maps were not repaired; the committed metadata is unchanged. */
export class RepairRefusedError extends InputError {}

export interface RepairResult {
  /** Counts set right: metadata blocks, data blocks. */
  countsChanged: { metadata: number; data: number };
  /** Metadata blocks written: the copies of the changed space-map blocks, and the superblock. */
  blocksWritten: number;
  metadataAllocated: { before: U64; after: U64 };
  dataAllocated: { before: U64; after: U64 };
  clearedNeedsCheck: boolean;
  /** The check run again on the repaired metadata. */
  recheck: CheckResult;
}

const refuse = (reason: string): never => {
  throw new RepairRefusedError(reason);
};

/**
 * Sets every count of both space maps of the metadata at `path` to the references the trees and
 * the space maps' own blocks hold, and clears NEEDS_CHECK, in one commit. Refuses
 * (RepairRefusedError, the committed metadata unchanged) unless the superblock, every tree of the
 * live metadata and of a held snapshot, and the space maps' own structure read cleanly and agree
 * with each other, or when there are not enough free metadata blocks for the copies. `store`:
 * the device to write through, if not `path` opened for writing (the tests' crashing store).
 */
export function repairSpaceMaps(path: string, store?: BlockStore): RepairResult {
  const io = new BlockReader(path);
  let plan: Plan;
  try {
    plan = planRepair(io);
  } finally {
    io.close();
  }
  const result = commit(store ?? path, plan);
  const again = new BlockReader(path);
  try {
    return { ...result, recheck: checkMetadata(again) };
  } finally {
    again.close();
  }
}

/** A count to set: `from` is what the space map says (-1: 3+ in its bitmap, no ref-count entry). */
interface CountChange {
  block: number;
  from: number;
  to: number;
}

interface SpaceMapPlan {
  changes: CountChange[];
  /** Ref-count tree entries of blocks whose bitmap does not say 3+. */
  strays: number[];
  /** Blocks counted free that nothing references: where copies may go. */
  free: number;
}

interface Plan {
  superblock: Superblock;
  msm: SpaceMapRoot;
  dsm: SpaceMapRoot;
  /** References to each metadata block: the superblock, the held snapshot, the trees, the space maps' own blocks. */
  metadataRefs: RefCounts;
  metadata: SpaceMapPlan;
  data: SpaceMapPlan;
}

function planRepair(io: BlockReader): Plan {
  if (checkMetadata(io, { superBlockOnly: true }).fatalErrors > 0) refuse('the superblock is damaged');
  const sb = readSuperblock(io);
  const msm = metadataSpaceMapRoot(sb);
  const dsm = dataSpaceMapRoot(sb);
  const refs = new TreeReferences(io, spaceMapSize(msm), { nrDataBlocks: spaceMapSize(dsm), time: sb.time }, sharedMetadataBlocks(io, msm));
  refs.ref(SUPERBLOCK_LOCATION);
  refs.walkPool(sb, 'the live metadata');
  if (sb.heldRoot !== 0) {
    refs.ref(sb.heldRoot);
    let snap: Superblock;
    try {
      snap = readSuperblock(io, sb.heldRoot);
    } catch (e) {
      if (!(e instanceof SuperblockError)) throw e;
      return refuse(`the metadata snapshot's superblock (block ${sb.heldRoot}) is damaged: ${e.message}`);
    }
    refs.walkPool(snap, `the metadata snapshot (block ${sb.heldRoot})`);
  }

  // The space maps' own blocks: each referenced once, by an index, a root or a ref-count node.
  const damaged = (what: string, count: boolean): SpaceMapSink => ({
    nodeRef: count ? (b) => refs.ref(b) : undefined,
    error: (err: SpaceMapError | BTreeError) => refuse(`the ${what} is damaged: ${err.message}; run thin_repair`),
  });
  let metadataSm: SpaceMapReader;
  let dataSm: SpaceMapReader;
  try {
    metadataSm = openMetadataSpaceMap(io, msm, damaged('metadata space map', true));
    metadataSm.visitOverflowTree(damaged('metadata space map', true));
    dataSm = openDiskSpaceMap(io, dsm, damaged('data space map', true));
    dataSm.visitOverflowTree(damaged('data space map', true));
  } catch (e) {
    if (e instanceof SpaceMapError) return refuse(`the metadata space map is damaged: ${e.message}; run thin_repair`);
    throw e;
  }
  for (const e of [...metadataSm.index, ...dataSm.index]) refs.ref(e.blocknr);

  return {
    superblock: sb, msm, dsm, metadataRefs: refs.metadata,
    metadata: differences(metadataSm, refs.metadata, damaged('metadata space map', false)),
    data: differences(dataSm, refs.data, damaged('data space map', false)),
  };
}

/** Where a space map's counts differ from the references (its bitmaps and ref-count tree read side by side). */
function differences(sm: SpaceMapReader, refs: RefCounts, sink: SpaceMapSink): SpaceMapPlan {
  const changes: CountChange[] = [];
  let free = 0;
  const overflow = sm.overflowEntries(sink);
  // Ref-count entries of blocks whose bitmap entry is not 3.
  const strays: number[] = [];
  const passOverflowBefore = (block: number): void => {
    for (; overflow.block < block; overflow.next()) strays.push(overflow.block);
  };
  sm.forEachBitmap(sink, (first, counts) => {
    for (let i = 0; i < counts.length; i++) {
      const block = first + i;
      let from = counts[i];
      if (from === 3) {
        passOverflowBefore(block);
        if (overflow.block !== block) from = -1;
        else {
          from = overflow.count;
          overflow.next();
        }
      }
      const to = refs.get(block);
      if (from !== to) changes.push({ block, from, to });
      else if (to === 0) free++;
    }
  });
  passOverflowBefore(Infinity);
  return { changes, strays, free };
}

/** Reference counts from the checker's pool walk, refusing at the first sign of damage. */
class TreeReferences {
  readonly metadata = new RefCounts();
  readonly data = new RefCounts();
  private readonly walker: PoolWalker;

  constructor(
    private readonly io: BlockReader,
    private readonly nrMetadataBlocks: number,
    private readonly limits: PoolLimits,
    shared: (block: number) => boolean,
  ) {
    this.walker = new PoolWalker(io, limits, {
      metadataRef: (b) => this.ref(b),
      dataRefs: (first, n) => this.data.incRange(first, n),
    }, shared);
  }

  ref(block: number): void {
    if (block >= this.nrMetadataBlocks) {
      refuse(`metadata block ${block} is referenced but lies outside the metadata space map (${this.nrMetadataBlocks} blocks)`);
    }
    this.metadata.inc(block);
  }

  /**
   * Counts the references one superblock's trees make (nodes shared with trees walked before
   * count as referenced but are not walked again), then checks the details tree and the mapping
   * tree describe the same devices with the right mapped_blocks.
   */
  walkPool(sb: Superblock, where: string): void {
    const damaged = (tree: string) => (err: BTreeError): never => refuse(`${where}: ${tree} is damaged: ${err.message}; run thin_repair`);
    this.walker.walkPool(sb.dataMappingRoot, sb.deviceDetailsRoot, {
      detailsDamage: damaged('the device details tree'),
      topLevelDamage: damaged("the mapping tree's top level"),
      deviceDamage: (devId, err) => damaged(`thin device ${devId}'s mapping tree`)(err),
      beyondDataDevice: (devId, thinBlock, dataBlock) =>
        refuse(`${where}: thin device ${devId} maps thin block ${thinBlock} to data block ${dataBlock}, beyond the data device (${this.limits.nrDataBlocks} blocks)`),
      newerThanPool: (devId, thinBlock, time) =>
        refuse(`${where}: thin device ${devId} maps thin block ${thinBlock} at time ${time}, later than the pool's time ${this.limits.time}`),
    });
    // The whole device lists (the walk above skipped leaves shared with earlier trees).
    const details = new Map(readDeviceDetails(this.io, sb.deviceDetailsRoot, damaged('the device details tree')).map((d) => [d.devId, d]));
    const roots = readDeviceRoots(this.io, sb.dataMappingRoot, damaged("the mapping tree's top level"));
    const defects = deviceListDefects(details, roots, this.walker, new Set());
    if (defects.length > 0) refuse(`${where}: ${defects[0]}`);
  }
}

function commit(source: string | BlockStore, plan: Plan): Omit<RepairResult, 'recheck'> {
  const tx = new SpaceMapTransaction(source, { protect: (b) => plan.metadataRefs.get(b) !== 0 });
  try {
    // The totals and index entries first: the changes below keep them up to date from there.
    tx.metadata.recount();
    tx.data.recount();
    for (const b of plan.metadata.strays) tx.metadata.dropRefCount(b);
    // A count the space map cannot tell is set outright, before anything else moves it; the
    // others move by the difference, since copying a space-map block moves its count too.
    for (const c of plan.metadata.changes) if (c.from < 0) tx.metadata.set(c.block, c.to);
    for (const c of plan.metadata.changes) if (c.from >= 0) tx.metadata.adjust(c.block, c.to - c.from);
    for (const b of plan.data.strays) tx.data.dropRefCount(b);
    for (const c of plan.data.changes) tx.data.set(c.block, c.to);
    const flags = plan.superblock.flags;
    tx.commit(flags & ~NEEDS_CHECK_FLAG);
    return {
      countsChanged: { metadata: plan.metadata.changes.length, data: plan.data.changes.length },
      blocksWritten: tx.blocksWritten,
      metadataAllocated: { before: plan.msm.nrAllocated, after: tx.metadata.root().nrAllocated },
      dataAllocated: { before: plan.dsm.nrAllocated, after: tx.data.root().nrAllocated },
      clearedNeedsCheck: (flags & NEEDS_CHECK_FLAG) !== 0,
    };
  } catch (e) {
    if (e instanceof NoSpaceError) {
      refuse(`not enough free metadata blocks for copies of the space-map blocks that change (${plan.metadata.free} found)`);
    }
    throw e;
  } finally {
    tx.close();
  }
}
