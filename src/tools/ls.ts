// thin_ls as a library function: each device of a pool with the fields asked for (the 16 of the
// reference thin_ls 0.9.0 and the HIGHEST_* ones of 1.x), as its table or as JSON.
//
// EXCLUSIVE counts a device's mappings to data blocks that no other mapping uses, counting a
// leaf shared by several devices once per device (as 0.9.0 does, walking every device's whole
// tree). We get the same numbers reading each node about twice whatever the number of devices:
// 1. every device tree is walked with shared subtrees visited once, each data block counted
//    (saturating at "shared") for each leaf reaching it, and each node's references counted;
// 2. subtrees referenced more than once are walked once more: their blocks become shared;
// 3. each device's tree is walked skipping those subtrees (nothing in them is exclusive),
//    counting its mappings to blocks still counted once.
import { BlockReader } from '../io/block-io.js';
import { openMetadataInput } from '../io/open.js';
import { FdSink } from '../formats/output.js';
import { JsonTableWriter } from '../formats/json-writer.js';
import { TableWriter, formatDiskUnit } from '../formats/ls-table.js';
import { BTreeNode, NODE_HEADER_SIZE } from '../pdata/btree/node.js';
import { BTreeError, SubtreeMemo, walkBTree } from '../pdata/btree/walk.js';
import { U64, U64_MAX } from '../pdata/le.js';
import { floorBTree } from '../pdata/btree/lookup.js';
import { sharedMetadataBlocks } from '../pdata/space-map/metadata.js';
import {
  DeviceDetailsEntry, MAPPING_VALUE_SIZE, readDeviceDetails, readDeviceRoots,
} from '../thin/mapping-tree.js';
import { selectSuperblock } from '../thin/read-metadata.js';
import { dataSpaceMapRoot, metadataSpaceMapRoot, readSuperblock } from '../thin/superblock.js';

export const LS_FIELDS = [
  'DEV', 'MAPPED_BLOCKS', 'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS',
  'MAPPED_SECTORS', 'EXCLUSIVE_SECTORS', 'SHARED_SECTORS',
  'MAPPED_BYTES', 'EXCLUSIVE_BYTES', 'SHARED_BYTES',
  'MAPPED', 'EXCLUSIVE', 'SHARED',
  'TRANSACTION', 'CREATE_TIME', 'SNAP_TIME',
  // 1.x
  'HIGHEST_BLOCK', 'HIGHEST_SECTOR', 'HIGHEST_BYTE', 'HIGHEST_MAPPED',
] as const;
export type LsField = (typeof LS_FIELDS)[number];

export const DEFAULT_LS_FIELDS: LsField[] = ['DEV', 'MAPPED', 'CREATE_TIME', 'SNAP_TIME'];

/** The reference's message for damaged trees. */
export const LS_DAMAGE_MESSAGE = 'metadata contains errors (run thin_check for details).';

export class LsError extends Error {}

/**
 * `-o` as the reference parses it: comma-separated names (a trailing comma is ignored). Ours:
 * the word `json` among them asks for JSON output (so `--format json` works as for thin_dump);
 * the default fields are listed when it is the only one.
 */
export function parseLsFields(list: string): { fields: LsField[]; json: boolean } {
  const items = list.split(',');
  if (items.length > 1 && items[items.length - 1] === '') items.pop();
  if (list === '') return { fields: [], json: false };
  const json = items.includes('json');
  const named = items.filter((item) => item !== 'json');
  const fields = named.map((item) => {
    if (!(LS_FIELDS as readonly string[]).includes(item)) throw new LsError('unknown field');
    return item as LsField;
  });
  return { fields: json && fields.length === 0 ? DEFAULT_LS_FIELDS : fields, json };
}

export interface LsOptions {
  /** Mappings read so far, of about twice the devices' mapped blocks (two passes). */
  onProgress?: (done: number, total: number) => void;
  fields?: LsField[];
  json?: boolean;
  headers?: boolean;
  metadataSnap?: true | number;
  stdoutFd?: number;
}

/** One device's row: its details and what its tree adds. */
export interface LsDevice {
  details: DeviceDetailsEntry;
  exclusive: number;
  /** The highest mapped thin block, or null for a device without mappings. */
  highest: U64 | null;
}

const EXCLUSIVE_FIELDS = new Set<LsField>([
  'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS', 'EXCLUSIVE_SECTORS', 'SHARED_SECTORS', 'EXCLUSIVE_BYTES', 'SHARED_BYTES',
  'EXCLUSIVE', 'SHARED',
]);
/** Fields shown in units ("670MiB"): strings in JSON. */
const SIZE_FIELDS = new Set<string>(['MAPPED', 'EXCLUSIVE', 'SHARED', 'HIGHEST_MAPPED']);
const HIGHEST_FIELDS = new Set<LsField>(['HIGHEST_BLOCK', 'HIGHEST_SECTOR', 'HIGHEST_BYTE', 'HIGHEST_MAPPED']);


/** Blocks per page of DataBlockUse: pages are allocated where mappings point. */
const PAGE_BLOCKS = 1 << 20;

/** How many leaves map each data block: none, one, or more (2 bits a block). */
class DataBlockUse {
  private readonly pages: Uint8Array[] = [];

  constructor(readonly nrBlocks: U64) {}

  /** Counts the data blocks of a mapping leaf once more. */
  countLeaf(node: BTreeNode): void {
    const words = node.words;
    const values = (NODE_HEADER_SIZE + 8 * node.maxEntries) / 4;
    for (let i = 0, w = values; i < node.nrEntries; i++, w += 2) {
      const b = words[w + 1] * 256 + (words[w] >>> 24);
      if (b >= this.nrBlocks) {
        throw new BTreeError(node.block, `data block ${b} is beyond the data device (${this.nrBlocks} blocks)`, 0, 0);
      }
      // Data blocks have 40 bits: divide rather than shift.
      const p = Math.floor(b / PAGE_BLOCKS);
      const within = b - p * PAGE_BLOCKS;
      const page = (this.pages[p] ??= new Uint8Array(PAGE_BLOCKS / 4));
      const shift = (within & 3) * 2;
      if (((page[within >>> 2] >> shift) & 3) < 2) page[within >>> 2] += 1 << shift;
    }
  }

  /** The leaf's mappings to blocks used once. */
  exclusiveIn(node: BTreeNode): number {
    const words = node.words;
    const values = (NODE_HEADER_SIZE + 8 * node.maxEntries) / 4;
    let n = 0;
    for (let i = 0, w = values; i < node.nrEntries; i++, w += 2) {
      const b = words[w + 1] * 256 + (words[w] >>> 24);
      const p = Math.floor(b / PAGE_BLOCKS);
      const within = b - p * PAGE_BLOCKS;
      if (((this.pages[p][within >>> 2] >> ((within & 3) * 2)) & 3) === 1) n++;
    }
    return n;
  }
}

/** The devices with what the fields need; throws LsError on damage. */
export function listDevices(
  io: BlockReader,
  fields: readonly LsField[],
  metadataSnap?: true | number,
  onProgress?: (done: number, total: number) => void,
): LsDevice[] {
  const sb = selectSuperblock(io, metadataSnap);
  const fail = (e: BTreeError): never => {
    throw new LsError(`${LS_DAMAGE_MESSAGE} ${e.message}`);
  };
  const details = readDeviceDetails(io, sb.deviceDetailsRoot, fail);
  const devices: LsDevice[] = details.map((d) => ({ details: d, exclusive: 0, highest: null }));
  // The mapping tree's top level is read whatever the fields: a listing of a pool whose devices
  // cannot be reached is not one to print as if it were sound (1.x refuses it too).
  const rootOf = new Map(readDeviceRoots(io, sb.dataMappingRoot, fail).map((r) => [r.devId, r.root]));
  const needExclusive = fields.some((f) => EXCLUSIVE_FIELDS.has(f));
  const needHighest = fields.some((f) => HIGHEST_FIELDS.has(f));
  if (!needExclusive && !needHighest) return devices;

  const roots = details.map((d) => {
    const root = rootOf.get(d.devId);
    if (root === undefined) throw new LsError("couldn't find mapping tree root");
    return root;
  });
  try {
    if (needHighest) devices.forEach((dev, i) => (dev.highest = highestKey(io, roots[i])));
    if (needExclusive) {
      const live = readSuperblock(io);
      countExclusive(io, devices, roots, dataSpaceMapRoot(live).nrBlocks, sharedMetadataBlocks(io, metadataSpaceMapRoot(live)), onProgress);
    }
  } catch (e) {
    if (e instanceof BTreeError) fail(e);
    throw e;
  }
  return devices;
}

function countExclusive(
  io: BlockReader,
  devices: LsDevice[],
  roots: number[],
  nrDataBlocks: U64,
  shared: (block: number) => boolean,
  onProgress?: (done: number, total: number) => void,
): void {
  const use = new DataBlockUse(nrDataBlocks);
  let total = 0;
  for (const d of devices) total += 2 * Number(d.details.mappedBlocks);
  let done = 0;
  const progress = (node: BTreeNode) => {
    done += node.nrEntries;
    onProgress?.(done, total);
  };
  const refs = new Uint8Array(io.nrBlocks);
  // Only the nodes the space map counts more than once are remembered (an entry per node of the
  // pool grew by 30 MiB at 20M mappings): one reached twice that it counts once (a damaged space
  // map) is walked again, its blocks counted again, which makes them shared as they are.
  const memo: SubtreeMemo = new Map();
  const fail = (e: BTreeError): never => {
    throw e;
  };
  for (const root of roots) {
    walkBTree(io, root, MAPPING_VALUE_SIZE, {
      leaf: (node) => {
        use.countLeaf(node);
        progress(node);
      },
      nodeRef: (b) => {
        if (b < refs.length && refs[b] < 2) refs[b]++;
      },
      error: fail,
    }, { memo, memoize: shared });
  }
  // Subtrees reached more than once: a second count makes their blocks shared.
  const sharedMemo: SubtreeMemo = new Map();
  const skipShared: SubtreeMemo = new Map();
  for (let b = 0; b < refs.length; b++) {
    if (refs[b] < 2) continue;
    skipShared.set(b, memo.get(b) ?? null);
    walkBTree(io, b, MAPPING_VALUE_SIZE, { leaf: (node) => use.countLeaf(node), error: fail }, { memo: sharedMemo, memoize: shared });
  }
  devices.forEach((dev, i) => {
    // Each device's own subtrees; the memo makes the walk pass over shared ones, and takes
    // nothing more (a walk adds every node it may meet again to its memo).
    walkBTree(io, roots[i], MAPPING_VALUE_SIZE, {
      leaf: (node) => {
        dev.exclusive += use.exclusiveIn(node);
        progress(node);
      },
      error: fail,
    }, { memo: skipShared, memoize: () => false });
  });
}

/** The last key of a device tree, or null when it maps nothing. */
function highestKey(io: BlockReader, root: number): U64 | null {
  const last = floorBTree(io, root, MAPPING_VALUE_SIZE, U64_MAX);
  return last && last.node.key(last.index);
}

const TWO_64 = 1n << 64n;

/** The cells of one device's row, as the reference formats them. */
function cells(dev: LsDevice, fields: readonly LsField[], dataBlockSize: number): string[] {
  const d = dev.details;
  const mapped = BigInt(d.mappedBlocks);
  const exclusive = BigInt(dev.exclusive);
  // The reference's u64 arithmetic: wrong mapped_blocks (corruption) wrap, as there.
  const shared = (mapped - exclusive + TWO_64) % TWO_64;
  const sectors = BigInt(dataBlockSize);
  const highest = dev.highest === null ? 0n : BigInt(dev.highest);
  return fields.map((f) => {
    switch (f) {
      case 'DEV': return String(d.devId);
      case 'MAPPED_BLOCKS': return String(mapped);
      case 'EXCLUSIVE_BLOCKS': return String(exclusive);
      case 'SHARED_BLOCKS': return String(shared);
      case 'MAPPED_SECTORS': return String(mapped * sectors);
      case 'EXCLUSIVE_SECTORS': return String(exclusive * sectors);
      case 'SHARED_SECTORS': return String(shared * sectors);
      case 'MAPPED_BYTES': return String(mapped * sectors * 512n);
      case 'EXCLUSIVE_BYTES': return String(exclusive * sectors * 512n);
      case 'SHARED_BYTES': return String(shared * sectors * 512n);
      case 'MAPPED': return formatDiskUnit(mapped * sectors * 512n);
      case 'EXCLUSIVE': return formatDiskUnit(exclusive * sectors * 512n);
      case 'SHARED': return formatDiskUnit(shared * sectors * 512n);
      case 'TRANSACTION': return String(d.transactionId);
      case 'CREATE_TIME': return String(d.creationTime);
      case 'SNAP_TIME': return String(d.snapshottedTime);
      // As 1.x: a device without mappings shows block 0.
      case 'HIGHEST_BLOCK': return String(highest);
      case 'HIGHEST_SECTOR': return String((highest + 1n) * sectors - 1n);
      case 'HIGHEST_BYTE': return String((highest + 1n) * sectors * 512n - 1n);
      // 1.x shows the size of HIGHEST_BYTE (one byte short of the mapped end).
      case 'HIGHEST_MAPPED': return formatDiskUnit((highest + 1n) * sectors * 512n - 1n);
    }
  });
}

/** Prints the table of the pool's devices. */
export function lsPool(input: string, opts: LsOptions = {}): void {
  const fields = opts.fields ?? DEFAULT_LS_FIELDS;
  const io = openMetadataInput(input);
  try {
    const sb = selectSuperblock(io, opts.metadataSnap);
    const devices = listDevices(io, fields, opts.metadataSnap, opts.onProgress);
    const sink = new FdSink(opts.stdoutFd ?? 1);
    if (opts.json) {
      const json = new JsonTableWriter(sink, fields, SIZE_FIELDS);
      for (const dev of devices) json.row(cells(dev, fields, sb.dataBlockSize));
      json.end();
    } else {
      const table = new TableWriter();
      if (opts.headers ?? true) table.row([...fields]);
      for (const dev of devices) table.row(cells(dev, fields, sb.dataBlockSize));
      table.render(sink);
    }
    sink.flush();
  } finally {
    io.close();
  }
}
