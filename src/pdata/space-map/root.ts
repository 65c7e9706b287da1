// The 128-byte space-map root stored in the superblock (only the first 32 bytes are used).
import { U64, readBlockNr, readU64, writeU64 } from '../le.js';

export interface SpaceMapRoot {
  /** u64 on disk: the data space map's is the pool's nr_data_blocks, printed exactly. */
  nrBlocks: U64;
  nrAllocated: U64;
  bitmapRoot: number;
  refCountRoot: number;
}

export function decodeSpaceMapRoot(buf: Buffer): SpaceMapRoot {
  return {
    nrBlocks: readU64(buf, 0),
    nrAllocated: readU64(buf, 8),
    bitmapRoot: readBlockNr(buf, 16),
    refCountRoot: readBlockNr(buf, 24),
  };
}

export function encodeSpaceMapRoot(root: SpaceMapRoot): Buffer {
  const buf = Buffer.alloc(128);
  writeU64(buf, 0, root.nrBlocks);
  writeU64(buf, 8, root.nrAllocated);
  writeU64(buf, 16, root.bitmapRoot);
  writeU64(buf, 24, root.refCountRoot);
  return buf;
}

/** nr_blocks as a count to walk bitmaps by (a value past 2^53 is garbage no index can cover). */
export function spaceMapSize(root: SpaceMapRoot): number {
  return Number(root.nrBlocks);
}
