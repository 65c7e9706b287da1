// The thin-pool superblock (block 0, or the metadata snapshot's copy at held_root).
import { BLOCK_SIZE } from '../io/block-io.js';
import { BlockReader } from '../io/block-io.js';
import { BlockValidator } from '../pdata/block-manager.js';
import { SUPERBLOCK_CSUM_XOR, blockChecksum, sealBlock } from '../pdata/checksum.js';
import { U64, readBlockNr, readU64, writeU64 } from '../pdata/le.js';
import { SpaceMapRoot, decodeSpaceMapRoot } from '../pdata/space-map/root.js';

export const SUPERBLOCK_LOCATION = 0;
export const SUPERBLOCK_MAGIC = 27022010;
export const NEEDS_CHECK_FLAG = 1;
export const SPACE_MAP_ROOT_SIZE = 128;

/** dm-thin: data blocks of 64 KiB .. 1 GiB, in 512-byte sectors, a multiple of 64 KiB. */
export const MIN_DATA_BLOCK_SIZE = 128;
export const MAX_DATA_BLOCK_SIZE = 2097152;

export function validDataBlockSize(sectors: number): boolean {
  return sectors >= MIN_DATA_BLOCK_SIZE && sectors <= MAX_DATA_BLOCK_SIZE && sectors % MIN_DATA_BLOCK_SIZE === 0;
}

/** The superblock as the block manager validates it: checksum, block number, magic. */
export const SUPERBLOCK_BLOCK: BlockValidator = {
  name: 'superblock',
  salt: SUPERBLOCK_CSUM_XOR,
  check: (buf) => (readU64(buf, 32) === SUPERBLOCK_MAGIC ? null : `bad magic number in superblock: ${readU64(buf, 32)}`),
};

export interface Superblock {
  flags: number;
  blocknr: number;
  uuid: Buffer;
  magic: U64;
  version: number;
  time: number;
  transactionId: U64;
  heldRoot: number;
  dataSpaceMapRoot: Buffer;
  metadataSpaceMapRoot: Buffer;
  dataMappingRoot: number;
  deviceDetailsRoot: number;
  dataBlockSize: number;
  metadataBlockSize: number;
  metadataNrBlocks: number;
  compatFlags: number;
  compatRoFlags: number;
  incompatFlags: number;
}

/** Corruption found while reading the superblock; the message matches the reference's wording. */
export class SuperblockError extends Error {}

const HELD_ROOT_OFFSET = 56;

export function decodeSuperblock(buf: Buffer): Superblock {
  return {
    flags: buf.readUInt32LE(4),
    blocknr: readBlockNr(buf, 8),
    uuid: Buffer.from(buf.subarray(16, 32)),
    magic: readU64(buf, 32),
    version: buf.readUInt32LE(40),
    time: buf.readUInt32LE(44),
    transactionId: readU64(buf, 48),
    heldRoot: readBlockNr(buf, HELD_ROOT_OFFSET),
    dataSpaceMapRoot: Buffer.from(buf.subarray(64, 64 + SPACE_MAP_ROOT_SIZE)),
    metadataSpaceMapRoot: Buffer.from(buf.subarray(192, 192 + SPACE_MAP_ROOT_SIZE)),
    dataMappingRoot: readBlockNr(buf, 320),
    deviceDetailsRoot: readBlockNr(buf, 328),
    dataBlockSize: buf.readUInt32LE(336),
    metadataBlockSize: buf.readUInt32LE(340),
    metadataNrBlocks: readBlockNr(buf, 344),
    compatFlags: buf.readUInt32LE(352),
    compatRoFlags: buf.readUInt32LE(356),
    incompatFlags: buf.readUInt32LE(360),
  };
}

/** A sealed superblock block ready to write at `sb.blocknr`. */
export function encodeSuperblock(sb: Superblock): Buffer {
  const buf = Buffer.alloc(BLOCK_SIZE);
  buf.writeUInt32LE(sb.flags, 4);
  writeU64(buf, 8, sb.blocknr);
  sb.uuid.copy(buf, 16, 0, 16);
  writeU64(buf, 32, sb.magic);
  buf.writeUInt32LE(sb.version, 40);
  buf.writeUInt32LE(sb.time, 44);
  writeU64(buf, 48, sb.transactionId);
  writeU64(buf, HELD_ROOT_OFFSET, sb.heldRoot);
  sb.dataSpaceMapRoot.copy(buf, 64, 0, SPACE_MAP_ROOT_SIZE);
  sb.metadataSpaceMapRoot.copy(buf, 192, 0, SPACE_MAP_ROOT_SIZE);
  writeU64(buf, 320, sb.dataMappingRoot);
  writeU64(buf, 328, sb.deviceDetailsRoot);
  buf.writeUInt32LE(sb.dataBlockSize, 336);
  buf.writeUInt32LE(sb.metadataBlockSize, 340);
  writeU64(buf, 344, sb.metadataNrBlocks);
  buf.writeUInt32LE(sb.compatFlags, 352);
  buf.writeUInt32LE(sb.compatRoFlags, 356);
  buf.writeUInt32LE(sb.incompatFlags, 360);
  sealBlock(buf, SUPERBLOCK_CSUM_XOR);
  return buf;
}

/**
 * Reads and validates the superblock at `location` (0, or a held root for -m).
 * Throws SuperblockError with the reference tools' wording on checksum, blocknr or magic errors.
 */
/**
 * The held root of the superblock at `location` as the exact u64 on disk, for printing:
 * Superblock.heldRoot is a block number, a rounded double past 2^53 (where no block can be).
 */
export function readHeldRootU64(io: BlockReader, location = SUPERBLOCK_LOCATION): U64 {
  return readU64(io.read(location), HELD_ROOT_OFFSET);
}

export function readSuperblock(io: BlockReader, location = SUPERBLOCK_LOCATION): Superblock {
  const buf = io.read(location);
  const wanted = blockChecksum(buf, SUPERBLOCK_CSUM_XOR);
  if (buf.readUInt32LE(0) !== wanted) {
    throw new SuperblockError(`bad checksum in superblock, wanted ${wanted}`);
  }
  const sb = decodeSuperblock(buf);
  if (sb.blocknr !== location) {
    throw new SuperblockError(`bad block number in superblock: ${sb.blocknr}, expected ${location}`);
  }
  if (sb.magic !== SUPERBLOCK_MAGIC) {
    throw new SuperblockError(`bad magic number in superblock: ${sb.magic}`);
  }
  return sb;
}

export function dataSpaceMapRoot(sb: Superblock): SpaceMapRoot {
  return decodeSpaceMapRoot(sb.dataSpaceMapRoot);
}

export function metadataSpaceMapRoot(sb: Superblock): SpaceMapRoot {
  return decodeSpaceMapRoot(sb.metadataSpaceMapRoot);
}

