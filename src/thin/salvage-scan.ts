// The whole-device scan behind a repair: every block is classified by the salt of its checksum
// (superblock, B-tree node, bitmap, index) and B-tree nodes by what their leaves hold, so that
// tree roots the superblock no longer leads to can be found again. The per-block tables are
// typed arrays (a few bytes a block); only internal nodes and possible top-level leaves are
// listed, and they are few.
import { BLOCK_SIZE, BlockReader } from '../io/block-io.js';
import { BITMAP_CSUM_XOR, BTREE_CSUM_XOR, INDEX_CSUM_XOR, SUPERBLOCK_CSUM_XOR, crc32c } from '../pdata/checksum.js';
import { BTreeNode, INTERNAL_NODE, LEAF_NODE, maxEntriesFor } from '../pdata/btree/node.js';
import { DEVICE_DETAILS_SIZE } from './device-details.js';
import { MAX_TIME } from './mapping.js';

export enum BlockKind {
  Unknown = 0,
  Superblock,
  Bitmap,
  Index,
  Internal,
  /** A leaf of u64 values that are all block numbers: maybe the mapping tree's top level. */
  TopLeaf,
  /** A leaf of u64 values: a device's mappings (or an empty tree of either level). */
  MappingLeaf,
  DetailsLeaf,
  /** A node of some other tree (space-map index or ref counts). */
  OtherNode,
}

const SCAN_RUN = 64;

export interface BlockScan {
  nrBlocks: number;
  kind: Uint8Array;
  /** Entries of each leaf. */
  entries: Uint16Array;
  /** Newest time in each mapping or details leaf (mapping time, or creation/snapshot time). */
  maxTime: Uint32Array;
  /** Blocks that a sound parent (internal node or top-level leaf) points at: not roots. */
  referenced: Uint8Array;
  /** Superblock copies found away from block 0 (metadata snapshots). */
  superblockCopies: number[];
}

function classify(buf: Buffer, b: number, nrBlocks: number, scan: BlockScan, internals: number[], topLeaves: number[]): void {
  if (buf.readUInt32LE(12) !== 0 || buf.readUInt32LE(8) !== b) return;
  const salt = (buf.readUInt32LE(0) ^ crc32c(buf, 4, BLOCK_SIZE) ^ 0xffffffff) >>> 0;
  if (salt === SUPERBLOCK_CSUM_XOR) {
    scan.kind[b] = BlockKind.Superblock;
    if (b !== 0) scan.superblockCopies.push(b);
    return;
  }
  if (salt === BITMAP_CSUM_XOR) scan.kind[b] = BlockKind.Bitmap;
  if (salt === INDEX_CSUM_XOR) scan.kind[b] = BlockKind.Index;
  if (salt !== BTREE_CSUM_XOR) return;

  const node = new BTreeNode(b, buf);
  if (node.flags !== INTERNAL_NODE && node.flags !== LEAF_NODE) return;
  if (node.maxEntries !== maxEntriesFor(node.valueSize) || node.nrEntries > node.maxEntries) return;
  if (!node.isLeaf) {
    if (node.valueSize !== 8) return;
    scan.kind[b] = BlockKind.Internal;
    internals.push(b);
    return;
  }
  scan.entries[b] = node.nrEntries;
  if (node.valueSize === DEVICE_DETAILS_SIZE) {
    let newest = 0;
    for (let i = 0; i < node.nrEntries; i++) {
      const off = node.valueOffset(i);
      newest = Math.max(newest, buf.readUInt32LE(off + 16), buf.readUInt32LE(off + 20));
    }
    scan.kind[b] = BlockKind.DetailsLeaf;
    scan.maxTime[b] = newest;
    return;
  }
  if (node.valueSize !== 8) {
    scan.kind[b] = BlockKind.OtherNode;
    return;
  }
  let allBlocks = node.nrEntries > 0;
  let newest = 0;
  for (let i = 0; i < node.nrEntries; i++) {
    const off = node.valueOffset(i);
    const lo = buf.readUInt32LE(off);
    if (buf.readUInt32LE(off + 4) !== 0 || lo >= nrBlocks) allBlocks = false;
    newest = Math.max(newest, lo & MAX_TIME);
  }
  if (allBlocks) {
    scan.kind[b] = BlockKind.TopLeaf;
    topLeaves.push(b);
  } else {
    scan.kind[b] = BlockKind.MappingLeaf;
    scan.maxTime[b] = newest;
  }
}

const isNode = (k: number): boolean =>
  k === BlockKind.Internal || k === BlockKind.TopLeaf || k === BlockKind.MappingLeaf ||
  k === BlockKind.DetailsLeaf || k === BlockKind.OtherNode;

/** Reads every block once; `progress` is told how many blocks are done. */
export function scanBlocks(io: BlockReader, progress?: (done: number) => void): BlockScan {
  const nrBlocks = io.nrBlocks;
  const scan: BlockScan = {
    nrBlocks,
    kind: new Uint8Array(nrBlocks),
    entries: new Uint16Array(nrBlocks),
    maxTime: new Uint32Array(nrBlocks),
    referenced: new Uint8Array(nrBlocks),
    superblockCopies: [],
  };
  const internals: number[] = [];
  const topLeaves: number[] = [];
  const run = Buffer.allocUnsafe(SCAN_RUN * BLOCK_SIZE);
  for (let b = 0; b < nrBlocks; b += SCAN_RUN) {
    const count = Math.min(SCAN_RUN, nrBlocks - b);
    io.readRun(b, count, run);
    for (let i = 0; i < count; i++) {
      classify(run.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE), b + i, nrBlocks, scan, internals, topLeaves);
    }
    progress?.(b + count);
  }

  // A top-level leaf must point at mapping trees; one that doesn't was a mapping leaf after all.
  for (const b of topLeaves) {
    const node = new BTreeNode(b, io.read(b));
    const children = Array.from({ length: node.nrEntries }, (_, i) => node.valueBlock(i));
    const k = (c: number) => scan.kind[c];
    if (children.every((c) => k(c) === BlockKind.Internal || k(c) === BlockKind.MappingLeaf)) {
      for (const c of children) scan.referenced[c] = 1;
    } else {
      scan.kind[b] = BlockKind.MappingLeaf;
    }
  }
  // Children of a sound internal node are not roots.
  for (const b of internals) {
    const node = new BTreeNode(b, io.read(b));
    const children = Array.from({ length: node.nrEntries }, (_, i) => node.valueBlock(i));
    if (children.length > 0 && children.every((c) => c < nrBlocks && isNode(scan.kind[c]))) {
      for (const c of children) scan.referenced[c] = 1;
    }
  }
  return scan;
}

/** The kind of leaf a subtree holds, found down its leftmost path (-1 when it is unsound). */
export function leafKindOf(io: BlockReader, scan: BlockScan, root: number): number {
  let b = root;
  for (let depth = 0; depth < 16; depth++) {
    if (b >= scan.nrBlocks) return -1;
    const k = scan.kind[b];
    if (k !== BlockKind.Internal) return isNode(k) ? k : -1;
    const node = new BTreeNode(b, io.read(b));
    if (node.nrEntries === 0) return -1;
    b = node.valueBlock(0);
  }
  return -1;
}

export interface SubtreeStats {
  mappings: number;
  newest: number;
}

/**
 * Mappings and newest time under a mapping subtree, from the scan's leaf tables, so candidate
 * trees can be ranked without validating them; memoised as snapshots share subtrees.
 */
export function subtreeStats(io: BlockReader, scan: BlockScan, root: number, memo: Map<number, SubtreeStats>): SubtreeStats {
  const known = memo.get(root);
  if (known) return known;
  const stats: SubtreeStats = { mappings: 0, newest: 0 };
  memo.set(root, stats); // a cycle then counts nothing twice
  if (root < scan.nrBlocks) {
    const k = scan.kind[root];
    if (k === BlockKind.MappingLeaf) {
      stats.mappings = scan.entries[root];
      stats.newest = scan.maxTime[root];
    } else if (k === BlockKind.Internal) {
      const node = new BTreeNode(root, io.read(root));
      for (let i = 0; i < node.nrEntries; i++) {
        const child = subtreeStats(io, scan, node.valueBlock(i), memo);
        stats.mappings += child.mappings;
        stats.newest = Math.max(stats.newest, child.newest);
      }
    }
  }
  return stats;
}

/** Blocks no sound parent points at whose leaves are of `leafKind`: candidate tree roots. */
export function candidateRoots(io: BlockReader, scan: BlockScan, leafKind: BlockKind): number[] {
  const roots: number[] = [];
  for (let b = 0; b < scan.nrBlocks; b++) {
    const k = scan.kind[b];
    if (scan.referenced[b] || (k !== BlockKind.Internal && k !== leafKind)) continue;
    if (leafKindOf(io, scan, b) === leafKind) roots.push(b);
  }
  return roots;
}
