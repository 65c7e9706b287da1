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
import { BlockReader } from '../io/block-io.js';
import { BTreeNode, NODE_HEADER_SIZE } from '../pdata/btree/node.js';
import { walkBTree } from '../pdata/btree/walk.js';
import { RangeError64 } from '../pdata/le.js';
import { MetadataVisitor, PoolInfo } from './events.js';
import {
  DeviceDetailsEntry,
  DeviceRoot,
  TOP_LEVEL_VALUE_SIZE,
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
  devIds?: ReadonlySet<number>;
  /** Devices only, no mappings (their trees are not read). */
  skipMappings?: boolean;
  /** Mappings read so far, out of the selected devices' mapped_blocks; called once per leaf. */
  onProgress?: (done: number, total: number) => void;
}

const TWO_32 = 0x100000000;

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
  const allDetails = unrepresentableIsDamage('device details tree', () =>
    readDeviceDetails(io, sb.deviceDetailsRoot, (e) => detailErrors.push(e.message), undefined, DUMP_WALK),
  );
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
  try {
    walkBTree(io, sb.dataMappingRoot, TOP_LEVEL_VALUE_SIZE, {
      leaf(node) {
        for (let i = 0; i < node.nrEntries; i++) roots.push({ devId: node.key(i), root: node.valueU64(i) });
      },
      error: (e) => noteTopError(e.message),
      internal: childBeyondEnd(io),
    }, DUMP_WALK);
  } catch (e) {
    if (!(e instanceof RangeError64)) throw e;
    noteTopError(e.message);
  }
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
    for (const r of roots) if (selected(r.devId)) total += details.get(r.devId)?.mappedBlocks ?? 0;
  }
  let done = 0;

  visitor.superblockBegin(pool);
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
      });
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
      const child = node.valueU64(i);
      if (child >= io.nrBlocks) return `child ${child} is beyond the end of the metadata device`;
    }
    return null;
  };
}

/** A u64 beyond 2^53 in a tree is corruption, reported like any other damage. */
function unrepresentableIsDamage<T>(where: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (e instanceof RangeError64) throw new MetadataDamageError(`${where}: ${e.message}`);
    throw e;
  }
}

/**
 * Emits one device's mappings as runs: consecutive thin blocks mapped to consecutive data blocks
 * at the same time, across leaf boundaries. Returns null, or why the walk stopped early.
 */
function emitMappings(
  io: BlockReader,
  root: number,
  visitor: MetadataVisitor,
  leafDone: (entries: number) => void,
): string | null {
  let damage: string | null = null;
  let runThin = 0;
  let runData = 0;
  let runTime = 0;
  let runLen = 0;

  const leaf = (node: BTreeNode): void => {
    if (damage !== null) return;
    const buf = node.buf;
    const n = node.nrEntries;
    const values = NODE_HEADER_SIZE + 8 * node.maxEntries;
    for (let i = 0; i < n; i++) {
      const k = NODE_HEADER_SIZE + 8 * i;
      const thin = buf.readUInt32LE(k + 4) * TWO_32 + buf.readUInt32LE(k);
      const v = values + 8 * i;
      const lo = buf.readUInt32LE(v);
      const data = buf.readUInt32LE(v + 4) * 256 + (lo >>> 24);
      const time = lo & 0xffffff;
      if (runLen !== 0 && thin === runThin + runLen && data === runData + runLen && time === runTime) {
        runLen++;
      } else {
        if (runLen !== 0) visitor.mapRun(runThin, runData, runLen, runTime);
        runThin = thin;
        runData = data;
        runTime = time;
        runLen = 1;
      }
    }
    if (n !== 0) leafDone(n);
  };

  try {
    walkDeviceTree(io, root, {
      leaf,
      error(e) {
        damage ??= e.message;
      },
      internal: childBeyondEnd(io),
    }, undefined, DUMP_WALK);
  } catch (e) {
    // A key too large for the walker to represent.
    if (!(e instanceof RangeError64)) throw e;
    damage ??= e.message;
  }
  if (runLen !== 0) visitor.mapRun(runThin, runData, runLen, runTime);
  return damage;
}
