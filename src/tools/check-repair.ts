// thin_check --auto-repair: when the trees are sound and only the space maps disagree with them
// (leaked blocks, counts too high or too low, wrong totals), both space maps are rewritten from
// the references the trees hold.
//
// It is a commit like the kernel's: the new space-map blocks go only to blocks that neither the
// old metadata (its trees and its space maps) nor the new one uses, they are synced, and only then
// does the superblock switch to them. A crash at any point before that leaves the previous
// metadata, consistent but leaky, exactly as it was.
//
// The 1.x tools fix leaks only, in place; 0.9.0 fixes metadata leaks only. Rewriting fixes every
// count the trees can vouch for, so a pool that would be refused for a wrong count can activate.
import { BLOCK_SIZE, BlockReader, BlockWriter, InputError } from '../io/block-io.js';
import { MetadataAllocator } from '../pdata/block-allocator.js';
import { BTreeError } from '../pdata/btree/walk.js';
import { SUPERBLOCK_CSUM_XOR, sealBlock } from '../pdata/checksum.js';
import { U64 } from '../pdata/le.js';
import { RefCounts } from '../pdata/ref-counts.js';
import { SpaceMapError, SpaceMapSink } from '../pdata/space-map/common.js';
import { openDiskSpaceMap } from '../pdata/space-map/disk.js';
import { writeDataSpaceMap } from '../pdata/space-map/disk-write.js';
import { openMetadataSpaceMap, sharedMetadataBlocks } from '../pdata/space-map/metadata.js';
import { writeMetadataSpaceMap } from '../pdata/space-map/metadata-write.js';
import { SpaceMapRoot, encodeSpaceMapRoot, spaceMapSize } from '../pdata/space-map/root.js';
import { readDeviceDetails, readDeviceRoots } from '../thin/mapping-tree.js';
import { PoolWalker, deviceListDefects } from '../thin/pool-walk.js';
import {
  NEEDS_CHECK_FLAG, SUPERBLOCK_LOCATION, Superblock, SuperblockError, dataSpaceMapRoot, metadataSpaceMapRoot,
  readSuperblock,
} from '../thin/superblock.js';
import { CheckResult, checkMetadata } from './check.js';

/** Why the space maps were not rewritten; nothing was written. */
export class RepairRefusedError extends InputError {}

export interface RepairResult {
  /** Metadata blocks the new space maps occupy (all of them written to previously free blocks). */
  blocksWritten: number;
  metadataAllocated: { before: U64; after: U64 };
  dataAllocated: { before: U64; after: U64 };
  clearedNeedsCheck: boolean;
  /** The check run again on the repaired metadata. */
  recheck: CheckResult;
}

/** Byte offsets of the two space-map roots and of the flags in the superblock. */
const FLAGS_OFFSET = 4;
const DATA_SM_ROOT_OFFSET = 64;
const METADATA_SM_ROOT_OFFSET = 192;
/** The kernel's struct disk_sm_root: only these bytes of each 128-byte root area are used. */
const SM_ROOT_USED = 32;

const refuse = (reason: string): never => {
  throw new RepairRefusedError(reason);
};

/**
 * Rewrites the space maps of the metadata at `path` from the references its trees hold, and
 * clears NEEDS_CHECK in the same superblock write. Refuses (RepairRefusedError, nothing written)
 * unless the superblock, every tree of the live metadata and of a held snapshot, and the old space
 * maps' own structure read cleanly and agree with each other.
 */
export function repairSpaceMaps(path: string): RepairResult {
  const io = new BlockReader(path);
  let plan: Plan;
  try {
    plan = planRepair(io);
  } finally {
    io.close();
  }
  const result = commit(path, plan);
  const again = new BlockReader(path);
  try {
    return { ...result, recheck: checkMetadata(again) };
  } finally {
    again.close();
  }
}

interface Plan {
  superblock: Superblock;
  msm: SpaceMapRoot;
  dsm: SpaceMapRoot;
  /** Metadata blocks the space map describes (sound: the check passed the superblock). */
  nrMetadataBlocks: number;
  /** References to each metadata block from the superblock, the held snapshot and the trees. */
  metadataRefs: RefCounts;
  dataRefs: RefCounts;
  /** Blocks the new space maps must not use: referenced, counted or occupied in the old metadata. */
  taken: Uint8Array;
}

function planRepair(io: BlockReader): Plan {
  if (checkMetadata(io, { superBlockOnly: true }).fatalErrors > 0) refuse('the superblock is damaged');
  const sb = readSuperblock(io);
  const msm = metadataSpaceMapRoot(sb);
  const dsm = dataSpaceMapRoot(sb);
  const nrMetadataBlocks = spaceMapSize(msm);
  const refs = new TreeReferences(io, nrMetadataBlocks, spaceMapSize(dsm), sharedMetadataBlocks(io, msm));
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
  return {
    superblock: sb, msm, dsm, nrMetadataBlocks, metadataRefs: refs.metadata, dataRefs: refs.data,
    taken: oldSpaceMapBlocks(io, msm, dsm, nrMetadataBlocks, refs.metadata),
  };
}

/** Reference counts from the checker's pool walk, refusing at the first sign of damage. */
class TreeReferences {
  readonly metadata = new RefCounts();
  readonly data = new RefCounts();
  private readonly walker: PoolWalker;

  constructor(
    private readonly io: BlockReader,
    private readonly nrMetadataBlocks: number,
    private readonly nrDataBlocks: number,
    shared: (block: number) => boolean,
  ) {
    this.walker = new PoolWalker(io, nrDataBlocks, {
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
        refuse(`${where}: thin device ${devId} maps thin block ${thinBlock} to data block ${dataBlock}, beyond the data device (${this.nrDataBlocks} blocks)`),
    });
    // The whole device lists (the walk above skipped leaves shared with earlier trees).
    const details = new Map(readDeviceDetails(this.io, sb.deviceDetailsRoot, damaged('the device details tree')).map((d) => [d.devId, d]));
    const roots = readDeviceRoots(this.io, sb.dataMappingRoot, damaged("the mapping tree's top level"));
    const defects = deviceListDefects(details, roots, this.walker, new Set());
    if (defects.length > 0) refuse(`${where}: ${defects[0]}`);
  }
}

/**
 * Marks the blocks the new space maps may not take: every block the trees reference, every block
 * the old space maps occupy, and every block the old metadata space map counts (leaks included:
 * the old metadata stays exactly as it was until the superblock switches).
 */
function oldSpaceMapBlocks(io: BlockReader, msm: SpaceMapRoot, dsm: SpaceMapRoot, nrBlocks: number, metadataRefs: RefCounts): Uint8Array {
  const taken = new Uint8Array(nrBlocks);
  for (let b = 0; b < nrBlocks; b++) if (metadataRefs.get(b) !== 0) taken[b] = 1;
  const sink = (what: string): SpaceMapSink => ({
    nodeRef: (b) => {
      if (b < nrBlocks) taken[b] = 1;
    },
    error: (err: SpaceMapError | BTreeError) => refuse(`the ${what} is damaged: ${err.message}; run thin_repair`),
  });
  try {
    const metadataSm = openMetadataSpaceMap(io, msm, sink('metadata space map'));
    metadataSm.visitOverflowTree(sink('metadata space map'));
    metadataSm.forEachBitmap(sink('metadata space map'), (first, counts) => {
      for (let i = 0; i < counts.length; i++) if (counts[i] !== 0) taken[first + i] = 1;
    });
    const dataSm = openDiskSpaceMap(io, dsm, sink('data space map'));
    dataSm.visitOverflowTree(sink('data space map'));
    for (const e of [...metadataSm.index, ...dataSm.index]) if (e.blocknr < nrBlocks) taken[e.blocknr] = 1;
  } catch (e) {
    if (e instanceof SpaceMapError) refuse(`the metadata space map is damaged: ${e.message}; run thin_repair`);
    throw e;
  }
  return taken;
}

/**
 * Hands out only the blocks that are free in both the old and the new metadata, lowest first, and
 * writes nowhere else. Each new block is written when the next is handed out (the writers fill a
 * block before asking for another), so memory stays at one block.
 */
class FreeBlockAllocator implements MetadataAllocator {
  readonly used: number;
  /** Blocks handed out, in order: the only blocks `writeAt` accepts. */
  readonly handedOut = new Set<number>();
  private next = 1;
  private pending = -1;
  private readonly buf = Buffer.alloc(BLOCK_SIZE);

  /** `refCounts`: the trees' references, which the new space maps' own blocks are added to. */
  constructor(private readonly out: BlockWriter, readonly nrBlocks: number, private readonly taken: Uint8Array, readonly refCounts: RefCounts) {
    this.used = nrBlocks;
  }

  alloc(): number {
    this.flush();
    const limit = Math.min(this.nrBlocks, this.out.nrBlocks);
    while (this.next < limit && this.taken[this.next]) this.next++;
    if (this.next >= limit) {
      refuse(`not enough free metadata blocks to write new space maps beside the old ones (${this.handedOut.size} found)`);
    }
    const block = this.next++;
    this.handedOut.add(block);
    return block;
  }

  newBlock(): { block: number; buf: Buffer } {
    const block = this.alloc();
    this.buf.fill(0);
    this.pending = block;
    return { block, buf: this.buf };
  }

  writeAt(block: number, data: Buffer): void {
    if (!this.handedOut.has(block)) throw new Error(`auto-repair: refusing to write block ${block}, which it did not allocate`);
    this.out.write(block, data.subarray(0, BLOCK_SIZE));
  }

  read(block: number): Buffer | null {
    if (!this.handedOut.has(block)) return null;
    if (block === this.pending) return Buffer.from(this.buf);
    return this.out.readInto(block, Buffer.alloc(BLOCK_SIZE));
  }

  /** Writes the block last handed out by `newBlock`. */
  flush(): void {
    if (this.pending < 0) return;
    this.out.write(this.pending, this.buf);
    this.pending = -1;
  }
}

function commit(path: string, plan: Plan): Omit<RepairResult, 'recheck'> {
  const out = new BlockWriter(path);
  try {
    const alloc = new FreeBlockAllocator(out, plan.nrMetadataBlocks, plan.taken, plan.metadataRefs);
    let dataRoot: SpaceMapRoot;
    let metadataRoot: SpaceMapRoot;
    try {
      // The data space map first: its blocks are metadata the metadata space map must count.
      dataRoot = writeDataSpaceMap(alloc, plan.dataRefs, spaceMapSize(plan.dsm));
      metadataRoot = writeMetadataSpaceMap(alloc);
      alloc.flush();
    } catch (e) {
      // Only free blocks were written: the old metadata is untouched.
      if (e instanceof RepairRefusedError) throw e;
      throw new RepairRefusedError(`writing the new space maps failed (${(e as Error).message}); the metadata is unchanged`);
    }
    out.sync();

    const sb = Buffer.alloc(BLOCK_SIZE);
    out.readInto(SUPERBLOCK_LOCATION, sb);
    encodeSpaceMapRoot(dataRoot).copy(sb, DATA_SM_ROOT_OFFSET, 0, SM_ROOT_USED);
    encodeSpaceMapRoot(metadataRoot).copy(sb, METADATA_SM_ROOT_OFFSET, 0, SM_ROOT_USED);
    const flags = sb.readUInt32LE(FLAGS_OFFSET);
    sb.writeUInt32LE((flags & ~NEEDS_CHECK_FLAG) >>> 0, FLAGS_OFFSET);
    sealBlock(sb, SUPERBLOCK_CSUM_XOR);
    out.write(SUPERBLOCK_LOCATION, sb);
    out.sync();
    return {
      blocksWritten: alloc.handedOut.size,
      metadataAllocated: { before: plan.msm.nrAllocated, after: metadataRoot.nrAllocated },
      dataAllocated: { before: plan.dsm.nrAllocated, after: dataRoot.nrAllocated },
      clearedNeedsCheck: (flags & NEEDS_CHECK_FLAG) !== 0,
    };
  } finally {
    out.close();
  }
}
