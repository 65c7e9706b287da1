// Walks a pool's metadata on disk and emits the MetadataVisitor stream: the superblock, then each
// device (top level of the mapping tree joined with the details tree, in dev_id order) with its
// mappings merged into runs. Mappings are decoded straight from each leaf's buffer and streamed;
// nothing per mapping is kept or allocated.
//
// Verdicts and partial output follow the reference thin_dump 0.9.0:
// - the details tree is read first; damage there fails the dump before anything is printed;
// - devices are emitted as the top level is read; damage in it stops the dump after the devices
//   before it, without closing the superblock;
// - damage in a device's tree stops its mappings at the damaged node: the run in hand is emitted,
//   the device is closed, and the dump fails without closing the superblock;
// - a device in the mapping tree without details is an error; details without mappings are
//   not printed.
//
// With `sharedSubtrees` (our option; 1.x prints this form) leaves shared between the devices are
// printed once, as <def>s before the devices, which <ref> them (see shared-subtrees.ts). That
// needs a first pass over the trees, so damage in a device's tree fails before anything is printed.
import { BlockReader } from '../io/block-io.js';
import { BTreeNode, nodeDefect } from '../pdata/btree/node.js';
import { walkBTree } from '../pdata/btree/walk.js';
import { U64 } from '../pdata/le.js';
import { MetadataVisitor, PoolInfo } from './events.js';
import { MappingRuns } from './mapping-runs.js';
import { SharedLeafIndex } from './shared-subtrees.js';
import {
  DeviceDetailsEntry,
  DeviceRoot,
  MAPPING_VALUE_SIZE,
  TOP_LEVEL_VALUE_SIZE,
  deviceRootsOf,
  readDeviceDetails,
  walkDeviceTree,
} from './mapping-tree.js';
import { Superblock, dataSpaceMapRoot, readSuperblock } from './superblock.js';

/** The reference's wording, which scripts around thin_dump look for. */
export const DAMAGE_MESSAGE =
  'metadata contains errors (run thin_check for details).\nperhaps you wanted to run with --repair';

/** The trees are damaged; `detail` says where (the reference prints only DAMAGE_MESSAGE). */
export class MetadataDamageError extends Error {
  constructor(readonly detail: string) {
    super(DAMAGE_MESSAGE);
  }
}

/** The metadata snapshot asked for is absent or not the one the superblock holds. */
export class MetadataSnapError extends Error {}

export interface ReadMetadataOptions {
  /** Read the metadata snapshot: `true` for the one the superblock holds, or a block the user named. */
  metadataSnap?: true | number;
  /** Only these devices. */
  devIds?: ReadonlySet<U64>;
  /** Devices only, no mappings (their trees are not read). */
  skipMappings?: boolean;
  /** Print leaves several devices share once, as defs the devices ref (the 1.x shared form). */
  sharedSubtrees?: boolean;
  /** Mappings read so far, out of the selected devices' mapped_blocks; called once per leaf. */
  onProgress?: (done: number, total: number) => void;
}

/** Picks the superblock to dump: block 0, or the held metadata snapshot it names. */
export function selectSuperblock(io: BlockReader, metadataSnap?: true | number): Superblock {
  const live = readSuperblock(io);
  if (metadataSnap === undefined) return live;
  if (live.heldRoot === 0) throw new MetadataSnapError('no current metadata snap');
  if (metadataSnap !== true && metadataSnap !== live.heldRoot) {
    throw new MetadataSnapError(
      `metadata snapshot does not match that in superblock (block ${metadataSnap}, held root ${live.heldRoot})`,
    );
  }
  return readSuperblock(io, live.heldRoot);
}

// The reference thin_dump prints nodes under a third full (thin_check rejects them): a dump
// must save whatever is readable.
const DUMP_WALK = { allowUnderfull: true };

export function readMetadata(io: BlockReader, visitor: MetadataVisitor, opts: ReadMetadataOptions = {}): void {
  const sb = selectSuperblock(io, opts.metadataSnap);
  const selected = (devId: number) => !opts.devIds || opts.devIds.has(devId);

  const detailErrors: string[] = [];
  const details = new Map<number, DeviceDetailsEntry>();
  const allDetails = readDeviceDetails(io, sb.deviceDetailsRoot, (e) => detailErrors.push(e.message), undefined, DUMP_WALK);
  for (const d of allDetails) {
    if (selected(d.devId)) details.set(d.devId, d);
  }
  if (detailErrors.length) throw new MetadataDamageError(`device details tree: ${detailErrors[0]}`);

  // The top level is read whole (one entry per device), remembering how many devices came
  // before its first damaged node: those are still dumped.
  let topError: string | undefined;
  const roots: DeviceRoot[] = [];
  let rootsBeforeError = 0;
  const noteTopError = (message: string) => {
    if (topError !== undefined) return;
    topError = `mapping tree top level: ${message}`;
    rootsBeforeError = roots.length;
  };
  walkBTree(io, sb.dataMappingRoot, TOP_LEVEL_VALUE_SIZE, {
    leaf: (node) => roots.push(...deviceRootsOf(node)),
    error: (e) => noteTopError(e.message),
    internal: childBeyondEnd(io),
  }, DUMP_WALK);
  if (topError === undefined) rootsBeforeError = roots.length;

  const pool: PoolInfo = {
    // 0.9.0 never prints the on-disk uuid (the kernel leaves it zero anyway).
    uuid: '',
    time: sb.time,
    transaction: sb.transactionId,
    flags: sb.flags,
    version: sb.version,
    dataBlockSize: sb.dataBlockSize,
    // The snapshot's copy of the superblock has its space map roots wiped by the kernel, so the
    // reference reports 0 data blocks for it.
    nrDataBlocks: opts.metadataSnap === undefined ? dataSpaceMapRoot(sb).nrBlocks : 0,
  };

  let total = 0;
  if (opts.onProgress && !opts.skipMappings) {
    for (const r of roots) if (selected(r.devId)) total += Number(details.get(r.devId)?.mappedBlocks ?? 0);
  }
  let done = 0;

  let shared: SharedLeafIndex | undefined;
  if (opts.sharedSubtrees && !opts.skipMappings) {
    shared = indexSharedLeaves(io, roots.slice(0, rootsBeforeError).filter((r) => selected(r.devId)));
  }

  visitor.superblockBegin(pool);
  if (shared) emitDefs(io, shared, visitor);
  for (let i = 0; i < rootsBeforeError; i++) {
    const { devId, root } = roots[i];
    if (!selected(devId)) continue;
    const d = details.get(devId);
    if (!d) throw new Error(`mappings present for device ${devId}, but it isn't present in device tree`);
    visitor.deviceBegin({
      devId,
      mappedBlocks: d.mappedBlocks,
      transaction: d.transactionId,
      creationTime: d.creationTime,
      snapTime: d.snapshottedTime,
    });
    if (!opts.skipMappings) {
      const damage = emitMappings(io, root, visitor, (n) => {
        done += n;
        opts.onProgress?.(done, total);
      }, shared);
      if (damage !== null) {
        visitor.deviceEnd();
        throw new MetadataDamageError(`device ${devId}: ${damage}`);
      }
    }
    visitor.deviceEnd();
  }
  if (topError !== undefined) throw new MetadataDamageError(topError);
  visitor.superblockEnd();
}

/**
 * The reference reads ahead all children of an internal node before visiting it, so one child
 * beyond the end of a (truncated) device fails the whole node; so does ours, for the same output.
 */
function childBeyondEnd(io: BlockReader): (node: BTreeNode) => string | null {
  return (node) => {
    for (let i = 0; i < node.nrEntries; i++) {
      const child = node.valueBlock(i);
      if (child >= io.nrBlocks) return `child ${child} is beyond the end of the metadata device`;
    }
    return null;
  };
}

/** Walks a device's tree; returns null, or why the walk stopped early. */
function walkMappings(io: BlockReader, root: number, leaf: (node: BTreeNode) => void): string | null {
  let damage: string | null = null;
  walkDeviceTree(io, root, {
    leaf(node) {
      if (damage === null) leaf(node);
    },
    error(e) {
      damage ??= e.message;
    },
    internal: childBeyondEnd(io),
  }, undefined, DUMP_WALK);
  return damage;
}

/**
 * Emits one device's mappings as runs, across leaf boundaries. With a shared-leaf index, a run of
 * shared leaves becomes a ref where it begins and its leaves are skipped. Returns null, or why
 * the walk stopped early.
 */
function emitMappings(
  io: BlockReader,
  root: number,
  visitor: MetadataVisitor,
  leafDone: (entries: number) => void,
  shared?: SharedLeafIndex,
): string | null {
  const runs = new MappingRuns(visitor);
  const damage = walkMappings(io, root, (node) => {
    const n = node.nrEntries;
    if (n === 0) return;
    if (shared?.isShared(node.block)) {
      if (shared.isRunHead(node.block)) {
        runs.flush();
        visitor.ref!(String(node.block));
      }
    } else {
      runs.leaf(node);
    }
    leafDone(n);
  });
  runs.flush();
  return damage;
}

/** The first pass of the shared form: which leaves the dumped devices share, and in which runs. */
function indexSharedLeaves(io: BlockReader, roots: DeviceRoot[]): SharedLeafIndex {
  const index = new SharedLeafIndex(io.nrBlocks);
  for (const { devId, root } of roots) {
    const damage = walkMappings(io, root, (node) => {
      if (node.nrEntries !== 0) index.leaf(node.block);
    });
    if (damage !== null) throw new MetadataDamageError(`device ${devId}: ${damage}`);
    index.endDevice();
  }
  return index;
}

/** Each run of shared leaves, as a def named after its first leaf, before any device. */
function emitDefs(io: BlockReader, shared: SharedLeafIndex, visitor: MetadataVisitor): void {
  if (!visitor.defBegin || !visitor.defEnd || !visitor.ref) {
    throw new Error('this output format has no shared-subtree form');
  }
  for (const head of shared.runHeads()) {
    visitor.defBegin(String(head));
    const runs = new MappingRuns(visitor);
    for (let b = head; b !== -1; b = shared.nextInRun(b)) {
      // Validated by the first pass's walk; the checks guard against the file changing since.
      const node = new BTreeNode(b, io.read(b));
      const defect = nodeDefect(node, b, MAPPING_VALUE_SIZE) ?? (node.isLeaf ? null : 'not a leaf');
      if (defect) throw new MetadataDamageError(`shared leaf ${b}: ${defect}`);
      runs.leaf(node);
    }
    runs.flush();
    visitor.defEnd();
  }
}
