// The 128-byte space-map root stored in the superblock (only the first 32 bytes are used).
import { readSafeU64, writeU64 } from '../le.js';

export interface SpaceMapRoot {
  nrBlocks: number;
  nrAllocated: number;
  bitmapRoot: number;
  refCountRoot: number;
}

export function decodeSpaceMapRoot(buf: Buffer): SpaceMapRoot {
  return {
    nrBlocks: readSafeU64(buf, 0),
    nrAllocated: readSafeU64(buf, 8),
    bitmapRoot: readSafeU64(buf, 16),
    refCountRoot: readSafeU64(buf, 24),
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
