// B-tree nodes as the kernel lays them out: a 32-byte header, max_entries u64 keys, then values.
import { BLOCK_SIZE } from '../../io/block-io.js';
import { BTREE_CSUM_XOR, blockChecksum } from '../checksum.js';
import { U64, readBlockNr, readU64 } from '../le.js';

export const NODE_HEADER_SIZE = 32;
const TWO_32 = 0x100000000;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
export const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;

/** Entries a node holds for a value size: what fits, rounded down to a multiple of 3. */
export function maxEntriesFor(valueSize: number): number {
  // A truncating division: V8 speculates Math.floor's from the exact divisions of 8-byte values
  // and threw that code away at the first 4-byte one (a ref-count tree).
  const fit = ((BLOCK_SIZE - NODE_HEADER_SIZE) / (8 + valueSize)) | 0;
  return fit - (fit % 3);
}

function wordsOf(b: Buffer): Uint32Array {
  if (b.byteOffset % 4 === 0 && LITTLE_ENDIAN) return new Uint32Array(b.buffer, b.byteOffset, BLOCK_SIZE / 4);
  const w = new Uint32Array(BLOCK_SIZE / 4);
  for (let i = 0; i < w.length; i++) w[i] = b.readUInt32LE(4 * i);
  return w;
}

/** A read-only view of one node; values are read straight from the block buffer. */
export class BTreeNode {
  readonly flags: number;
  readonly nrEntries: number;
  readonly maxEntries: number;
  readonly valueSize: number;
  private wordView: Uint32Array | undefined;

  constructor(readonly block: number, readonly buf: Buffer) {
    this.flags = buf.readUInt32LE(4);
    this.nrEntries = buf.readUInt32LE(16);
    this.maxEntries = buf.readUInt32LE(20);
    this.valueSize = buf.readUInt32LE(24);
  }

  /**
   * The block as little-endian u32 words, for hot loops (keys i at words 8 + 2i, 9 + 2i). A view
   * of the buffer where it is 4-byte aligned (block buffers are), a copy otherwise; made once.
   */
  get words(): Uint32Array {
    return (this.wordView ??= wordsOf(this.buf));
  }

  get isLeaf(): boolean {
    return (this.flags & LEAF_NODE) !== 0;
  }

  get blocknr(): number {
    return readBlockNr(this.buf, 8);
  }

  key(i: number): U64 {
    return readU64(this.buf, NODE_HEADER_SIZE + 8 * i);
  }

  /**
   * Key i of a tree keyed by block numbers, bitmap indexes or device ids, none of which reach
   * 2^53: exact below it; a larger (corrupt) key stays larger than any real one.
   */
  keyNumber(i: number): number {
    const w = this.words;
    return w[9 + 2 * i] * TWO_32 + w[8 + 2 * i];
  }

  /**
   * The first key not above the one before it (compared word by word, exact for any u64), or -1
   * when the keys rise strictly: the hot loop of every walk.
   */
  firstKeyOutOfOrder(): number {
    const words = this.words;
    let prevHi = -1;
    let prevLo = -1;
    for (let i = 0, w = NODE_HEADER_SIZE / 4; i < this.nrEntries; i++, w += 2) {
      const lo = words[w];
      const hi = words[w + 1];
      if (hi < prevHi || (hi === prevHi && lo <= prevLo)) return i;
      prevHi = hi;
      prevLo = lo;
    }
    return -1;
  }

  /** Byte offset of value i inside the block. */
  valueOffset(i: number): number {
    return NODE_HEADER_SIZE + 8 * this.maxEntries + this.valueSize * i;
  }

  /** A block-number value: a child in internal nodes, a device's root in the top level. */
  valueBlock(i: number): number {
    const w = this.words;
    const at = (this.valueOffset(i) >>> 2);
    return w[at + 1] * TWO_32 + w[at];
  }

  /** A u32 value (a ref count): value i of a node whose values are 4 bytes. */
  valueU32(i: number): number {
    return this.words[(NODE_HEADER_SIZE >>> 2) + 2 * this.maxEntries + i];
  }
}

/**
 * Why a node can't be trusted, or null if its header and keys are sound.
 * `valueSize` is what the tree stores in its leaves; internal nodes always hold u64 children.
 */
export function nodeDefect(node: BTreeNode, location: number, leafValueSize: number): string | null {
  const buf = node.buf;
  if (buf.readUInt32LE(0) !== blockChecksum(buf, BTREE_CSUM_XOR)) return 'bad checksum in btree node';
  if (node.blocknr !== location) return `block number mismatch: node says ${node.blocknr}`;
  if (node.flags !== INTERNAL_NODE && node.flags !== LEAF_NODE) return `bad node flags ${node.flags}`;
  const expectedValueSize = node.isLeaf ? leafValueSize : 8;
  if (node.valueSize !== expectedValueSize) {
    return `value size mismatch: expected ${expectedValueSize}, but got ${node.valueSize}`;
  }
  if (node.maxEntries !== maxEntriesFor(node.valueSize)) {
    return `max entries ${node.maxEntries} inconsistent with value size ${node.valueSize}`;
  }
  if (node.nrEntries > node.maxEntries) {
    return `too many entries: ${node.nrEntries} > max ${node.maxEntries}`;
  }
  return null;
}
