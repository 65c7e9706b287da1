// Salvage: rebuild the event stream of damaged metadata, keeping every mapping that can be read.
// The superblock's roots are preferred whenever their root nodes read; otherwise the whole
// device is scanned (salvage-scan.ts) for the newest mapping and details trees. Damaged
// subtrees are skipped, devices whose mappings are lost stay (empty) so their ids and details
// survive, and mapped_blocks is the count actually recovered.
// Each device is walked twice (count, then emit), so nothing grows with the mappings.
import { BlockReader } from '../io/block-io.js';
import { BTreeNode } from '../pdata/btree/node.js';
import { BTreeError, walkBTree } from '../pdata/btree/walk.js';
import { DEVICE_DETAILS_SIZE, DeviceDetails, decodeDeviceDetails } from './device-details.js';
import { DeviceInfo, MetadataVisitor, PoolInfo, SuperblockOverrides } from './events.js';
import { mappingDataBlock, mappingTime } from './mapping.js';
import { MAPPING_VALUE_SIZE, TOP_LEVEL_VALUE_SIZE } from './mapping-tree.js';
import {
  BlockKind, BlockScan, SubtreeStats, candidateRoots, scanBlocks, subtreeStats,
} from './salvage-scan.js';
import {
  NEEDS_CHECK_FLAG, Superblock, dataSpaceMapRoot, decodeSuperblock, readSuperblock, validDataBlockSize,
} from './superblock.js';

export interface SalvageOptions extends SuperblockOverrides {
  /** Told what could not be saved and what had to be guessed. */
  warn?: (message: string) => void;
  /** Told the blocks scanned so far, when a whole-device scan is needed. */
  scanProgress?: (done: number, total: number) => void;
}

export interface SalvageResult {
  devices: number;
  mappings: number;
  /** Mappings that were readable but pointed past the end of the data device. */
  dropped: number;
  /** Where the mapping and details trees came from. */
  mappingRoot: number | null;
  detailsRoot: number | null;
  scanned: boolean;
}

/** Salvage is impossible or needs the user's help; the message says which. */
export class SalvageError extends Error {}

interface Device {
  devId: number;
  root: number | null;
  details: DeviceDetails | null;
}

interface TopLevel {
  root: number;
  devices: Map<number, number>;
  stats: SubtreeStats;
}

/** The uuid field holds text (LVM never sets it); it ends at the first NUL. */
function uuidText(uuid: Buffer): string {
  const end = uuid.indexOf(0);
  return uuid.subarray(0, end < 0 ? uuid.length : end).toString('latin1');
}

class Salvager {
  private scan: BlockScan | null = null;
  private readonly statsMemo = new Map<number, SubtreeStats>();
  private readonly warn: (message: string) => void;

  constructor(private readonly io: BlockReader, private readonly opts: SalvageOptions) {
    this.warn = opts.warn ?? (() => {});
  }

  private blocks(): BlockScan {
    if (!this.scan) {
      const total = this.io.nrBlocks;
      this.scan = scanBlocks(this.io, this.opts.scanProgress && ((done) => this.opts.scanProgress!(done, total)));
    }
    return this.scan;
  }

  /** The top level of a mapping tree, or null when its root node can't be read. */
  private readTopLevel(root: number, quiet: boolean): TopLevel | null {
    const devices = new Map<number, number>();
    const summary = walkBTree(this.io, root, TOP_LEVEL_VALUE_SIZE, {
      leaf: (node: BTreeNode) => {
        for (let i = 0; i < node.nrEntries; i++) devices.set(node.key(i), node.valueU64(i));
      },
      error: (err: BTreeError) => {
        if (!quiet && err.block !== root) this.warn(`mapping tree: devices ${keyRange(err)} lost: ${err.message}`);
      },
    }, { allowUnderfull: true });
    if (!summary) return null;
    return { root, devices, stats: { mappings: 0, newest: 0 } };
  }

  private readDetails(root: number, quiet: boolean): Map<number, DeviceDetails> | null {
    const details = new Map<number, DeviceDetails>();
    const summary = walkBTree(this.io, root, DEVICE_DETAILS_SIZE, {
      leaf: (node: BTreeNode) => {
        for (let i = 0; i < node.nrEntries; i++) details.set(node.key(i), decodeDeviceDetails(node.buf, node.valueOffset(i)));
      },
      error: (err: BTreeError) => {
        if (!quiet && err.block !== root) this.warn(`device details: devices ${keyRange(err)} lost: ${err.message}`);
      },
    }, { allowUnderfull: true });
    return summary ? details : null;
  }

  /** The newest readable mapping tree found by scanning, ranked by its newest mapping then its size. */
  private findTopLevel(): TopLevel | null {
    const scan = this.blocks();
    let best: TopLevel | null = null;
    for (const root of candidateRoots(this.io, scan, BlockKind.TopLeaf)) {
      const top = this.readTopLevel(root, true);
      if (!top) continue;
      for (const devRoot of top.devices.values()) {
        const s = subtreeStats(this.io, scan, devRoot, this.statsMemo);
        top.stats.mappings += s.mappings;
        top.stats.newest = Math.max(top.stats.newest, s.newest);
      }
      if (!best || rankTop(top, best) < 0) best = top;
    }
    return best;
  }

  /** The details tree found by scanning that best matches the chosen devices, newest first. */
  private findDetails(devIds: Set<number>): { root: number; details: Map<number, DeviceDetails> } | null {
    const scan = this.blocks();
    let best: { root: number; details: Map<number, DeviceDetails>; score: number[] } | null = null;
    for (const root of candidateRoots(this.io, scan, BlockKind.DetailsLeaf)) {
      const details = this.readDetails(root, true);
      if (!details) continue;
      let shared = 0;
      let newestTid = 0;
      let newestTime = 0;
      for (const [devId, d] of details) {
        if (devIds.has(devId)) shared++;
        newestTid = Math.max(newestTid, d.transactionId);
        newestTime = Math.max(newestTime, d.creationTime, d.snapshottedTime);
      }
      const exact = shared === devIds.size && shared === details.size ? 1 : 0;
      const score = [exact, shared, newestTid, newestTime, details.size];
      if (!best || compareScores(score, best.score) > 0) best = { root, details, score };
    }
    return best;
  }

  run(visitor: MetadataVisitor): SalvageResult {
    const io = this.io;
    let sb: Superblock | null = null;
    let sbProblem = '';
    try {
      sb = readSuperblock(io);
    } catch (e) {
      sbProblem = `the superblock is unusable (${(e as Error).message})`;
    }

    let top = sb ? this.readTopLevel(sb.dataMappingRoot, false) : null;
    if (sb && !top) this.warn(`mapping tree root (block ${sb.dataMappingRoot}) unreadable; searching the device for another`);
    if (!top) top = this.findTopLevel();
    if (!top) this.warn('no mapping tree found: no mappings can be recovered');

    let detailsRoot: number | null = null;
    let details = sb ? this.readDetails(sb.deviceDetailsRoot, false) : null;
    if (details) detailsRoot = sb!.deviceDetailsRoot;
    else {
      if (sb) this.warn(`device details root (block ${sb.deviceDetailsRoot}) unreadable; searching the device for another`);
      const found = this.findDetails(new Set(top?.devices.keys() ?? []));
      if (found) ({ root: detailsRoot, details } = found);
      else this.warn('no device details found: details of every device are rebuilt from its mappings');
    }

    const devices = new Map<number, Device>();
    for (const [devId, root] of top?.devices ?? []) devices.set(devId, { devId, root, details: null });
    for (const [devId, d] of details ?? []) {
      const dev = devices.get(devId) ?? { devId, root: null, details: null };
      dev.details = d;
      devices.set(devId, dev);
    }
    const ordered = [...devices.values()].sort((a, b) => a.devId - b.devId);
    const lost = ordered.filter((d) => d.root === null && d.details && d.details.mappedBlocks > 0);
    if (lost.length > 0) this.adoptOrphans(lost);

    // Count first: mapped_blocks must be known at each device's start, the highest data block
    // before the superblock.
    const pool = this.poolInfo(sb, sbProblem, ordered);
    if (sbProblem) this.warn(`${sbProblem}; rebuilt from the trees found`);
    const limit = pool.nrDataBlocks ?? Number.MAX_SAFE_INTEGER;
    const counted = new Map<number, number>();
    let highest = -1;
    let dropped = 0;
    for (const dev of ordered) {
      if (dev.root === null) {
        this.warn(`device ${dev.devId}: not in the mapping tree; its mappings are lost`);
        continue;
      }
      let count = 0;
      const summary = walkBTree(io, dev.root, MAPPING_VALUE_SIZE, {
        leaf: (node) => {
          for (let i = 0; i < node.nrEntries; i++) {
            const dataBlock = mappingDataBlock(node.buf, node.valueOffset(i));
            if (dataBlock >= limit) dropped++;
            else {
              count++;
              if (dataBlock > highest) highest = dataBlock;
            }
          }
        },
        error: (err) => this.warn(`device ${dev.devId}: mappings ${keyRange(err)} lost: ${err.message}`),
      }, { allowUnderfull: true });
      if (!summary) dev.root = null;
      counted.set(dev.devId, count);
    }
    if (dropped > 0) this.warn(`${dropped} mappings beyond the end of the data device (${limit} blocks) dropped`);
    if (pool.nrDataBlocks === undefined) {
      pool.nrDataBlocks = highest + 1;
      this.warn(`nr data blocks taken as ${pool.nrDataBlocks}, past the highest mapped data block; pass --nr-data-blocks for the real size`);
    }

    let mappings = 0;
    visitor.superblockBegin(pool as PoolInfo);
    for (const dev of ordered) {
      const mapped = counted.get(dev.devId) ?? 0;
      mappings += mapped;
      const info: DeviceInfo = dev.details
        ? {
            devId: dev.devId,
            mappedBlocks: mapped,
            transaction: dev.details.transactionId,
            creationTime: dev.details.creationTime,
            snapTime: dev.details.snapshottedTime,
          }
        : // Lost details: a snapshot time of now makes the kernel treat every older block as
          // shared and copy it before writing, which is slower but never overwrites a snapshot's data.
          { devId: dev.devId, mappedBlocks: mapped, transaction: pool.transaction, creationTime: 0, snapTime: pool.time };
      visitor.deviceBegin(info);
      if (dev.root !== null && mapped > 0) emitMappings(io, dev.root, limit, visitor);
      visitor.deviceEnd();
    }
    visitor.superblockEnd();
    return {
      devices: ordered.length,
      mappings,
      dropped,
      mappingRoot: top?.root ?? null,
      detailsRoot,
      scanned: this.scan !== null,
    };
  }

  /**
   * Devices the mapping tree no longer leads to get back a tree that nothing points at when it
   * holds exactly the number of mappings their details record and no other such tree does:
   * the kernel keeps mapped_blocks exact, and an ambiguous match is left alone rather than
   * risk giving a device another's data.
   */
  private adoptOrphans(lost: Device[]): void {
    const scan = this.blocks();
    const byCount = new Map<number, number[]>();
    const wanted = new Set(lost.map((d) => d.details!.mappedBlocks));
    for (const root of candidateRoots(this.io, scan, BlockKind.MappingLeaf)) {
      const { mappings } = subtreeStats(this.io, scan, root, this.statsMemo);
      if (!wanted.has(mappings)) continue;
      byCount.set(mappings, [...(byCount.get(mappings) ?? []), root]);
    }
    for (const dev of lost) {
      const roots = byCount.get(dev.details!.mappedBlocks) ?? [];
      if (roots.length === 1) {
        dev.root = roots[0];
        this.warn(`device ${dev.devId}: mapping tree found again at block ${roots[0]} (its ${dev.details!.mappedBlocks} mappings match)`);
      } else if (roots.length > 1) {
        this.warn(`device ${dev.devId}: ${roots.length} unattached trees hold ${dev.details!.mappedBlocks} mappings; none adopted`);
      }
    }
  }

  /** The pool's fields: the superblock's, else a metadata snapshot's copy and what the trees say. */
  private poolInfo(sb: Superblock | null, sbProblem: string, devices: Device[]): Omit<PoolInfo, 'nrDataBlocks'> & { nrDataBlocks?: number } {
    const o = this.opts;
    if (sb) {
      return {
        uuid: uuidText(sb.uuid),
        time: sb.time,
        transaction: o.transactionId ?? sb.transactionId,
        flags: sb.flags & ~NEEDS_CHECK_FLAG,
        version: 2,
        dataBlockSize: o.dataBlockSize ?? sb.dataBlockSize,
        nrDataBlocks: o.nrDataBlocks ?? dataSpaceMapRoot(sb).nrBlocks,
      };
    }
    const copy = this.superblockCopy();
    const dataBlockSize = o.dataBlockSize ?? copy?.dataBlockSize;
    if (dataBlockSize === undefined) {
      throw new SalvageError(`${sbProblem}: the data block size needs to be provided with --data-block-size`);
    }
    let time = 0;
    let newestTid = -1;
    for (const d of devices) {
      if (d.root !== null) time = Math.max(time, subtreeStats(this.io, this.blocks(), d.root, this.statsMemo).newest);
      if (d.details) {
        time = Math.max(time, d.details.creationTime, d.details.snapshottedTime);
        newestTid = Math.max(newestTid, d.details.transactionId);
      }
    }
    let transaction = o.transactionId;
    if (transaction === undefined) {
      transaction = Math.max(newestTid + 1, copy?.transactionId ?? 0);
      this.warn(`transaction id guessed as ${transaction}; pass --transaction-id with the one LVM expects`);
    }
    return {
      uuid: copy ? uuidText(copy.uuid) : '',
      time,
      transaction,
      flags: 0,
      version: 2,
      dataBlockSize,
      nrDataBlocks: o.nrDataBlocks,
    };
  }

  /** A metadata snapshot's copy of the superblock: the pool's settings from an earlier commit. */
  private superblockCopy(): Superblock | null {
    let best: Superblock | null = null;
    for (const b of this.blocks().superblockCopies) {
      const copy = decodeSuperblock(this.io.read(b));
      if (!validDataBlockSize(copy.dataBlockSize)) continue;
      if (!best || copy.transactionId > best.transactionId) best = copy;
    }
    return best;
  }
}

/** Emits one device's readable mappings, merging runs of consecutive blocks at one time. */
function emitMappings(io: BlockReader, root: number, limit: number, visitor: MetadataVisitor): void {
  let thinBegin = -1;
  let dataBegin = -1;
  let length = 0;
  let runTime = -1;
  walkBTree(io, root, MAPPING_VALUE_SIZE, {
    leaf: (node) => {
      for (let i = 0; i < node.nrEntries; i++) {
        const off = node.valueOffset(i);
        const dataBlock = mappingDataBlock(node.buf, off);
        if (dataBlock >= limit) continue;
        const thinBlock = node.key(i);
        const time = mappingTime(node.buf, off);
        if (length > 0 && thinBlock === thinBegin + length && dataBlock === dataBegin + length && time === runTime) {
          length++;
          continue;
        }
        if (length > 0) visitor.mapRun(thinBegin, dataBegin, length, runTime);
        thinBegin = thinBlock;
        dataBegin = dataBlock;
        runTime = time;
        length = 1;
      }
    },
    error: () => {},
  }, { allowUnderfull: true });
  if (length > 0) visitor.mapRun(thinBegin, dataBegin, length, runTime);
}

function keyRange(err: BTreeError): string {
  return err.highKey > Number.MAX_SAFE_INTEGER ? `from ${err.lowKey}` : `${err.lowKey}..${err.highKey - 1}`;
}

/** Newest mapping first, then the most mappings, then the most devices. */
function rankTop(a: TopLevel, b: TopLevel): number {
  return compareScores([b.stats.newest, b.stats.mappings, b.devices.size], [a.stats.newest, a.stats.mappings, a.devices.size]);
}

function compareScores(a: number[], b: number[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}

/**
 * Salvages the metadata on `io` into `visitor` (superblock, devices, mapping runs).
 * Throws SalvageError when the superblock is unusable and the overrides it needs are missing.
 */
export function salvageMetadata(io: BlockReader, visitor: MetadataVisitor, opts: SalvageOptions = {}): SalvageResult {
  return new Salvager(io, opts).run(visitor);
}
