// crc32c (Castagnoli) as the kernel's persistent-data uses it. The native SIMD package is
// six times faster than the pure-TypeScript tables (docs/decisions.md); the tables remain the
// fallback where its prebuilt binary is missing, and the oracle the tests compare it with.
import { createRequire } from 'node:module';
import { BLOCK_SIZE } from '../io/block-io.js';

const POLY = 0x82f63b78;
const TABLES: Uint32Array[] = (() => {
  const t = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[0][i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 8; s++) t[s][i] = (t[s - 1][i] >>> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
  return t;
})();

/** Pure-TypeScript crc32c of buf[start, end): initial value and final xor 0xffffffff. */
export function crc32cPortable(buf: Uint8Array, start = 0, end = buf.length): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  let crc = 0xffffffff;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    const a = crc ^ (buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24));
    crc =
      t7[a & 0xff] ^ t6[(a >>> 8) & 0xff] ^ t5[(a >>> 16) & 0xff] ^ t4[a >>> 24] ^
      t3[buf[i + 4]] ^ t2[buf[i + 5]] ^ t1[buf[i + 6]] ^ t0[buf[i + 7]];
  }
  for (; i < end; i++) crc = t0[(crc ^ buf[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

type Crc32cFn = (input: Uint8Array) => number;
const native: Crc32cFn | undefined = (() => {
  try {
    return (createRequire(import.meta.url)('@node-rs/crc32') as { crc32c: Crc32cFn }).crc32c;
  } catch {
    return undefined;
  }
})();

export const crc32cImplementation = native ? 'native' : 'portable';

/** Standard crc32c of buf[start, end). */
export function crc32c(buf: Uint8Array, start = 0, end = buf.length): number {
  if (!native) return crc32cPortable(buf, start, end);
  return native(start === 0 && end === buf.length ? buf : buf.subarray(start, end)) >>> 0;
}

/** Salts that both seal a block's checksum and tell its kind. */
export const SUPERBLOCK_CSUM_XOR = 160774;
export const BTREE_CSUM_XOR = 121107;
export const BITMAP_CSUM_XOR = 240779;
export const INDEX_CSUM_XOR = 160478;

/** The checksum a block of this kind must carry in its first 4 bytes. */
export function blockChecksum(block: Uint8Array, salt: number): number {
  return (crc32c(block, 4, BLOCK_SIZE) ^ 0xffffffff ^ salt) >>> 0;
}


/** Stamps the checksum of a block about to be written. */
export function sealBlock(block: Buffer, salt: number): void {
  block.writeUInt32LE(blockChecksum(block, salt), 0);
}
