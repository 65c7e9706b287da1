// Walkers for the two trees of a pool: the two-level mapping tree (dev_id -> device tree ->
// thin block -> data block/time) and the device-details tree (dev_id -> details).
import { BlockReader } from '../io/block-io.js';
import { BTreeNode } from '../pdata/btree/node.js';
import { BTreeError, BTreeVisitor, SubtreeMemo, SubtreeSummary, WalkOptions, walkBTree } from '../pdata/btree/walk.js';
import { DEVICE_DETAILS_SIZE, DeviceDetails, decodeDeviceDetails } from './device-details.js';

/** dm-thin refuses device ids of 24 bits or more. */
export const MAX_DEV_ID = 2 ** 24 - 1;

/** Leaf value sizes of the pool's trees. */
export const MAPPING_VALUE_SIZE = 8;
export const TOP_LEVEL_VALUE_SIZE = 8;

export interface DeviceRoot {
  devId: number;
  root: number;
}

type ErrorSink = (err: BTreeError) => void;

/**
 * The devices a top-level leaf lists, with their bottom-level roots. Device ids are u64 keys on
 * disk but 24 bits in the kernel, so every id a pool can hold is an exact number.
 */
export function deviceRootsOf(node: BTreeNode): DeviceRoot[] {
  const roots: DeviceRoot[] = [];
  for (let i = 0; i < node.nrEntries; i++) roots.push({ devId: node.keyNumber(i), root: node.valueBlock(i) });
  return roots;
}

/** The top level of the mapping tree: each device's bottom-level root, in dev_id order. */
export function readDeviceRoots(
  io: BlockReader,
  mappingRoot: number,
  onError: ErrorSink,
  nodeRef?: (block: number) => void,
  walkOpts: WalkOptions = {},
): DeviceRoot[] {
  const roots: DeviceRoot[] = [];
  walkBTree(io, mappingRoot, TOP_LEVEL_VALUE_SIZE, {
    leaf(node: BTreeNode) {
      roots.push(...deviceRootsOf(node));
    },
    nodeRef,
    error: onError,
  }, walkOpts);
  return roots;
}

export interface DeviceDetailsEntry extends DeviceDetails {
  devId: number;
}

/** Every device's details, in dev_id order. */
export function readDeviceDetails(
  io: BlockReader,
  detailsRoot: number,
  onError: ErrorSink,
  nodeRef?: (block: number) => void,
  walkOpts: WalkOptions = {},
): DeviceDetailsEntry[] {
  const devices: DeviceDetailsEntry[] = [];
  walkBTree(io, detailsRoot, DEVICE_DETAILS_SIZE, {
    leaf(node: BTreeNode) {
      for (let i = 0; i < node.nrEntries; i++) {
        devices.push({ devId: node.keyNumber(i), ...decodeDeviceDetails(node.buf, node.valueOffset(i)) });
      }
    },
    nodeRef,
    error: onError,
  }, walkOpts);
  return devices;
}

/**
 * Walks one device's bottom-level tree, leaves in thin-block order. With a memo shared across
 * devices, a subtree shared by snapshots is visited once (its leaves are not repeated).
 */
export function walkDeviceTree(
  io: BlockReader,
  root: number,
  visitor: BTreeVisitor,
  memo?: SubtreeMemo,
  walkOpts: WalkOptions = {},
): SubtreeSummary | null {
  return walkBTree(io, root, MAPPING_VALUE_SIZE, visitor, { ...walkOpts, memo });
}
