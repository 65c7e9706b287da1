// One walk of a whole pool's trees, shared by thin_check and its --auto-repair: the device
// details tree, the mapping tree's top level and every device's tree, visiting each node once
// across the live metadata and a held snapshot (shared subtrees are remembered in memos).
// It counts what a space map must count: every reference to a metadata block, and every
// mapping of each distinct leaf (a data block counts once per leaf that maps it, as the kernel
// counts it). What it finds wrong goes to the caller, which reports or refuses.
import { BlockReader } from '../io/block-io.js';
import { BTreeNode } from '../pdata/btree/node.js';
import { BTreeError, SubtreeMemo, walkBTree } from '../pdata/btree/walk.js';
import { U64 } from '../pdata/le.js';
import { DEVICE_DETAILS_SIZE } from './device-details.js';
import { mappingDataBlock, mappingTime } from './mapping.js';
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
  /** A data block mapped by a leaf seen for the first time. */
  dataRef(block: number): void;
}

export class PoolWalker {
  private readonly memos = { details: new Map() as SubtreeMemo, top: new Map() as SubtreeMemo, mapping: new Map() as SubtreeMemo };

  constructor(
    private readonly io: BlockReader,
    readonly limits: PoolLimits,
    private readonly counts: PoolWalkCounts,
  ) {}

  /**
   * Walks the trees under one superblock's roots; nodes walked before (through an earlier call)
   * are counted as referenced but not walked again. Returns the devices whose trees are damaged.
   */
  walkPool(mappingRoot: number, detailsRoot: number, findings: PoolWalkFindings): Set<number> {
    const { io, counts } = this;
    const metadataRef = (b: number): void => counts.metadataRef(b);
    walkBTree(io, detailsRoot, DEVICE_DETAILS_SIZE, {
      leaf: () => {},
      nodeRef: metadataRef,
      error: (err) => findings.detailsDamage(err),
    }, { memo: this.memos.details });

    const newRoots: DeviceRoot[] = [];
    walkBTree(io, mappingRoot, TOP_LEVEL_VALUE_SIZE, {
      leaf: (node) => newRoots.push(...deviceRootsOf(node)),
      nodeRef: metadataRef,
      error: (err) => findings.topLevelDamage(err),
    }, { memo: this.memos.top });

    const damaged = new Set<number>();
    const { nrDataBlocks, time: poolTime } = this.limits;
    for (const { devId, root } of newRoots) {
      walkDeviceTree(io, root, {
        leaf(node: BTreeNode) {
          const buf = node.buf;
          for (let i = 0; i < node.nrEntries; i++) {
            const off = node.valueOffset(i);
            const dataBlock = mappingDataBlock(buf, off);
            if (dataBlock >= nrDataBlocks) findings.beyondDataDevice(devId, node.key(i), dataBlock, node.block);
            else counts.dataRef(dataBlock);
            const time = mappingTime(buf, off);
            if (time > poolTime) findings.newerThanPool(devId, node.key(i), time, node.block);
          }
        },
        nodeRef: metadataRef,
        error(err) {
          damaged.add(devId);
          findings.deviceDamage(devId, err);
        },
      }, this.memos.mapping);
    }
    return damaged;
  }

  /** Mappings a walked device tree holds (shared subtrees included), if its walk completed. */
  mappingsUnder(root: number): number | undefined {
    return this.memos.mapping.get(root)?.entries;
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
