// One walk of a whole pool's trees, shared by thin_check and its --auto-repair: the device
// details tree, the mapping tree's top level and every device's tree, visiting each node once
// across the live metadata and a held snapshot (shared subtrees are remembered in memos).
// It counts what a space map must count: every reference to a metadata block, and every
// mapping of each distinct leaf (a data block counts once per leaf that maps it, as the kernel
// counts it). What it finds wrong goes to the caller, which reports or refuses.
import { BlockReader } from '../io/block-io.js';
import { BTreeNode, NODE_HEADER_SIZE } from '../pdata/btree/node.js';
import { BTreeError, SubtreeMemo, SubtreeSummary, walkBTree } from '../pdata/btree/walk.js';
import { U64 } from '../pdata/le.js';
import { DEVICE_DETAILS_SIZE } from './device-details.js';
import { MAX_TIME } from './mapping.js';
import { DeviceDetailsEntry, DeviceRoot, TOP_LEVEL_VALUE_SIZE, deviceRootsOf, walkDeviceTree } from './mapping-tree.js';

export interface PoolWalkFindings {
  detailsDamage(err: BTreeError): void;
  topLevelDamage(err: BTreeError): void;
  deviceDamage(devId: number, err: BTreeError): void;
  /** A mapping to a data block at or past nr_data_blocks (not counted). */
  beyondDataDevice(devId: number, thinBlock: U64, dataBlock: number, leaf: number): void;
  /**
   * A mapping whose time is later than the pool's: the kernel would take the block for the
   * device's own, though a snapshot may share it, and write over it.
   */
  newerThanPool(devId: number, thinBlock: U64, time: number, leaf: number): void;
}

/** What a pool's superblock bounds its mappings by. */
export interface PoolLimits {
  nrDataBlocks: number;
  time: number;
}

export interface PoolWalkCounts {
  /** A reference to a metadata block (a node, from its parent or a root). */
  metadataRef(block: number): void;
  /** `n` consecutive data blocks from `first`, mapped by a leaf seen for the first time. */
  dataRefs(first: number, n: number): void;
}

/**
 * Walks pools' trees and counts their references as the space maps must: a node references its
 * children, a leaf its data blocks, once per node however many paths lead to it. References are
 * counted when a node is first visited (a bit per metadata block says which were); subtrees the
 * space map says are shared are remembered and not walked again; any other node reached twice
 * (a cross-link the space map doesn't count) is walked again but counts nothing more. So memory
 * holds the shared nodes only, not an entry per node of the pool.
 */
export class PoolWalker {
  private readonly memos = { details: new Map() as SubtreeMemo, top: new Map() as SubtreeMemo, mapping: new Map() as SubtreeMemo };
  private readonly visited: Uint8Array;
  /** What each device tree walked holds, by root. */
  private readonly deviceTrees = new Map<number, SubtreeSummary | null>();

  /** `shared(block)`: whether the space map counts the block more than once (when in doubt, true). */
  constructor(
    private readonly io: BlockReader,
    readonly limits: PoolLimits,
    private readonly counts: PoolWalkCounts,
    private readonly shared: (block: number) => boolean,
  ) {
    this.visited = new Uint8Array(Math.ceil(io.nrBlocks / 8));
  }

  /** True the first time a (readable, so in-range) node is visited. */
  private firstVisit(block: number): boolean {
    const bit = 1 << (block & 7);
    const byte = block >>> 3;
    if (this.visited[byte] & bit) return false;
    this.visited[byte] |= bit;
    return true;
  }

  /**
   * Walks the trees under one superblock's roots (whose own references are counted here); nodes
   * walked before, through an earlier call, are not walked or counted again. Returns the devices
   * whose trees are damaged.
   */
  walkPool(mappingRoot: number, detailsRoot: number, findings: PoolWalkFindings): Set<number> {
    const { io, counts } = this;
    counts.metadataRef(detailsRoot);
    counts.metadataRef(mappingRoot);
    const internal = (node: BTreeNode): null => {
      if (this.firstVisit(node.block)) for (let i = 0; i < node.nrEntries; i++) counts.metadataRef(node.valueBlock(i));
      return null;
    };
    walkBTree(io, detailsRoot, DEVICE_DETAILS_SIZE, {
      leaf: (node) => void this.firstVisit(node.block),
      internal,
      error: (err) => findings.detailsDamage(err),
    }, { memo: this.memos.details });

    const newRoots: DeviceRoot[] = [];
    walkBTree(io, mappingRoot, TOP_LEVEL_VALUE_SIZE, {
      leaf: (node) => {
        const roots = deviceRootsOf(node);
        if (this.firstVisit(node.block)) for (const { root } of roots) counts.metadataRef(root);
        newRoots.push(...roots);
      },
      internal,
      error: (err) => findings.topLevelDamage(err),
    }, { memo: this.memos.top });

    const damaged = new Set<number>();
    const { nrDataBlocks, time: poolTime } = this.limits;
    const walkOpts = { memoize: this.shared };
    // One visitor for every device, its device id a variable: a closure made per device was a
    // new call target for the walk's optimised code each time (a deoptimisation per device).
    let devId = 0;
    const visitor = {
      leaf: (node: BTreeNode) => {
        if (!this.firstVisit(node.block)) return;
        // Counted a run of consecutive data blocks at a time, decoded from the node's words.
        const words = node.words;
        let first = 0;
        let len = 0;
        for (let i = 0, v = (NODE_HEADER_SIZE >>> 2) + 2 * node.maxEntries; i < node.nrEntries; i++, v += 2) {
          const lo = words[v];
          if ((lo & MAX_TIME) > poolTime) findings.newerThanPool(devId, node.key(i), lo & MAX_TIME, node.block);
          const dataBlock = words[v + 1] * 256 + (lo >>> 24);
          if (len > 0 && dataBlock === first + len && dataBlock < nrDataBlocks) {
            len++;
            continue;
          }
          if (len > 0) counts.dataRefs(first, len);
          len = 0;
          if (dataBlock >= nrDataBlocks) findings.beyondDataDevice(devId, node.key(i), dataBlock, node.block);
          else {
            first = dataBlock;
            len = 1;
          }
        }
        if (len > 0) counts.dataRefs(first, len);
      },
      internal,
      error: (err: BTreeError) => {
        damaged.add(devId);
        findings.deviceDamage(devId, err);
      },
    };
    for (const device of newRoots) {
      devId = device.devId;
      this.deviceTrees.set(device.root, walkDeviceTree(io, device.root, visitor, this.memos.mapping, walkOpts));
    }
    return damaged;
  }

  /** Mappings a walked device tree holds (shared subtrees included), if its walk completed. */
  mappingsUnder(root: number): number | undefined {
    return this.deviceTrees.get(root)?.entries;
  }
}

/**
 * What is inconsistent between a pool's device lists: a device in one tree and not the other,
 * mapped_blocks that disagree with the device's tree (not judged for damaged trees), or a
 * device created or snapshotted later than the pool's time (its blocks would be taken for its
 * own, as with a mapping newer than the pool).
 */
export function deviceListDefects(
  details: Map<number, DeviceDetailsEntry>,
  roots: DeviceRoot[],
  walker: PoolWalker,
  damaged: Set<number>,
): string[] {
  const defects: string[] = [];
  const mapped = new Set<number>();
  for (const { devId } of roots) {
    mapped.add(devId);
    if (!details.has(devId)) defects.push(`thin device ${devId} has a mapping tree but no entry in the device details tree`);
  }
  for (const [devId, d] of details) {
    if (!mapped.has(devId)) defects.push(`thin device ${devId} is in the device details tree but has no mapping tree`);
    for (const [what, time] of [['creation', d.creationTime], ['snapshot', d.snapshottedTime]] as const) {
      if (time > walker.limits.time) defects.push(`thin device ${devId} has ${what} time ${time}, later than the pool's time ${walker.limits.time}`);
    }
  }
  for (const { devId, root } of roots) {
    const d = details.get(devId);
    if (!d || damaged.has(devId)) continue;
    const actual = walker.mappingsUnder(root);
    if (actual !== undefined && actual !== d.mappedBlocks) {
      defects.push(`thin device ${devId} has ${actual} mappings but its device details say mapped_blocks = ${d.mappedBlocks}`);
    }
  }
  return defects;
}
