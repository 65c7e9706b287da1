// A MetadataVisitor that writes a whole pool: each device's mapping tree is built while its runs
// stream in, then the details and top-level trees, both space maps, and the superblock last.
//
// Crash safety: block 0 is zeroed (and synced) before anything else is written, and the new
// superblock is written only after every other block is on disk, so an interrupted write never
// leaves something that looks like valid metadata.
//
// Memory: a builder holds a few nodes per tree level; per data block a reference count of 2 to 8
// bits (RefCounts).
import { BLOCK_SIZE, BlockWriter, InputError } from '../io/block-io.js';
import { BTreeBuilder, BuilderOptions, NodeSummary, RunValues } from '../pdata/btree/builder.js';
import { NODE_HEADER_SIZE, maxEntriesFor } from '../pdata/btree/node.js';
import { BlockAllocator, OutputTooSmallError } from '../pdata/block-allocator.js';
import { RefCounts } from '../pdata/ref-counts.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map/metadata.js';
import { U64, readBlockNr, u64Add, writeU64 } from '../pdata/le.js';
import { ENTRIES_PER_BITMAP, INDEX_ENTRY_SIZE, bitmapsFor } from '../pdata/space-map/common.js';
import { writeDataSpaceMap } from '../pdata/space-map/disk-write.js';
import { metadataSpaceMapBlocks, writeMetadataSpaceMap } from '../pdata/space-map/metadata-write.js';
import { encodeSpaceMapRoot } from '../pdata/space-map/root.js';
import { DEVICE_DETAILS_SIZE, DeviceDetails, encodeDeviceDetails } from './device-details.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from './events.js';
import { MAPPING_VALUE_SIZE, TOP_LEVEL_VALUE_SIZE } from './mapping-tree.js';
import { forEachDataRun, mappingDataBlock, writeMapping, writeMappingRunWords } from './mapping.js';
import { SUPERBLOCK_LOCATION, SUPERBLOCK_MAGIC, encodeSuperblock } from './superblock.js';

/** Sectors per metadata block, as the superblock records it. */
const METADATA_BLOCK_SECTORS = BLOCK_SIZE / 512;
const UUID_SIZE = 16;

/** The event stream is not one the writer can turn into metadata (e.g. events out of place). */
export class WriteMetadataError extends Error {}

interface WrittenDevice {
  devId: number;
  details: DeviceDetails;
  root: number;
}

export interface WriteMetadataOptions {
  /** Called after each device is written, with the number of devices so far. */
  onDevice?: (count: number) => void;
}

export class MetadataWriter implements MetadataVisitor {
  private readonly alloc: BlockAllocator;
  private pool: PoolInfo | undefined;
  private dataCounts: RefCounts | undefined;
  private readonly devices: WrittenDevice[] = [];
  private readonly defs = new Map<string, NodeSummary[]>();
  private device: DeviceInfo | undefined;
  private defName: string | undefined;
  private builder: BTreeBuilder | undefined;
  /** Nothing pushed to the builder yet. */
  private builderEmpty = true;
  /**
   * A device's first ref, held back: a device that turns out to be just that def (a snapshot no
   * one wrote to since) shares one whole tree, root included, with the others that are.
   */
  private heldRef: string | undefined;
  /** The tree built for each def that a device was nothing but. */
  private readonly defRoots = new Map<string, number>();
  private readonly mapping = Buffer.alloc(MAPPING_VALUE_SIZE);
  /** The run being pushed, as the builder's fast path asks for its values. */
  private readonly run = new MappingRun();
  /**
   * Every mapping builder's options, made once: the same functions at each call site keep V8's
   * optimised code valid from one device to the next (a new closure per device deoptimises it).
   */
  private readonly mappingOptions: BuilderOptions = {
    valueSize: MAPPING_VALUE_SIZE,
    refValues: (values, n) => forEachDataRun(values, n, this.incDataRange),
    unrefValues: (values, n) => forEachDataRun(values, n, this.decDataRange),
  };
  private readonly incDataRange = (first: number, n: number): void => this.dataCounts!.incRange(first, n);
  private readonly decDataRange = (first: number, n: number): void => this.dataCounts!.decRange(first, n);
  private finished = false;

  constructor(
    private readonly out: BlockWriter,
    private readonly opts: WriteMetadataOptions = {},
  ) {
    this.alloc = new BlockAllocator(out);
  }

  /** True once the superblock has been written. */
  get complete(): boolean {
    return this.finished;
  }

  superblockBegin(pool: PoolInfo): void {
    if (this.pool) throw new WriteMetadataError('a second superblock');
    // Before anything is written, and before building a data space map too big to fit.
    checkDataSpaceMapFits(pool.nrDataBlocks, this.out);
    this.pool = pool;
    this.dataCounts = new RefCounts();
    // Whatever was on the output stops looking like metadata before any other block changes.
    // (An empty output gets no write: the size error comes once the input has been measured.)
    if (this.out.nrBlocks > 0) {
      this.out.write(SUPERBLOCK_LOCATION, Buffer.alloc(BLOCK_SIZE));
      this.out.sync();
    }
  }

  deviceBegin(dev: DeviceInfo): void {
    this.startMappings(`device ${dev.devId}`);
    this.device = dev;
    this.builder = this.mappingBuilder(false);
    this.builderEmpty = true;
  }

  deviceEnd(): void {
    const dev = this.device;
    if (!dev || !this.builder) throw new WriteMetadataError('end of a device that was not begun');
    const root = this.heldRef === undefined ? this.builder.complete() : this.wholeDefRoot(this.heldRef);
    this.heldRef = undefined;
    this.devices.push({
      devId: dev.devId,
      details: {
        mappedBlocks: dev.mappedBlocks,
        transactionId: dev.transaction,
        creationTime: dev.creationTime,
        snapshottedTime: dev.snapTime,
      },
      root,
    });
    this.device = undefined;
    this.builder = undefined;
    this.opts.onDevice?.(this.devices.length);
  }

  defBegin(name: string): void {
    this.startMappings(`def ${name}`);
    if (this.defs.has(name)) throw new WriteMetadataError(`def ${name} defined twice`);
    this.defName = name;
    this.builder = this.mappingBuilder(true);
    this.builderEmpty = true;
  }

  defEnd(): void {
    if (this.defName === undefined || !this.builder) throw new WriteMetadataError('end of a def that was not begun');
    this.defs.set(this.defName, this.builder.completeLeaves());
    this.defName = undefined;
    this.builder = undefined;
  }

  ref(name: string): void {
    const leaves = this.defs.get(name);
    if (!leaves) throw new WriteMetadataError(`ref to unknown def ${name}`);
    if (!this.builder) throw new WriteMetadataError(`ref ${name} outside a device or def`);
    if (this.device && this.builderEmpty && this.heldRef === undefined) {
      this.heldRef = name;
      return;
    }
    this.releaseHeldRef();
    this.builder.pushLeaves(leaves);
    this.builderEmpty = false;
  }

  mapRun(thinBegin: U64, dataBegin: number, length: number, time: number): void {
    const builder = this.builder;
    if (!builder) throw new WriteMetadataError('mappings outside a device or def');
    this.releaseHeldRef();
    this.builderEmpty = false;
    if (dataBegin + length > this.pool!.nrDataBlocks) this.beyondPool(dataBegin + length - 1);
    if (typeof thinBegin === 'number' && Number.isSafeInteger(thinBegin + length)) {
      this.run.dataBegin = dataBegin;
      this.run.time = time;
      builder.pushRun(thinBegin, length, this.run);
    } else {
      this.pushExact(builder, thinBegin, dataBegin, length, time);
    }
  }

  // The rare cases of mapRun apart, so that it stays small enough for V8 to inline.
  private beyondPool(dataBlock: number): never {
    throw new WriteMetadataError(
      `data block ${dataBlock} is beyond the end of the pool (nr_data_blocks ${this.pool!.nrDataBlocks})`,
    );
  }

  /** Thin blocks at or past 2^53: exact u64 keys, one at a time. */
  private pushExact(builder: BTreeBuilder, thinBegin: U64, dataBegin: number, length: number, time: number): void {
    const value = this.mapping;
    for (let i = 0; i < length; i++) {
      writeMapping(value, 0, dataBegin + i, time);
      builder.push(u64Add(thinBegin, i), value);
    }
  }

  superblockEnd(): void {
    const pool = this.pool;
    if (!pool || this.builder) throw new WriteMetadataError('end of the superblock inside a device or def');
    const alloc = this.alloc;

    this.devices.sort((a, b) => a.devId - b.devId);
    const details = new BTreeBuilder(alloc, { valueSize: DEVICE_DETAILS_SIZE });
    const detailsValue = Buffer.alloc(DEVICE_DETAILS_SIZE);
    const topLevel = new BTreeBuilder(alloc, {
      valueSize: TOP_LEVEL_VALUE_SIZE,
      refValues: (values, n) => {
        for (let i = 0; i < n; i++) alloc.refCounts.inc(readBlockNr(values, i * TOP_LEVEL_VALUE_SIZE));
      },
    });
    const rootValue = Buffer.alloc(TOP_LEVEL_VALUE_SIZE);
    for (const dev of this.devices) {
      encodeDeviceDetails(detailsValue, 0, dev.details);
      details.push(dev.devId, detailsValue);
      writeU64(rootValue, 0, dev.root);
      topLevel.push(dev.devId, rootValue);
    }
    const detailsRoot = details.complete();
    const mappingRoot = topLevel.complete();
    alloc.refCounts.inc(detailsRoot);
    alloc.refCounts.inc(mappingRoot);
    this.releaseUnusedDefLeaves();
    // The trees, nearly all of the metadata, start for the disk while the space maps are worked out.
    alloc.flush();
    this.out.startSync();

    const dataRoot = writeDataSpaceMap(alloc, this.dataCounts!, Number(pool.nrDataBlocks));
    const metadataRoot = writeMetadataSpaceMap(alloc);
    if (alloc.overflowed) throw this.tooSmall();
    alloc.flush();
    this.out.sync();

    const uuid = Buffer.alloc(UUID_SIZE);
    uuid.write(pool.uuid, 0, UUID_SIZE, 'utf8');
    const sb = encodeSuperblock({
      flags: pool.flags,
      blocknr: SUPERBLOCK_LOCATION,
      uuid,
      magic: SUPERBLOCK_MAGIC,
      version: pool.version,
      time: pool.time,
      transactionId: pool.transaction,
      heldRoot: 0,
      dataSpaceMapRoot: encodeSpaceMapRoot(dataRoot),
      metadataSpaceMapRoot: encodeSpaceMapRoot(metadataRoot),
      dataMappingRoot: mappingRoot,
      deviceDetailsRoot: detailsRoot,
      dataBlockSize: pool.dataBlockSize,
      metadataBlockSize: METADATA_BLOCK_SECTORS,
      metadataNrBlocks: alloc.nrBlocks,
      compatFlags: 0,
      compatRoFlags: 0,
      incompatFlags: 0,
    });
    this.out.write(SUPERBLOCK_LOCATION, sb);
    this.out.sync();
    this.finished = true;
  }

  /** The held ref turned out to be followed by more: its leaves go into the device's own tree. */
  private releaseHeldRef(): void {
    if (this.heldRef === undefined) return;
    this.builder!.pushLeaves(this.defs.get(this.heldRef)!);
    this.heldRef = undefined;
  }

  /** The tree of a device that is just def `name`: built once, then shared whole. */
  private wholeDefRoot(name: string): number {
    let root = this.defRoots.get(name);
    if (root === undefined) {
      this.builder!.pushLeaves(this.defs.get(name)!);
      root = this.builder!.complete();
      this.defRoots.set(name, root);
    }
    return root;
  }

  private startMappings(what: string): void {
    if (!this.pool) throw new WriteMetadataError(`${what} before the superblock`);
    if (this.builder) throw new WriteMetadataError(`${what} inside another device or def`);
  }

  /** Builder of a device's tree (or a def's leaves): each leaf counts once per data block it maps. */
  private mappingBuilder(leavesOnly: boolean): BTreeBuilder {
    return new BTreeBuilder(this.alloc, this.mappingOptions, leavesOnly);
  }

  /**
   * A def's leaf that no tree points at (never referenced, or always copied because it was too
   * small to share) is not part of the pool: the data blocks it maps lose its reference.
   */
  private releaseUnusedDefLeaves(): void {
    const counts = this.dataCounts!;
    for (const leaves of this.defs.values()) {
      for (const leaf of leaves) {
        if (this.alloc.refCounts.get(leaf.block) > 0) continue;
        const buf = this.alloc.read(leaf.block);
        if (!buf) continue;
        const valuesOff = NODE_HEADER_SIZE + 8 * buf.readUInt32LE(20);
        for (let i = 0; i < leaf.nrEntries; i++) counts.dec(mappingDataBlock(buf, valuesOff + i * MAPPING_VALUE_SIZE));
      }
    }
  }

  /** How big the output must be, found by finishing the layout without writing. */
  private tooSmall(): Error {
    const have = this.alloc.nrBlocks;
    // Everything but the metadata space map's bitmaps scales with the input; those scale with the output.
    const needed = withOwnBitmaps(this.alloc.used - metadataSpaceMapBlocks(have) + 1);
    if (needed > MAX_METADATA_BLOCKS) {
      return new WriteMetadataError(
        `the metadata needs ${needed} blocks, more than the ${MAX_METADATA_BLOCKS} a pool's metadata can have`,
      );
    }
    return new OutputTooSmallError(this.out.path, have, needed);
  }
}

/** A run of mappings' values for BTreeBuilder.pushRun. */
class MappingRun implements RunValues {
  dataBegin = 0;
  time = 0;

  fill(words: Uint32Array, at: number, offset: number, n: number): void {
    writeMappingRunWords(words, at, this.dataBegin + offset, this.time, n);
  }
}

/** The smallest metadata holding `blocks` blocks and the bitmaps of its own space map. */
function withOwnBitmaps(blocks: number): number {
  let needed = blocks + bitmapsFor(blocks);
  while (blocks + bitmapsFor(needed) > needed) needed = blocks + bitmapsFor(needed);
  return needed;
}

/**
 * Metadata blocks a pool of `nrDataBlocks` data blocks needs at the very least, besides the
 * metadata space map's bitmaps: the superblock, the roots of the (empty) details and mapping
 * trees, the data space map (a bitmap per 16320 data blocks, its index B-tree with every node
 * full, the root of its ref-count tree) and the metadata space map's index and ref-count root.
 */
function minimumBlocks(nrDataBlocks: U64): number {
  const perBitmap = BigInt(ENTRIES_PER_BITMAP);
  const bitmaps = Number((BigInt(nrDataBlocks) + perBitmap - 1n) / perBitmap);
  // Leaves of the index, then each level of internal nodes up to the root (an empty tree is one leaf).
  let indexNodes = 0;
  for (let level = Math.max(1, Math.ceil(bitmaps / maxEntriesFor(INDEX_ENTRY_SIZE))); ; level = Math.ceil(level / maxEntriesFor(8))) {
    indexNodes += level;
    if (level === 1) break;
  }
  return 1 + 2 + bitmaps + indexNodes + 1 + 2;
}

/**
 * Refuses, at once and before anything is written, a data device of `nrDataBlocks` blocks whose
 * space map alone cannot fit the output (else the layout would be worked out block by block
 * before the size error, for minutes at 2^40 data blocks), saying how much is needed.
 */
export function checkDataSpaceMapFits(nrDataBlocks: U64, out: BlockWriter): void {
  const needed = withOwnBitmaps(minimumBlocks(nrDataBlocks));
  if (needed <= Math.min(out.nrBlocks, MAX_METADATA_BLOCKS)) return;
  const mib = Math.ceil(needed / (MIB / BLOCK_SIZE));
  const beyond = needed > MAX_METADATA_BLOCKS ? `; metadata can have at most ${MAX_METADATA_BLOCKS} blocks` : '';
  throw new InputError(
    `${out.path}: output too small for the metadata: ${nrDataBlocks} data blocks need at least ${needed} metadata blocks ` +
      `(${mib} MiB), the output has ${out.nrBlocks}${beyond}`,
  );
}

const MIB = 1 << 20;
