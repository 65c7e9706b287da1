// Little-endian integers of the on-disk format.
//
// A u64 is carried exactly as a U64: a number while it is a safe integer (every block number,
// count and key of a pool of any real size, so hot paths stay on doubles) and a bigint from 2^53
// on. The form is canonical (never a bigint below 2^53), so `===` compares values, and `<`, `>`
// compare numbers with bigints exactly; arithmetic goes through u64Add / u64Sub.

export type U64 = number | bigint;

export const U64_MAX = (1n << 64n) - 1n;
const TWO_32 = 0x100000000;
/** The high word of 2^53: below it, hi * 2^32 + lo is exact. */
const SAFE_HI = 0x200000;

/** The canonical U64 of a bigint in [0, 2^64). */
export function toU64(v: bigint): U64 {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

export function readU64(buf: Buffer, off: number): U64 {
  const hi = buf.readUInt32LE(off + 4);
  const lo = buf.readUInt32LE(off);
  if (hi < SAFE_HI) return hi * TWO_32 + lo;
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/**
 * A u64 that names a block or counts blocks: exact below 2^53; beyond, a double that is still
 * past the end of any device (so it is rejected as such, never taken for a real block).
 */
export function readBlockNr(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * TWO_32 + buf.readUInt32LE(off);
}

export function writeU64(buf: Buffer, off: number, v: U64): void {
  if (typeof v === 'bigint') {
    buf.writeUInt32LE(Number(v & 0xffffffffn), off);
    buf.writeUInt32LE(Number((v >> 32n) & 0xffffffffn), off + 4);
  } else {
    buf.writeUInt32LE(v % TWO_32 >>> 0, off);
    buf.writeUInt32LE(Math.floor(v / TWO_32), off + 4);
  }
}

/** a + n (n a small non-negative or negative safe integer); the caller keeps it in [0, 2^64). */
export function u64Add(a: U64, n: number): U64 {
  if (typeof a === 'number') {
    const sum = a + n;
    if (Number.isSafeInteger(sum)) return sum;
  }
  return toU64(BigInt(a) + BigInt(n));
}

/** a - b, exact, for differences the caller knows are small (run offsets, lengths). */
export function u64Diff(a: U64, b: U64): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return Number(BigInt(a) - BigInt(b));
}

/** A decimal string as a U64, or null if it is not one (sign, other characters, above 2^64-1). */
export function parseU64(s: string): U64 | null {
  if (!/^[0-9]+$/.test(s)) return null;
  if (s.length < 16) return Number(s);
  const v = BigInt(s);
  return v > U64_MAX ? null : toU64(v);
}
