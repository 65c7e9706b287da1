// What both on-disk space maps share: bitmap blocks of 2-bit counts, index entries that locate
// them, and the ref-count tree that holds counts of 3 and more. Read side only; the writers
// reuse the layout constants and decoders here.
import { BlockReader, BLOCK_SIZE } from '../../io/block-io.js';
import { BTreeNode } from '../btree/node.js';
import { LeafCursor } from '../btree/cursor.js';
import { BTreeError, walkBTree } from '../btree/walk.js';
import { BITMAP_CSUM_XOR, blockChecksum } from '../checksum.js';
import { readBlockNr, writeU64 } from '../le.js';

export const BITMAP_HEADER_SIZE = 16;
/** (4096 - 16) bytes of 2-bit entries. */
export const ENTRIES_PER_BITMAP = (BLOCK_SIZE - BITMAP_HEADER_SIZE) * 4;
export const INDEX_ENTRY_SIZE = 16;
/** A bitmap entry of 3 means "look the count up in the ref-count tree". */
export const OVERFLOW_COUNT = 3;
export const REF_COUNT_VALUE_SIZE = 4;

/** Where one bitmap lives and what the kernel last knew about its free entries. */
export interface IndexEntry {
  blocknr: number;
  nrFree: number;
  noneFreeBefore: number;
}

export function decodeIndexEntry(buf: Buffer, off: number): IndexEntry {
  return { blocknr: readBlockNr(buf, off), nrFree: buf.readUInt32LE(off + 8), noneFreeBefore: buf.readUInt32LE(off + 12) };
}

export function encodeIndexEntry(buf: Buffer, off: number, e: IndexEntry): void {
  writeU64(buf, off, e.blocknr);
  buf.writeUInt32LE(e.nrFree, off + 8);
  buf.writeUInt32LE(e.noneFreeBefore, off + 12);
}

/** Number of bitmaps covering `nrBlocks` blocks. */
export function bitmapsFor(nrBlocks: number): number {
  return Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
}

/** A damaged space-map block (bitmap, index or ref-count node). */
export class SpaceMapError extends Error {
  constructor(readonly block: number, readonly reason: string) {
    super(`${reason} (block ${block})`);
  }
}

/** The defect of an index entry that puts a bitmap at block 0, where the superblock lives. */
export function bitmapAtSuperblock(bitmap: number): string {
  return `index entry for bitmap ${bitmap} points at block 0 (the superblock)`;
}

/** Why a bitmap block can't be trusted, or null. */
export function bitmapDefect(buf: Buffer, location: number): string | null {
  if (buf.readUInt32LE(0) !== blockChecksum(buf, BITMAP_CSUM_XOR)) return 'bad checksum in space map bitmap';
  const blocknr = readBlockNr(buf, 8);
  if (blocknr !== location) return `bitmap says it is block ${blocknr}`;
  return null;
}

/**
 * Count of entry i (0..16319) of a bitmap block. Entry i of a little-endian u64 word takes bits
 * 2i (high) and 2i+1 (low), so it sits in byte i/4 of the entry area, at bit 2*(i%4).
 */
export function bitmapCount(buf: Buffer, i: number): number {
  const byte = buf[BITMAP_HEADER_SIZE + (i >>> 2)];
  const shift = (i & 3) << 1;
  return (((byte >>> shift) & 1) << 1) | ((byte >>> (shift + 1)) & 1);
}

/** The 4 counts a bitmap byte holds, packed 2 bits each with entry 0 lowest: a decode table. */
const BYTE_TO_COUNTS: Uint8Array = (() => {
  const t = new Uint8Array(256 * 4);
  for (let b = 0; b < 256; b++) {
    for (let k = 0; k < 4; k++) t[b * 4 + k] = (((b >>> (2 * k)) & 1) << 1) | ((b >>> (2 * k + 1)) & 1);
  }
  return t;
})();

/**
 * Decodes the first `n` entries of a bitmap block into `out` (values 0..3), and the rest of the
 * last byte's four: `out` holds `n` rounded up to a multiple of 4. One loop, no tail: V8 compiles
 * it while the first bitmap decodes, and a tail loop not yet run then threw that code away.
 */
export function decodeBitmap(buf: Buffer, n: number, out: Uint8Array): void {
  // All arithmetic inside the loop: V8 records no type feedback on the first calls' way in, and
  // code compiled without it was thrown away at the next call.
  for (let o = 0; o < n; o += 4) {
    const t = buf[BITMAP_HEADER_SIZE + (o >>> 2)] << 2;
    out[o] = BYTE_TO_COUNTS[t];
    out[o + 1] = BYTE_TO_COUNTS[t + 1];
    out[o + 2] = BYTE_TO_COUNTS[t + 2];
    out[o + 3] = BYTE_TO_COUNTS[t + 3];
  }
}

export interface RefCountVisitor {
  /** Counts in block order, read straight from each validated leaf. */
  entry(block: number, count: number): void;
  nodeRef?(block: number): void;
  error(err: BTreeError): void;
}

/** Walks a ref-count tree (block -> u32 count); the kernel always has one, if only an empty leaf. */
export function walkRefCountTree(io: BlockReader, root: number, visitor: RefCountVisitor): void {
  walkBTree(io, root, REF_COUNT_VALUE_SIZE, {
    leaf(node: BTreeNode) {
      for (let i = 0; i < node.nrEntries; i++) visitor.entry(node.keyNumber(i), node.valueU32(i));
    },
    nodeRef: visitor.nodeRef,
    error: visitor.error,
  });
}

/**
 * A ref-count tree's entries read in block order, a leaf at a time (memory: one block per level,
 * whatever the number of entries). `block` is Infinity past the last entry.
 */
export class OverflowCursor {
  block = -1;
  count = 0;
  private readonly leaves: LeafCursor;
  private leaf: BTreeNode | null = null;
  private i = 0;

  /** Damage (which the tree's walk has reported already) ends the entries at it, told to `onError`. */
  constructor(io: BlockReader, root: number, private readonly onError: (err: BTreeError) => void) {
    this.leaves = new LeafCursor(io, root, REF_COUNT_VALUE_SIZE);
    this.next();
  }

  /** Moves to the next entry. */
  next(): void {
    while (this.leaf === null || this.i >= this.leaf.nrEntries) {
      try {
        this.leaf = this.leaves.nextLeaf();
      } catch (e) {
        if (!(e instanceof BTreeError)) throw e;
        this.onError(e);
        this.leaf = null;
      }
      this.i = 0;
      if (this.leaf === null) {
        this.block = Infinity;
        return;
      }
    }
    this.block = this.leaf.keyNumber(this.i);
    this.count = this.leaf.valueU32(this.i);
    this.i++;
  }
}

/** Everything that can go wrong while reading a space map, with the block it happened at. */
export interface SpaceMapSink {
  /** A block the space map itself occupies (index, bitmap, tree node): the checker counts it. */
  nodeRef?(block: number): void;
  error(err: SpaceMapError | BTreeError): void;
}

/**
 * A space map opened for reading: its index entries plus its ref-count tree root. Counts are
 * read bitmap by bitmap, so the cost is one block read per 16320 blocks described.
 */
export class SpaceMapReader {
  private readonly counts = new Uint8Array(ENTRIES_PER_BITMAP);

  constructor(
    private readonly io: BlockReader,
    readonly nrBlocks: number,
    readonly index: IndexEntry[],
    readonly refCountRoot: number,
  ) {}

  /**
   * Calls `fn` once per bitmap in block order with the raw 2-bit counts (3 = see the ref-count
   * tree) of blocks [firstBlock, firstBlock + counts.length). `counts` is reused between calls.
   * A bitmap that can't be read is reported to `sink` and skipped.
   */
  forEachBitmap(sink: SpaceMapSink, fn: (firstBlock: number, counts: Uint8Array, bitmapBlock: number) => void): void {
    const buf = Buffer.allocUnsafe(BLOCK_SIZE);
    for (let i = 0; i < this.index.length; i++) {
      const firstBlock = i * ENTRIES_PER_BITMAP;
      const n = Math.min(ENTRIES_PER_BITMAP, this.nrBlocks - firstBlock);
      if (n <= 0) break;
      const loc = this.index[i].blocknr;
      // Block 0 is the superblock: the index readers mark an unreadable entry (already reported) so.
      if (loc === 0) continue;
      sink.nodeRef?.(loc);
      try {
        this.io.readInto(loc, buf);
      } catch (e) {
        sink.error(new SpaceMapError(loc, `bitmap ${i} can't be read: ${(e as Error).message}`));
        continue;
      }
      const defect = bitmapDefect(buf, loc);
      if (defect) {
        sink.error(new SpaceMapError(loc, `${defect} (bitmap ${i}, blocks ${firstBlock}-${firstBlock + n - 1})`));
        continue;
      }
      decodeBitmap(buf, n, this.counts);
      fn(firstBlock, this.counts.subarray(0, n), loc);
    }
  }

  /** Walks the ref-count tree (counts of 3 and above) for its nodes and damage only. */
  visitOverflowTree(sink: SpaceMapSink): void {
    walkRefCountTree(this.io, this.refCountRoot, { entry: () => {}, nodeRef: sink.nodeRef, error: sink.error });
  }

  /** The ref-count tree's entries in block order (walk it with visitOverflowTree first). */
  overflowEntries(sink: SpaceMapSink): OverflowCursor {
    return new OverflowCursor(this.io, this.refCountRoot, sink.error);
  }

  /** Blocks with a zero count, counted from the bitmaps (not the root's nr_allocated). */
  countFree(sink: SpaceMapSink): number {
    let free = 0;
    this.forEachBitmap(sink, (_first, counts) => {
      for (let i = 0; i < counts.length; i++) if (counts[i] === 0) free++;
    });
    return free;
  }
}
