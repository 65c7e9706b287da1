// What a write puts in a block: content derived from (trace line, virtual block, sector), so the
// model can say what any sector must hold without keeping the data. Each 512-byte sector repeats
// one 16-byte stamp {line, block low, sector, check word} 32 times; zeroes are never a stamp,
// since lines start at 1.
import * as os from 'node:os';

export const SECTOR_BYTES = 512;
const WORDS_PER_SECTOR = SECTOR_BYTES / 4;
const TWO_32 = 0x100000000;

if (os.endianness() !== 'LE') throw new Error('thin_replay: content stamps assume a little-endian machine');

/** The stamp's check word: mixes everything, the block's high bits included. */
function checkWord(line: number, block: number, sector: number): number {
  let h = Math.imul(line ^ 0x9e3779b9, 0x85ebca6b);
  h = Math.imul(h ^ (block >>> 0) ^ (h >>> 13), 0xc2b2ae35);
  h = Math.imul(h ^ Math.floor(block / TWO_32) ^ (h >>> 16), 0x27d4eb2f);
  h = Math.imul(h ^ sector ^ (h >>> 15), 0x165667b1);
  return (h ^ (h >>> 16)) >>> 0;
}

function words(buf: Buffer, at: number, sectors: number): Uint32Array {
  if ((buf.byteOffset + at) % 4 !== 0) throw new Error('content buffer is not 4-byte aligned');
  return new Uint32Array(buf.buffer, buf.byteOffset + at, sectors * WORDS_PER_SECTOR);
}

/** Fills `sectors` sectors of `buf` from byte `at` with what line `line` writes to `block` from `sector` on. */
export function fillContent(buf: Buffer, at: number, line: number, block: number, sector: number, sectors: number): void {
  const w = words(buf, at, sectors);
  const lo = block >>> 0;
  for (let s = 0; s < sectors; s++) {
    const check = checkWord(line, block, sector + s);
    const base = s * WORDS_PER_SECTOR;
    for (let i = base; i < base + WORDS_PER_SECTOR; i += 4) {
      w[i] = line;
      w[i + 1] = lo;
      w[i + 2] = sector + s;
      w[i + 3] = check;
    }
  }
}

/** What a sector read back holds, for a mismatch message. */
export function describeSector(buf: Buffer, at: number, block: number): string {
  const w = words(buf, at, 1);
  let zero = true;
  for (let i = 0; i < WORDS_PER_SECTOR; i++) if (w[i] !== 0) zero = false;
  if (zero) return 'zeroes';
  const [line, lo, sector, check] = w;
  let uniform = true;
  for (let i = 4; i < WORDS_PER_SECTOR; i += 4) if (w[i] !== line || w[i + 1] !== lo || w[i + 2] !== sector || w[i + 3] !== check) uniform = false;
  // The stamp names its line and sector; its block is known only by its low bits.
  const hi = Math.floor(block / TWO_32);
  if (uniform && check === checkWord(line, hi * TWO_32 + lo, sector)) return `what line ${line} wrote (block ${hi * TWO_32 + lo}, sector ${sector})`;
  return 'other data';
}
