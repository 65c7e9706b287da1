// The metadata pack format of the upstream 1.x tools (thin_metadata_pack, version 3), which bug
// reports attach; both directions interoperate with upstream's tools.
//
// File: a 32-byte header {magic u64, version u64 = 3, block size u64 = 4096, nr_blocks u64}, then
// chunks {length u64, zlib stream}. A chunk's stream holds, for each block packed, its number
// (u64) and the block as a program for a small machine that emits the 4096 bytes:
// one byte per instruction, kind in the high nibble, operand in the low one:
//   0 Set     base = next W bytes (W = 1, 2, 4, 8 in the nibble); emit base
//   1 Pos     base += nibble; emit base        2 PosW  base += next W bytes; emit base
//   3 Neg     base -= nibble; emit base        4 NegW  base -= next W bytes; emit base
//   5 Const   emit base nibble times           6 Const8  emit base (nibble << 8 | byte) times
//   7 Count   run the next instruction nibble times; 8 Count8: (nibble << 8 | byte) times
//   9 Lit     copy the next nibble bytes      10 LitW  copy the next (W-byte length) bytes
//  11 ShiftedRun  n = nibble << 8 | byte; two sub-runs emit n u64s each, high then low; emit
//                 (high << 24) | (low & 0xffffff) for each (mapping values: data block, time)
// Base arithmetic wraps at 2^64; emitted values are u64 little-endian.
// Blocks whose checksum names a known kind are packed; others (free space) are left out.
// B-tree nodes: header as a literal, keys as deltas, u64 leaf values as a shifted run, internal
// values as deltas, the rest as a literal. Everything else is one literal.
import { BLOCK_SIZE } from '../io/block-io.js';
import { blockChecksum } from '../pdata/checksum.js';

export const PACK_MAGIC = 0xa537a0aa6309ef77n;
export const PACK_VERSION = 3;
export const PACK_HEADER_SIZE = 32;
/** Blocks per compressed chunk, as upstream writes them. */
export const BLOCKS_PER_CHUNK = 1024;

/** Checksum salts of every block kind the pack format knows (thin, cache and era metadata). */
const KNOWN_SALTS = new Set([160774, 9031977, 146538381, 121107, 240779, 160478, 595846735]);
const BTREE_SALT = 121107;

export class PackFormatError extends Error {}

/** Whether a block is metadata a pack keeps: its checksum seals it with a known kind's salt. */
export function packable(block: Buffer): boolean {
  return KNOWN_SALTS.has((blockChecksum(block, 0) ^ block.readUInt32LE(0)) >>> 0);
}

const enum Tag {
  Set, Pos, PosW, Neg, NegW, Const, Const8, Count, Count8, Lit, LitW, ShiftedRun,
}

/** A growable byte buffer for building chunks. */
export class ByteWriter {
  buf = Buffer.allocUnsafe(1 << 16);
  pos = 0;

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
  }

  /** An unsigned value below 2^53 in `width` little-endian bytes. */
  uint(v: number, width: number): void {
    this.room(8);
    if (width === 8) {
      this.buf.writeUInt32LE(v % 0x100000000, this.pos);
      this.buf.writeUInt32LE(Math.floor(v / 0x100000000), this.pos + 4);
    } else {
      this.buf.writeUIntLE(v, this.pos, width);
    }
    this.pos += width;
  }

  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  tag(t: Tag, nibble: number): void {
    this.u8((t << 4) | nibble);
  }

  reset(): void {
    this.pos = 0;
  }

  get data(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

function widthOf(v: number): number {
  return v <= 0xff ? 1 : v <= 0xffff ? 2 : v <= 0xffffffff ? 4 : 8;
}

function literal(w: ByteWriter, bytes: Uint8Array): void {
  const len = bytes.length;
  if (len < 16) {
    w.tag(Tag.Lit, len);
  } else {
    const width = widthOf(len);
    w.tag(Tag.LitW, width);
    w.uint(len, width);
  }
  w.bytes(bytes);
}

function count(w: ByteWriter, n: number): void {
  if (n === 1) return;
  if (n < 16) {
    w.tag(Tag.Count, n);
  } else {
    w.tag(Tag.Count8, n >> 8);
    w.u8(n & 0xff);
  }
}

function step(w: ByteWriter, up: boolean, delta: number, n: number): void {
  count(w, n);
  if (delta < 16) {
    w.tag(up ? Tag.Pos : Tag.Neg, delta);
  } else {
    const width = widthOf(delta);
    w.tag(up ? Tag.PosW : Tag.NegW, width);
    w.uint(delta, width);
  }
}

/** Values (all below 2^53) as a Set and runs of equal steps (count below 4096: ns is one node's). */
function packValues(w: ByteWriter, ns: Float64Array | number[], from: number, to: number): void {
  if (from === to) return;
  let base = ns[from];
  const width = widthOf(base);
  w.tag(Tag.Set, width);
  w.uint(base, width);
  let i = from + 1;
  while (i < to) {
    const n = ns[i];
    if (n === base) {
      let c = 0;
      while (i < to && ns[i] === base) {
        i++;
        c++;
      }
      if (c < 16) {
        w.tag(Tag.Const, c);
      } else {
        w.tag(Tag.Const8, c >> 8);
        w.u8(c & 0xff);
      }
    } else {
      const up = n > base;
      const delta = up ? n - base : base - n;
      let c = 0;
      while (i < to && ns[i] === (up ? base + (c + 1) * delta : base - (c + 1) * delta)) {
        i++;
        c++;
      }
      step(w, up, delta, c);
      base = up ? base + c * delta : base - c * delta;
    }
  }
}

const SAFE_HI = 0x200000;
const scratch = new Float64Array(2 * 512);

/** Reads `n` u64s at `off` into `scratch` from `at`; false if one is 2^53 or more. */
function readSafe(block: Buffer, off: number, n: number, at: number): boolean {
  for (let i = 0; i < n; i++) {
    const hi = block.readUInt32LE(off + 8 * i + 4);
    if (hi >= SAFE_HI) return false;
    scratch[at + i] = hi * 0x100000000 + block.readUInt32LE(off + 8 * i);
  }
  return true;
}

/** Appends the program for one packable block. */
export function packBlock(w: ByteWriter, block: Buffer): void {
  if (((blockChecksum(block, 0) ^ block.readUInt32LE(0)) >>> 0) === BTREE_SALT && packNode(w, block)) return;
  literal(w, block);
}

/** A B-tree node, or false (nothing written) when its header doesn't describe a packable layout. */
function packNode(w: ByteWriter, block: Buffer): boolean {
  const isLeaf = block.readUInt32LE(4) === 2;
  const maxEntries = block.readUInt32LE(20);
  const valueSize = block.readUInt32LE(24);
  const u64Values = !isLeaf || valueSize === 8;
  const end = 32 + 8 * maxEntries * (u64Values ? 2 : 1);
  if (maxEntries >= 512 || end > BLOCK_SIZE) return false;
  // Keys (and internal nodes' child blocks) past 2^53 are rare enough to go as a literal.
  if (!readSafe(block, 32, maxEntries, 0)) return false;
  if (u64Values && isLeaf) {
    // Mapping values: data block (40 bits) and time (24 bits) apart, both exact as numbers.
    const values = 32 + 8 * maxEntries;
    for (let i = 0; i < maxEntries; i++) {
      const lo = block.readUInt32LE(values + 8 * i);
      const hi = block.readUInt32LE(values + 8 * i + 4);
      scratch[maxEntries + i] = hi * 256 + (lo >>> 24);
      scratch[2 * maxEntries + i] = lo & 0xffffff;
    }
  } else if (u64Values && !readSafe(block, 32 + 8 * maxEntries, maxEntries, maxEntries)) {
    return false;
  }
  literal(w, block.subarray(0, 32));
  packValues(w, scratch, 0, maxEntries);
  if (u64Values && isLeaf) {
    w.tag(Tag.ShiftedRun, maxEntries >> 8);
    w.u8(maxEntries & 0xff);
    packValues(w, scratch, maxEntries, 2 * maxEntries);
    packValues(w, scratch, 2 * maxEntries, 3 * maxEntries);
  } else if (u64Values) {
    packValues(w, scratch, maxEntries, 2 * maxEntries);
  }
  const tail = u64Values ? end : 32 + 8 * maxEntries;
  if (tail < BLOCK_SIZE) literal(w, block.subarray(tail));
  return true;
}

const TWO_32 = 0x100000000;

/** Runs block programs from a decompressed chunk. */
export class PackDecoder {
  private pos = 0;
  /** The machine's base, a u64 kept as two 32-bit halves (wrapping as upstream's). */
  private hi = 0;
  private lo = 0;
  private out!: Buffer;
  private outPos = 0;

  constructor(private readonly data: Buffer) {}

  get done(): boolean {
    return this.pos >= this.data.length;
  }

  /** The next block: its number and its 4096 bytes (in `into`). */
  next(into: Buffer): bigint {
    const blocknr = this.data.readBigUInt64LE(this.need(8));
    this.out = into;
    this.outPos = 0;
    this.exec(BLOCK_SIZE);
    return blocknr;
  }

  private need(n: number): number {
    const at = this.pos;
    if (at + n > this.data.length) throw new PackFormatError('packed block ends early');
    this.pos += n;
    return at;
  }

  /** Runs instructions until exactly `bytes` more are out. */
  private exec(bytes: number): void {
    const end = this.outPos + bytes;
    while (this.outPos < end) this.instr(1);
    if (this.outPos !== end) throw new PackFormatError('packed block overruns its size');
  }

  /** An operand of 1, 2, 4 or 8 bytes, as [high 32 bits, low 32 bits]. */
  private operand(width: number): [number, number] {
    const at = this.need(width);
    switch (width) {
      case 1: return [0, this.data[at]];
      case 2: return [0, this.data.readUInt16LE(at)];
      case 4: return [0, this.data.readUInt32LE(at)];
      case 8: return [this.data.readUInt32LE(at + 4), this.data.readUInt32LE(at)];
      default: throw new PackFormatError(`bad operand width ${width}`);
    }
  }

  private room(n: number): void {
    if (this.outPos + n > this.out.length) throw new PackFormatError('packed block overruns its size');
  }

  private emit(times: number): void {
    this.room(8 * times);
    for (let i = 0; i < times; i++) {
      this.out.writeUInt32LE(this.lo, this.outPos);
      this.out.writeUInt32LE(this.hi, this.outPos + 4);
      this.outPos += 8;
    }
  }

  /** base += delta (or -=), emitting after each step, modulo 2^64. */
  private step([dhi, dlo]: [number, number], times: number, up: boolean): void {
    for (let i = 0; i < times; i++) {
      if (up) {
        let lo = this.lo + dlo;
        const carry = lo >= TWO_32 ? 1 : 0;
        lo -= carry * TWO_32;
        this.lo = lo;
        this.hi = (this.hi + dhi + carry) % TWO_32;
      } else {
        let lo = this.lo - dlo;
        const borrow = lo < 0 ? 1 : 0;
        lo += borrow * TWO_32;
        this.lo = lo;
        const hi = this.hi - dhi - borrow;
        this.hi = hi < 0 ? hi + TWO_32 : hi;
      }
      this.emit(1);
    }
  }

  private instr(times: number): void {
    const b = this.data[this.need(1)];
    const nibble = b & 15;
    switch (b >> 4) {
      case Tag.Set:
        [this.hi, this.lo] = this.operand(nibble);
        return this.emit(times);
      case Tag.Pos: return this.step([0, nibble], times, true);
      case Tag.PosW: return this.step(this.operand(nibble), times, true);
      case Tag.Neg: return this.step([0, nibble], times, false);
      case Tag.NegW: return this.step(this.operand(nibble), times, false);
      case Tag.Const: return this.emit(this.once(times) * nibble);
      case Tag.Const8: return this.emit(this.once(times) * ((nibble << 8) | this.data[this.need(1)]));
      case Tag.Count: return this.instr(nibble);
      case Tag.Count8: return this.instr((nibble << 8) | this.data[this.need(1)]);
      case Tag.Lit:
        return this.copy(this.once(times) * nibble);
      case Tag.LitW: {
        this.once(times);
        const [hi, lo] = this.operand(nibble);
        return this.copy(hi * TWO_32 + lo);
      }
      case Tag.ShiftedRun: {
        this.once(times);
        const n = (nibble << 8) | this.data[this.need(1)];
        const out = this.out;
        const outPos = this.outPos;
        const high = this.subRun(n);
        const low = this.subRun(n);
        this.out = out;
        this.outPos = outPos;
        this.room(8 * n);
        for (let i = 0; i < n; i++) {
          const hl = high.readUInt32LE(8 * i);
          const hh = high.readUInt32LE(8 * i + 4);
          const l = low.readUInt32LE(8 * i) & 0xffffff;
          // (high << 24) | low, modulo 2^64, in halves.
          out.writeUInt32LE((((hl & 0xff) << 24) | l) >>> 0, this.outPos);
          out.writeUInt32LE(((hh << 24) | (hl >>> 8)) >>> 0, this.outPos + 4);
          this.outPos += 8;
        }
        return;
      }
      default:
        throw new PackFormatError(`bad instruction ${b >> 4}`);
    }
  }

  /** Runs instructions into a buffer of its own until `n` u64s are out. */
  private subRun(n: number): Buffer {
    this.out = Buffer.alloc(8 * n);
    this.outPos = 0;
    this.exec(8 * n);
    return this.out;
  }

  private once(times: number): number {
    if (times !== 1) throw new PackFormatError('a repeat count on an instruction that takes none');
    return 1;
  }

  private copy(n: number): void {
    this.room(n);
    const at = this.need(n);
    this.data.copy(this.out, this.outPos, at, at + n);
    this.outPos += n;
  }
}

export function encodeHeader(nrBlocks: number): Buffer {
  const h = Buffer.alloc(PACK_HEADER_SIZE);
  h.writeBigUInt64LE(PACK_MAGIC, 0);
  h.writeBigUInt64LE(BigInt(PACK_VERSION), 8);
  h.writeBigUInt64LE(BigInt(BLOCK_SIZE), 16);
  h.writeBigUInt64LE(BigInt(nrBlocks), 24);
  return h;
}

/** The number of blocks a pack's header declares; throws PackFormatError if it isn't a pack. */
export function decodeHeader(h: Buffer): bigint {
  if (h.length < PACK_HEADER_SIZE || h.readBigUInt64LE(0) !== PACK_MAGIC) throw new PackFormatError('Not a pack file');
  const version = h.readBigUInt64LE(8);
  if (version !== BigInt(PACK_VERSION)) throw new PackFormatError(`unsupported pack file version (${version})`);
  if (h.readBigUInt64LE(16) !== BigInt(BLOCK_SIZE)) throw new PackFormatError(`block size is not ${BLOCK_SIZE}`);
  return h.readBigUInt64LE(24);
}
