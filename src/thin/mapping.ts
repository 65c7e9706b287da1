// A bottom-level mapping value: (data_block << 24) | time, as a u64 split in two u32 halves
// so 40-bit data blocks stay exact in JavaScript numbers.

export const MAX_TIME = 0xffffff;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
export const MAX_DATA_BLOCK = 2 ** 40 - 1;

export function mappingDataBlock(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off + 4) * 256 + (buf.readUInt32LE(off) >>> 24);
}

export function mappingTime(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) & MAX_TIME;
}

export function writeMapping(buf: Buffer, off: number, dataBlock: number, time: number): void {
  buf.writeUInt32LE((((dataBlock % 256) << 24) | (time & MAX_TIME)) >>> 0, off);
  buf.writeUInt32LE(Math.floor(dataBlock / 256), off + 4);
}

/**
 * Mapping values of `n` consecutive data blocks from `dataBegin`, all at `time`, as the u32 words
 * (low, high) of each value from `words[at]` on: the builder's run fast path.
 */
export function writeMappingRunWords(words: Uint32Array, at: number, dataBegin: number, time: number, n: number): void {
  let hi = Math.floor(dataBegin / 256);
  let low = dataBegin - hi * 256;
  for (let w = at, end = at + 2 * n; w < end; w += 2) {
    words[w] = ((low << 24) | time) >>> 0;
    words[w + 1] = hi;
    if (++low === 256) {
      low = 0;
      hi++;
    }
  }
}

/**
 * The data blocks of `n` packed mapping values (a leaf's, as the builder holds them), as runs of
 * consecutive blocks: `fn(first, length)` for each.
 */
export function forEachDataRun(values: Buffer, n: number, fn: (first: number, length: number) => void): void {
  // Through u32 words where the buffer allows (the builder's is aligned), not a checked read each.
  const words = (values.byteOffset & 3) === 0 && LITTLE_ENDIAN ? new Uint32Array(values.buffer, values.byteOffset, 2 * n) : undefined;
  let first = -1;
  let len = 0;
  for (let i = 0; i < n; i++) {
    const data = words ? words[2 * i + 1] * 256 + (words[2 * i] >>> 24) : values.readUInt32LE(8 * i + 4) * 256 + values[8 * i + 3];
    if (len > 0 && data === first + len) {
      len++;
      continue;
    }
    if (len > 0) fn(first, len);
    first = data;
    len = 1;
  }
  if (len > 0) fn(first, len);
}
