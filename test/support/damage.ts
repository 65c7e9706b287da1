// Damage for thin_check's corpus: each function corrupts one thing in a metadata file in place.
// Where the point is a wrong value rather than a broken block, the block is re-sealed with a
// fresh checksum so only that value is wrong.
import * as fs from 'node:fs';
import { BLOCK_SIZE, BlockReader } from '../../src/io/block-io.js';
import { BTreeNode } from '../../src/pdata/btree/node.js';
import { walkBTree } from '../../src/pdata/btree/walk.js';
import { BITMAP_CSUM_XOR, BTREE_CSUM_XOR, INDEX_CSUM_XOR, SUPERBLOCK_CSUM_XOR, sealBlock } from '../../src/pdata/checksum.js';
import { readBlockNr, writeU64 } from '../../src/pdata/le.js';
import { BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, bitmapCount } from '../../src/pdata/space-map/common.js';
import { readDiskIndex } from '../../src/pdata/space-map/disk.js';
import { INDEX_HEADER_SIZE, readMetadataIndex } from '../../src/pdata/space-map/metadata.js';
import { DEVICE_DETAILS_SIZE } from '../../src/thin/device-details.js';
import { mappingDataBlock, mappingTime, writeMapping } from '../../src/thin/mapping.js';
import { MAPPING_VALUE_SIZE, readDeviceRoots } from '../../src/thin/mapping-tree.js';
import {
  NEEDS_CHECK_FLAG, Superblock, dataSpaceMapRoot, metadataSpaceMapRoot, readSuperblock,
} from '../../src/thin/superblock.js';

export function readBlock(file: string, b: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(BLOCK_SIZE);
    fs.readSync(fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

export function writeBlock(file: string, b: number, buf: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE);
  } finally {
    fs.closeSync(fd);
  }
}

function withReader<T>(file: string, fn: (io: BlockReader) => T): T {
  const io = new BlockReader(file);
  try {
    return fn(io);
  } finally {
    io.close();
  }
}

export function superblockOf(file: string): Superblock {
  return withReader(file, (io) => readSuperblock(io));
}

const fail = (): never => {
  throw new Error('damage: the metadata is already damaged');
};

/** The nodes of one device's mapping tree: its root, internal nodes and leaves. */
export function deviceNodes(file: string, devId: number): { root: number; internals: number[]; leaves: number[] } {
  return withReader(file, (io) => {
    const sb = readSuperblock(io);
    const dev = readDeviceRoots(io, sb.dataMappingRoot, fail).find((d) => d.devId === devId);
    if (!dev) throw new Error(`damage: no device ${devId}`);
    const internals: number[] = [];
    const leaves: number[] = [];
    walkBTree(io, dev.root, MAPPING_VALUE_SIZE, {
      leaf: (node) => leaves.push(node.block),
      nodeRef: (b) => internals.push(b),
      error: fail,
    });
    return { root: dev.root, internals: internals.filter((b) => !leaves.includes(b)), leaves };
  });
}

/** Flips one bit of a block without re-sealing it (a checksum error). */
export function flipBit(file: string, block: number, byteOffset = 100, bit = 3): void {
  const buf = readBlock(file, block);
  buf[byteOffset] ^= 1 << bit;
  writeBlock(file, block, buf);
}

export function zeroBlock(file: string, block: number): void {
  writeBlock(file, block, Buffer.alloc(BLOCK_SIZE));
}

export function truncateBlocks(file: string, nrBlocks: number): void {
  fs.truncateSync(file, nrBlocks * BLOCK_SIZE);
}

/** Sets the 2-bit entry of `block` in a bitmap and re-seals the bitmap; returns the old count. */
function setBitmapEntry(file: string, bitmapBlock: number, entry: number, count: number): number {
  const buf = readBlock(file, bitmapBlock);
  const old = bitmapCount(buf, entry);
  const byte = BITMAP_HEADER_SIZE + (entry >>> 2);
  const shift = (entry & 3) << 1;
  // bit 2i is the high bit, 2i+1 the low one
  buf[byte] = (buf[byte] & ~(3 << shift)) | (((count >> 1) & 1) << shift) | ((count & 1) << (shift + 1));
  sealBlock(buf, BITMAP_CSUM_XOR);
  writeBlock(file, bitmapBlock, buf);
  return old;
}

/** Changes a metadata block's count in the metadata space map's bitmap (re-sealed). */
export function setMetadataCount(file: string, block: number, count: number): number {
  const bitmap = withReader(file, (io) => {
    const index = readMetadataIndex(io, metadataSpaceMapRoot(readSuperblock(io)));
    return index[Math.floor(block / ENTRIES_PER_BITMAP)].blocknr;
  });
  return setBitmapEntry(file, bitmap, block % ENTRIES_PER_BITMAP, count);
}

/**
 * Leaks a free metadata block the way a buggy kernel would: its count goes 0 -> 1 and the space
 * map's own bookkeeping (index nr_free, root nr_allocated) follows, all re-sealed.
 */
export function leakMetadataBlock(file: string, block: number): void {
  const { bitmap, indexBlock } = withReader(file, (io) => {
    const root = metadataSpaceMapRoot(readSuperblock(io));
    const index = readMetadataIndex(io, root);
    return { bitmap: index[Math.floor(block / ENTRIES_PER_BITMAP)].blocknr, indexBlock: root.bitmapRoot };
  });
  if (setBitmapEntry(file, bitmap, block % ENTRIES_PER_BITMAP, 1) !== 0) throw new Error(`damage: block ${block} is in use`);
  const index = readBlock(file, indexBlock);
  const nrFreeAt = INDEX_HEADER_SIZE + Math.floor(block / ENTRIES_PER_BITMAP) * 16 + 8;
  index.writeUInt32LE(index.readUInt32LE(nrFreeAt) - 1, nrFreeAt);
  sealBlock(index, INDEX_CSUM_XOR);
  writeBlock(file, indexBlock, index);
  const sb = readBlock(file, 0);
  const nrAllocatedAt = 192 + 8;
  writeU64(sb, nrAllocatedAt, readBlockNr(sb, nrAllocatedAt) + 1);
  sealBlock(sb, SUPERBLOCK_CSUM_XOR);
  writeBlock(file, 0, sb);
}

/** Changes a data block's count in the data space map's bitmap (re-sealed). */
export function setDataCount(file: string, dataBlock: number, count: number): number {
  const bitmap = withReader(file, (io) => {
    const index = readDiskIndex(io, dataSpaceMapRoot(readSuperblock(io)), { error: fail });
    return index[Math.floor(dataBlock / ENTRIES_PER_BITMAP)].blocknr;
  });
  return setBitmapEntry(file, bitmap, dataBlock % ENTRIES_PER_BITMAP, count);
}

/** Finds the leaf holding `devId` in the details tree and rewrites its mapped_blocks (re-sealed). */
export function setMappedBlocks(file: string, devId: number, mappedBlocks: number): void {
  const at = withReader(file, (io) => {
    let found: { block: number; off: number } | undefined;
    walkBTree(io, readSuperblock(io).deviceDetailsRoot, DEVICE_DETAILS_SIZE, {
      leaf(node: BTreeNode) {
        for (let i = 0; i < node.nrEntries; i++) {
          if (node.key(i) === devId) found = { block: node.block, off: node.valueOffset(i) };
        }
      },
      error: fail,
    });
    if (!found) throw new Error(`damage: no details for device ${devId}`);
    return found;
  });
  const buf = readBlock(file, at.block);
  writeU64(buf, at.off, mappedBlocks);
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, at.block, buf);
}

/** Points the first mapping of a leaf at `dataBlock` (re-sealed); returns the thin block and old data block. */
export function setFirstMapping(file: string, leaf: number, dataBlock: number): { thinBlock: number; oldDataBlock: number } {
  const buf = readBlock(file, leaf);
  const node = new BTreeNode(leaf, buf);
  const off = node.valueOffset(0);
  const oldDataBlock = mappingDataBlock(buf, off);
  writeMapping(buf, off, dataBlock, mappingTime(buf, off));
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, leaf, buf);
  return { thinBlock: Number(node.key(0)), oldDataBlock };
}

/** Makes child `i` of an internal node point at `child` (re-sealed); returns the old child. */
export function pointChildAt(file: string, internal: number, i: number, child: number): number {
  const buf = readBlock(file, internal);
  const node = new BTreeNode(internal, buf);
  const old = node.valueBlock(i);
  writeU64(buf, node.valueOffset(i), child);
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, internal, buf);
  return old;
}

/** Makes child `i` of an internal node point back at the node itself (re-sealed): a cycle. */
export function pointChildAtSelf(file: string, internal: number, i = 1): void {
  pointChildAt(file, internal, i, internal);
}

/** Sets or clears NEEDS_CHECK in the superblock (re-sealed). */
export function setNeedsCheck(file: string, on: boolean): void {
  const buf = readBlock(file, 0);
  const flags = buf.readUInt32LE(4);
  buf.writeUInt32LE(on ? flags | NEEDS_CHECK_FLAG : flags & ~NEEDS_CHECK_FLAG, 4);
  sealBlock(buf, SUPERBLOCK_CSUM_XOR);
  writeBlock(file, 0, buf);
}

/** Cuts a node down to its first `n` entries (re-sealed): underfull when n < max_entries / 3. */
export function setNrEntries(file: string, block: number, n: number): void {
  const buf = readBlock(file, block);
  buf.writeUInt32LE(n, 16);
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, block, buf);
}

/**
 * Points a space map's index entry for `bitmap` at `block` (re-sealed): the metadata space map's
 * index block, or the leaf of the data space map's index tree that holds the entry.
 */
export function pointBitmapAt(file: string, kind: 'metadata' | 'data', bitmap: number, block: number): void {
  const at = withReader(file, (io) => {
    const sb = readSuperblock(io);
    if (kind === 'metadata') {
      return { block: metadataSpaceMapRoot(sb).bitmapRoot, off: INDEX_HEADER_SIZE + bitmap * 16, salt: INDEX_CSUM_XOR };
    }
    let found: { block: number; off: number; salt: number } | undefined;
    walkBTree(io, dataSpaceMapRoot(sb).bitmapRoot, 16, {
      leaf(node: BTreeNode) {
        for (let i = 0; i < node.nrEntries; i++) {
          if (node.key(i) === bitmap) found = { block: node.block, off: node.valueOffset(i), salt: BTREE_CSUM_XOR };
        }
      },
      error: fail,
    });
    if (!found) throw new Error(`damage: no index entry for data bitmap ${bitmap}`);
    return found;
  });
  const buf = readBlock(file, at.block);
  writeU64(buf, at.off, block);
  sealBlock(buf, at.salt);
  writeBlock(file, at.block, buf);
}

/** Sets a u64 field of the superblock (at its byte offset) and re-seals it. */
export function setSuperblockU64(file: string, offset: number, value: bigint): void {
  const sb = readBlock(file, 0);
  sb.writeBigUInt64LE(value, offset);
  sealBlock(sb, SUPERBLOCK_CSUM_XOR);
  writeBlock(file, 0, sb);
}

/**
 * Swaps two B-tree nodes and makes each say it lives where it now is (re-sealed): the nodes are
 * sound, only their parents lead to the wrong one.
 */
export function swapNodes(file: string, a: number, b: number): void {
  const bufA = readBlock(file, a);
  const bufB = readBlock(file, b);
  writeU64(bufA, 8, b);
  writeU64(bufB, 8, a);
  sealBlock(bufA, BTREE_CSUM_XOR);
  sealBlock(bufB, BTREE_CSUM_XOR);
  writeBlock(file, b, bufA);
  writeBlock(file, a, bufB);
}

/** Sets key `i` of a B-tree node (re-sealed); returns the old key. */
export function setNodeKey(file: string, block: number, i: number, key: number): number {
  const buf = readBlock(file, block);
  const old = readBlockNr(buf, 32 + 8 * i);
  writeU64(buf, 32 + 8 * i, key);
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, block, buf);
  return old;
}

/** Gives the first mapping of a leaf the time `time` (re-sealed); returns its thin block. */
export function setFirstMappingTime(file: string, leaf: number, time: number): number {
  const buf = readBlock(file, leaf);
  const node = new BTreeNode(leaf, buf);
  const off = node.valueOffset(0);
  writeMapping(buf, off, mappingDataBlock(buf, off), time);
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, leaf, buf);
  return Number(node.key(0));
}

/** Sets a device's creation or snapshot time in the details tree (re-sealed). */
export function setDeviceTime(file: string, devId: number, which: 'creation' | 'snapshot', time: number): void {
  const at = withReader(file, (io) => {
    let found: { block: number; off: number } | undefined;
    walkBTree(io, readSuperblock(io).deviceDetailsRoot, DEVICE_DETAILS_SIZE, {
      leaf(node: BTreeNode) {
        for (let i = 0; i < node.nrEntries; i++) if (node.key(i) === devId) found = { block: node.block, off: node.valueOffset(i) };
      },
      error: fail,
    });
    if (!found) throw new Error(`damage: no details for device ${devId}`);
    return found;
  });
  const buf = readBlock(file, at.block);
  buf.writeUInt32LE(time, at.off + (which === 'creation' ? 16 : 20));
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(file, at.block, buf);
}

/** Sets a u32 field of the superblock (at its byte offset) and re-seals it. */
export function setSuperblockU32(file: string, offset: number, value: number): void {
  const sb = readBlock(file, 0);
  sb.writeUInt32LE(value, offset);
  sealBlock(sb, SUPERBLOCK_CSUM_XOR);
  writeBlock(file, 0, sb);
}

/** Swaps two blocks as they are: each now says it lives where the other does. */
export function swapBlocks(file: string, a: number, b: number): void {
  const bufA = readBlock(file, a);
  writeBlock(file, a, readBlock(file, b));
  writeBlock(file, b, bufA);
}
