// Little-endian 64-bit fields as JavaScript numbers. Every u64 the tools handle
// (block numbers, keys, counts) fits in 53 bits; a larger one is corruption.

export class RangeError64 extends Error {}

export function readU64(buf: Buffer, off: number): number {
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= 0x200000) throw new RangeError64(`64-bit value at offset ${off} exceeds 2^53`);
  return hi * 0x100000000 + buf.readUInt32LE(off);
}

export function writeU64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v % 0x100000000 >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / 0x100000000), off + 4);
}
