// Salvage: rebuild the event stream of damaged metadata, keeping every mapping that can be read.
// The superblock's roots are preferred whenever their root nodes read; otherwise the whole
// device is scanned (salvage-scan.ts) for the newest mapping and details trees. Damaged
// subtrees are skipped, devices whose mappings are lost stay (empty) so their ids and details
// survive, and mapped_blocks is the count actually recovered.
//
// A damaged value never stops it: entries whose keys are out of order or out of range are
// dropped (the rest of their node is kept), except a leaf's sorted mappings that its parent no
// longer leads to, which are kept where no other mapping claims their thin blocks (a swapped or
// misplaced leaf); mappings past the data device are dropped, and
// values no kernel writes are corrected to the safe side, each with a note:
// - a mapping newer than the pool's time gets time 0, so the kernel treats the block as shared
//   and copies it before any write (never overwriting a snapshot's data);
// - a device's creation or snapshot time newer than the pool's becomes the pool's time (a
//   later snap_time also makes the kernel copy rather than overwrite);
// - device ids the kernel cannot create (2^24 and above) are dropped.
// Each device is walked twice (count, then emit), so nothing grows with the mappings.
import { BlockReader } from '../io/block-io.js';
import { BTreeNode, NODE_HEADER_SIZE, nodeDefect } from '../pdata/btree/node.js';
import { BTreeError, WalkOptions, walkBTree } from '../pdata/btree/walk.js';
import { U64, U64_MAX, u64Add } from '../pdata/le.js';
import { bitmapsFor } from '../pdata/space-map/common.js';
import { DEVICE_DETAILS_SIZE, DeviceDetails, decodeDeviceDetails } from './device-details.js';
import { DeviceInfo, MetadataVisitor, PoolInfo, SuperblockOverrides } from './events.js';
import { MAX_DATA_BLOCK, MAX_TIME } from './mapping.js';
import { MappingFilter, MappingRuns } from './mapping-runs.js';
import { MAPPING_VALUE_SIZE, MAX_DEV_ID, TOP_LEVEL_VALUE_SIZE, deviceRootsOf } from './mapping-tree.js';
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
  /** Set once the counting walk found mappings to emit, and how to filter them. */
  filter?: MappingFilter;
  /** Mappings outside the keys their parents give them, kept: emitted where their keys belong. */
  displaced?: Displaced[];
}

/** Entries `from` to `to` of a leaf that its parent's keys don't lead to (see BTreeVisitor.displaced). */
interface Displaced {
  block: number;
  from: number;
  to: number;
  minKey: U64;
  maxKey: U64;
}

/** Salvage keeps what it can of every node (see WalkOptions.salvage). */
const SALVAGE_WALK: WalkOptions = { salvage: true };

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

  /** A note, unless this is one of many candidate trees being tried (`quiet`). */
  private note(quiet: boolean): (message: string) => void {
    return quiet ? () => {} : this.warn;
  }

  /** The top level of a mapping tree, or null when its root node can't be read. */
  private readTopLevel(root: number, quiet: boolean): TopLevel | null {
    const warn = this.note(quiet);
    const devices = new Map<number, number>();
    const summary = walkBTree(this.io, root, TOP_LEVEL_VALUE_SIZE, {
      leaf: (node: BTreeNode) => {
        for (const { devId, root: devRoot } of deviceRootsOf(node)) {
          if (devId > MAX_DEV_ID) warn(`mapping tree: device id ${devId} is not one the kernel can create; dropped (leaf block ${node.block})`);
          else devices.set(devId, devRoot);
        }
      },
      error: (err: BTreeError) => {
        if (err.block !== root) warn(`mapping tree: devices ${err.keys} lost: ${err.message}`);
      },
      dropped: (block, count, reason) => warn(`mapping tree: ${count} entries of block ${block} dropped: ${reason}`),
    }, SALVAGE_WALK);
    if (!summary) return null;
    // Device roots are metadata blocks; a device's own mappings (data block << 24 | time) read
    // as roots lie far past the device, so a leaf of those is not the top level.
    const beyond = [...devices.values()].filter((b) => b >= this.io.nrBlocks).length;
    if (beyond * 2 > devices.size) {
      warn(`mapping tree at block ${root}: ${beyond} of its ${devices.size} device roots lie beyond the metadata device; not the top level`);
      return null;
    }
    return { root, devices, stats: { mappings: 0, newest: 0 } };
  }

  private readDetails(root: number, quiet: boolean): Map<number, DeviceDetails> | null {
    const warn = this.note(quiet);
    const details = new Map<number, DeviceDetails>();
    let damaged = false;
    const summary = walkBTree(this.io, root, DEVICE_DETAILS_SIZE, {
      leaf: (node: BTreeNode) => {
        for (let i = 0; i < node.nrEntries; i++) {
          const devId = node.keyNumber(i);
          if (devId > MAX_DEV_ID) warn(`device details: device id ${devId} is not one the kernel can create; dropped (leaf block ${node.block})`);
          else details.set(devId, decodeDeviceDetails(node.buf, node.valueOffset(i)));
        }
      },
      error: (err: BTreeError) => {
        damaged = true;
        if (err.block !== root) warn(`device details: devices ${err.keys} lost: ${err.message}`);
      },
      dropped: (block, count, reason) => warn(`device details: ${count} entries of block ${block} dropped: ${reason}`),
    }, SALVAGE_WALK);
    // A root that leads to nothing readable (another tree's node, say) is no details tree.
    if (summary && details.size === 0 && damaged) {
      warn(`device details at block ${root}: no device's details can be read there`);
      return null;
    }
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
    let best: { root: number; details: Map<number, DeviceDetails>; score: U64[] } | null = null;
    for (const root of candidateRoots(this.io, scan, BlockKind.DetailsLeaf)) {
      const details = this.readDetails(root, true);
      if (!details) continue;
      let shared = 0;
      let newestTid: U64 = 0;
      let newestTime = 0;
      for (const [devId, d] of details) {
        if (devIds.has(devId)) shared++;
        if (d.transactionId > newestTid) newestTid = d.transactionId;
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
    for (const dev of ordered) {
      const defect = dev.root === null ? null : this.mappingRootDefect(dev.root);
      if (defect) {
        // Lost like a device the top level doesn't list: its tree may be found elsewhere.
        this.warn(`device ${dev.devId}: mapping tree root (block ${dev.root}) unreadable: ${defect}`);
        dev.root = null;
      }
    }
    const lost = ordered.filter((d) => d.root === null && d.details && d.details.mappedBlocks > 0);
    if (lost.length > 0) this.adoptOrphans(lost);

    // Count first: mapped_blocks must be known at each device's start, the highest data block
    // before the superblock.
    const pool = this.poolInfo(sb, sbProblem, ordered);
    if (sbProblem) this.warn(`${sbProblem}; rebuilt from the trees found`);
    // A mapping holds 40 bits of data block, so nothing past 2^40 can be mapped anyway.
    const limit = pool.nrDataBlocks === undefined ? MAX_DATA_BLOCK + 1 : Math.min(Number(pool.nrDataBlocks), MAX_DATA_BLOCK + 1);
    const counted = new Map<number, number>();
    let highest = -1;
    let dropped = 0;
    let retimed = 0;
    const poolTime = pool.time;
    // Past the data device: dropped. Newer than the pool: treated as shared (see the top).
    const filter: MappingFilter = (dataBlock, time) => (dataBlock >= limit ? -1 : time > poolTime ? 0 : time);
    for (const dev of ordered) {
      if (dev.root === null) {
        this.warn(`device ${dev.devId}: not in the mapping tree; its mappings are lost`);
        continue;
      }
      let count = 0;
      const countLeaf = (node: BTreeNode, from = 0, to = node.nrEntries): void => {
        const words = node.words;
        for (let i = from, v = (NODE_HEADER_SIZE >>> 2) + 2 * (node.maxEntries + from); i < to; i++, v += 2) {
          const lo = words[v];
          const dataBlock = words[v + 1] * 256 + (lo >>> 24);
          if (dataBlock >= limit) dropped++;
          else {
            count++;
            if (dataBlock > highest) highest = dataBlock;
            if ((lo & MAX_TIME) > poolTime) retimed++;
          }
        }
      };
      const displaced: Displaced[] = [];
      const summary = walkBTree(io, dev.root, MAPPING_VALUE_SIZE, {
        leaf: (node) => countLeaf(node),
        error: (err) => this.warn(`device ${dev.devId}: mappings ${err.keys} lost: ${err.message}`),
        dropped: (block, n, reason) => this.warn(`device ${dev.devId}: ${n} mappings of leaf block ${block} dropped: ${reason}`),
        displaced: (node, from, to) => displaced.push({ block: node.block, from, to, minKey: node.key(from), maxKey: node.key(to - 1) }),
      }, SALVAGE_WALK);
      if (!summary) {
        // The root itself failed: none of its mappings is emitted, so none may be counted.
        dev.root = null;
        count = 0;
      }
      if (summary && displaced.length > 0) {
        dev.displaced = this.placeDisplaced(dev, displaced);
        for (const d of dev.displaced) countLeaf(new BTreeNode(d.block, io.read(d.block)), d.from, d.to);
      }
      counted.set(dev.devId, count);
      if (dev.root !== null && count > 0) dev.filter = filter;
    }
    if (dropped > 0) this.warn(`${dropped} mappings beyond the end of the data device (${limit} blocks) dropped`);
    if (retimed > 0) {
      this.warn(`${retimed} mappings newer than the pool's time ${poolTime} given time 0 (the kernel will copy them before writing)`);
    }
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
            creationTime: this.notAfter(pool.time, dev.details.creationTime, `device ${dev.devId}: creation time`),
            snapTime: this.notAfter(pool.time, dev.details.snapshottedTime, `device ${dev.devId}: snapshot time`),
          }
        : // Lost details: a snapshot time of now makes the kernel treat every older block as
          // shared and copy it before writing, which is slower but never overwrites a snapshot's data.
          { devId: dev.devId, mappedBlocks: mapped, transaction: pool.transaction, creationTime: 0, snapTime: pool.time };
      visitor.deviceBegin(info);
      if (dev.filter) emitMappings(io, dev.root!, dev.filter, visitor, dev.displaced ?? []);
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
   * Which displaced mappings of a device to keep: those whose thin blocks no mapping in place
   * and no other displaced leaf claims (a leaf swapped with its neighbour, or reached through a
   * damaged parent key, holds mappings nothing else has). In key order.
   */
  private placeDisplaced(dev: Device, found: Displaced[]): Displaced[] {
    const note = (d: Displaced, verdict: string) => this.warn(
      `device ${dev.devId}: ${d.to - d.from} mappings of leaf block ${d.block} lie outside the keys its parent gives it; ${verdict}`);
    const kept: Displaced[] = [];
    for (const d of [...found].sort((a, b) => (a.minKey < b.minKey ? -1 : a.minKey > b.minKey ? 1 : 0))) {
      if (kept.length > 0 && d.minKey <= kept[kept.length - 1].maxKey) note(d, 'dropped, as other displaced mappings claim those thin blocks');
      else kept.push(d);
    }
    // A mapping in place inside a displaced leaf's key range means the two disagree: keep the one in place.
    const clash = new Set<Displaced>();
    walkBTree(this.io, dev.root!, MAPPING_VALUE_SIZE, {
      leaf: (node) => {
        for (let i = 0; i < node.nrEntries; i++) {
          const key = node.key(i);
          let lo = 0;
          let hi = kept.length;
          while (lo < hi) {
            const mid = (lo + hi) >>> 1;
            if (kept[mid].minKey <= key) lo = mid + 1;
            else hi = mid;
          }
          if (lo > 0 && key <= kept[lo - 1].maxKey) clash.add(kept[lo - 1]);
        }
      },
      error: () => {},
    }, SALVAGE_WALK);
    for (const d of clash) note(d, 'dropped, as mappings in place claim some of those thin blocks');
    const placed = kept.filter((d) => !clash.has(d));
    for (const d of placed) note(d, 'kept, as no other mapping claims those thin blocks');
    return placed;
  }

  /** A device time no later than the pool's (a later one is corrected, with a note). */
  private notAfter(poolTime: number, time: number, what: string): number {
    if (time <= poolTime) return time;
    this.warn(`${what} ${time} is later than the pool's time ${poolTime}; set to ${poolTime}`);
    return poolTime;
  }

  /** Why a device's root block can't be the root of a mapping tree, or null. */
  private mappingRootDefect(root: number): string | null {
    if (root >= this.io.nrBlocks) return `block ${root} is beyond the end of the metadata device`;
    return nodeDefect(new BTreeNode(root, this.io.read(root)), root, MAPPING_VALUE_SIZE);
  }

  /**
   * Devices the mapping tree no longer leads to get back a tree that nothing points at when it
   * holds exactly the number of mappings their details record and no other such tree does:
   * the kernel keeps mapped_blocks exact, and an ambiguous match is left alone rather than
   * risk giving a device another's data.
   */
  private adoptOrphans(lost: Device[]): void {
    const scan = this.blocks();
    const byCount = new Map<U64, number[]>();
    const wanted = new Set(lost.map((d) => d.details!.mappedBlocks));
    for (const root of candidateRoots(this.io, scan, BlockKind.MappingLeaf)) {
      const { mappings } = subtreeStats(this.io, scan, root, this.statsMemo);
      if (!wanted.has(mappings)) continue;
      byCount.set(mappings, [...(byCount.get(mappings) ?? []), root]);
    }
    const unmatched: Device[] = [];
    for (const dev of lost) {
      const roots = byCount.get(dev.details!.mappedBlocks) ?? [];
      if (roots.length === 1) {
        dev.root = roots[0];
        this.warn(`device ${dev.devId}: mapping tree found again at block ${roots[0]} (its ${dev.details!.mappedBlocks} mappings match)`);
      } else if (roots.length > 1) {
        this.warn(`device ${dev.devId}: ${roots.length} unattached trees hold ${dev.details!.mappedBlocks} mappings; none adopted`);
      } else {
        unmatched.push(dev);
      }
    }
    if (unmatched.length > 0) this.adoptFromOlderTopLevels(unmatched);
  }

  /**
   * A lost device's tree as an older top level (a previous commit's, still on the device) lists
   * it, when that tree holds exactly the mappings the device's details record and no other
   * version of it does: the details and the tree are then of one commit.
   */
  private adoptFromOlderTopLevels(lost: Device[]): void {
    const scan = this.blocks();
    const found = new Map<number, Set<number>>();
    for (const topRoot of candidateRoots(this.io, scan, BlockKind.TopLeaf)) {
      const top = this.readTopLevel(topRoot, true);
      if (!top) continue;
      for (const dev of lost) {
        const root = top.devices.get(dev.devId);
        if (root === undefined || this.mappingRootDefect(root)) continue;
        if (subtreeStats(this.io, scan, root, this.statsMemo).mappings !== dev.details!.mappedBlocks) continue;
        if (!found.has(dev.devId)) found.set(dev.devId, new Set());
        found.get(dev.devId)!.add(root);
      }
    }
    for (const dev of lost) {
      const roots = [...(found.get(dev.devId) ?? [])];
      if (roots.length !== 1) continue;
      dev.root = roots[0];
      this.warn(`device ${dev.devId}: mapping tree found at block ${roots[0]} through an older top level (its ${dev.details!.mappedBlocks} mappings match)`);
    }
  }

  /** The pool's fields: the superblock's, else a metadata snapshot's copy and what the trees say. */
  private poolInfo(sb: Superblock | null, sbProblem: string, devices: Device[]): Omit<PoolInfo, 'nrDataBlocks'> & { nrDataBlocks?: U64 } {
    const o = this.opts;
    if (sb) {
      return {
        uuid: uuidText(sb.uuid),
        time: sb.time,
        transaction: o.transactionId ?? sb.transactionId,
        flags: sb.flags & ~NEEDS_CHECK_FLAG,
        version: 2,
        dataBlockSize: o.dataBlockSize ?? this.soundDataBlockSize(sb.dataBlockSize),
        nrDataBlocks: o.nrDataBlocks ?? this.plausibleNrDataBlocks(dataSpaceMapRoot(sb).nrBlocks),
      };
    }
    const copy = this.superblockCopy();
    const dataBlockSize = o.dataBlockSize ?? copy?.dataBlockSize;
    if (dataBlockSize === undefined) {
      throw new SalvageError(`${sbProblem}: the data block size needs to be provided with --data-block-size`);
    }
    let time = 0;
    let newestTid: U64 | undefined;
    for (const d of devices) {
      if (d.root !== null) time = Math.max(time, subtreeStats(this.io, this.blocks(), d.root, this.statsMemo).newest);
      if (d.details) {
        time = Math.max(time, d.details.creationTime, d.details.snapshottedTime);
        if (newestTid === undefined || d.details.transactionId > newestTid) newestTid = d.details.transactionId;
      }
    }
    let transaction = o.transactionId;
    if (transaction === undefined) {
      // Past every device's (unless that is already the largest u64), and no older than a snapshot's copy.
      transaction = newestTid === undefined ? 0 : newestTid === U64_MAX ? U64_MAX : u64Add(newestTid, 1);
      if (copy && copy.transactionId > transaction) transaction = copy.transactionId;
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

  /**
   * The superblock's nr_data_blocks, unless the data space map of that many blocks could not fit
   * in this metadata device (so the kernel never wrote it): then the mappings decide (undefined).
   */
  private plausibleNrDataBlocks(nrDataBlocks: U64): U64 | undefined {
    const bitmaps = bitmapsFor(Number(nrDataBlocks));
    if (bitmaps < this.io.nrBlocks) return nrDataBlocks;
    this.warn(`the superblock's nr_data_blocks ${nrDataBlocks} is damaged: its space map would need ${bitmaps} bitmaps, ` +
      `more than the ${this.io.nrBlocks} blocks of this metadata`);
    return undefined;
  }

  /**
   * The superblock's data block size, when it is one a pool can have; else a metadata snapshot
   * copy's. A guess would put every block's data at the wrong offset, so without either the
   * user must say.
   */
  private soundDataBlockSize(sectors: number): number {
    if (validDataBlockSize(sectors)) return sectors;
    const problem = `the superblock's data block size ${sectors} sectors is not one a pool can have`;
    const copy = this.superblockCopy();
    if (!copy) throw new SalvageError(`${problem}: the data block size needs to be provided with --data-block-size`);
    this.warn(`${problem}; taken as ${copy.dataBlockSize}, a metadata snapshot's copy's`);
    return copy.dataBlockSize;
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

/**
 * Emits one device's readable mappings (as the counting walk saw them) as runs, with the
 * displaced ones it kept merged in where their keys belong (between the mappings in place).
 */
function emitMappings(io: BlockReader, root: number, filter: MappingFilter, visitor: MetadataVisitor, displaced: Displaced[]): void {
  const runs = new MappingRuns(visitor, filter);
  let next = 0;
  /** The displaced leaves below `key` (all that are left, without one). */
  const displacedBelow = (key?: U64): void => {
    for (; next < displaced.length && (key === undefined || displaced[next].minKey < key); next++) {
      const d = displaced[next];
      runs.leaf(new BTreeNode(d.block, io.read(d.block)), d.from, d.to);
    }
  };
  walkBTree(io, root, MAPPING_VALUE_SIZE, {
    leaf: (node) => {
      let from = 0;
      // No mapping in place lies inside a displaced leaf's range: each goes in whole before the first above it.
      while (next < displaced.length && from < node.nrEntries) {
        let i = from;
        while (i < node.nrEntries && node.key(i) < displaced[next].minKey) i++;
        if (i === node.nrEntries) break;
        runs.leaf(node, from, i);
        displacedBelow(node.key(i));
        from = i;
      }
      runs.leaf(node, from);
    },
    error: () => {},
  }, SALVAGE_WALK);
  displacedBelow();
  runs.flush();
}

/** Newest mapping first, then the most mappings, then the most devices. */
function rankTop(a: TopLevel, b: TopLevel): number {
  return compareScores([b.stats.newest, b.stats.mappings, b.devices.size], [a.stats.newest, a.stats.mappings, a.devices.size]);
}

function compareScores(a: U64[], b: U64[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

/**
 * Salvages the metadata on `io` into `visitor` (superblock, devices, mapping runs).
 * Throws SalvageError when the superblock is unusable and the overrides it needs are missing.
 */
export function salvageMetadata(io: BlockReader, visitor: MetadataVisitor, opts: SalvageOptions = {}): SalvageResult {
  return new Salvager(io, opts).run(visitor);
}
