// Sequential allocation of metadata blocks for a tool that writes a whole pool (restore, repair),
// with the reference count of every block, and writes batched into large sequential writes.
import { BLOCK_SIZE, BlockWriter, InputError } from '../io/block-io.js';
import { ENTRIES_PER_BITMAP } from './space-map/common.js';

/** The metadata space map's index block holds 255 entries, which caps the metadata size. */
export const MAX_METADATA_BITMAPS = 255;
export const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;

const BATCH_BLOCKS = 1024;

/** The output cannot hold the metadata; `neededBlocks` is filled in once the whole input is seen. */
export class OutputTooSmallError extends InputError {
  constructor(path: string, readonly haveBlocks: number, readonly neededBlocks: number) {
    const mib = Math.ceil((neededBlocks * BLOCK_SIZE) / (1024 * 1024));
    super(
      `${path}: output too small for the metadata: it needs at least ${neededBlocks} blocks ` +
        `(${mib} MiB) but holds ${haveBlocks} blocks`,
    );
  }
}

/**
 * What the B-tree builder and the space-map writers need from an allocator: blocks to fill, the
 * reference counts of every metadata block, and reading back a block written earlier.
 */
export interface MetadataAllocator {
  /** Blocks the metadata space map describes. */
  readonly nrBlocks: number;
  readonly refCounts: RefCounts;
  /** No block at or above this one has a count yet. */
  readonly used: number;
  /** Reserves a block, to be filled later with `writeAt`. */
  alloc(): number;
  /** Reserves a block and returns a zeroed buffer for it, to fill before the next allocation. */
  newBlock(): { block: number; buf: Buffer };
  writeAt(block: number, data: Buffer): void;
  /** A block written earlier, or null if it was never written. */
  read(block: number): Buffer | null;
}

/**
 * Hands out metadata blocks in increasing order from block 1 (block 0 is the superblock) and keeps
 * their reference counts. New blocks are filled in place inside one large buffer that is written
 * with a single system call when full, so building millions of nodes costs few writes.
 *
 * Once the output is full, allocation goes on without writing ("counting mode") so that the
 * caller can finish the input and tell the user how big the output must be.
 */
export class BlockAllocator implements MetadataAllocator {
  /** Blocks the metadata may use: the output's size, capped at what the space map can address. */
  readonly nrBlocks: number;
  readonly refCounts: RefCounts;
  private readonly batch = Buffer.alloc(BATCH_BLOCKS * BLOCK_SIZE);
  private batchStart = 1;
  private nextBlock = 1;
  private readonly scratch = Buffer.alloc(BLOCK_SIZE);

  constructor(private readonly out: BlockWriter) {
    this.nrBlocks = Math.min(out.nrBlocks, MAX_METADATA_BLOCKS);
    this.refCounts = new RefCounts(this.nrBlocks);
    this.refCounts.inc(0);
  }

  /** Blocks allocated so far, the superblock included. */
  get used(): number {
    return this.nextBlock;
  }

  /** True once an allocation went beyond the output: nothing more is written. */
  get overflowed(): boolean {
    return this.nextBlock > this.nrBlocks;
  }

  /** Reserves the next block, to be filled later with `writeAt`. */
  alloc(): number {
    if (this.nextBlock - this.batchStart >= BATCH_BLOCKS) this.flush();
    const block = this.nextBlock++;
    if (block < this.nrBlocks) {
      const off = (block - this.batchStart) * BLOCK_SIZE;
      this.batch.fill(0, off, off + BLOCK_SIZE);
    }
    return block;
  }

  /**
   * Allocates the next block and returns a zeroed buffer for its contents. The buffer belongs to
   * the write batch: fill it before the next allocation.
   */
  newBlock(): { block: number; buf: Buffer } {
    const block = this.alloc();
    if (block >= this.nrBlocks) {
      this.scratch.fill(0);
      return { block, buf: this.scratch };
    }
    const off = (block - this.batchStart) * BLOCK_SIZE;
    return { block, buf: this.batch.subarray(off, off + BLOCK_SIZE) };
  }

  /** Writes a block reserved earlier with `alloc`. */
  writeAt(block: number, data: Buffer): void {
    if (block >= this.nrBlocks) return;
    if (block >= this.batchStart && block < this.nextBlock) {
      data.copy(this.batch, (block - this.batchStart) * BLOCK_SIZE, 0, BLOCK_SIZE);
    } else {
      this.out.write(block, data.subarray(0, BLOCK_SIZE));
    }
  }

  /** Reads back a block written earlier; null if it was never written (counting mode). */
  read(block: number): Buffer | null {
    if (block >= this.nrBlocks || block >= this.nextBlock) return null;
    const out = Buffer.allocUnsafe(BLOCK_SIZE);
    if (block >= this.batchStart) {
      this.batch.copy(out, 0, (block - this.batchStart) * BLOCK_SIZE, (block - this.batchStart + 1) * BLOCK_SIZE);
      return out;
    }
    return this.out.readInto(block, out);
  }

  /** Writes out the batch of new blocks. */
  flush(): void {
    const end = Math.min(this.nextBlock, this.nrBlocks);
    if (end > this.batchStart) this.out.write(this.batchStart, this.batch.subarray(0, (end - this.batchStart) * BLOCK_SIZE));
    this.batchStart = this.nextBlock;
  }
}

/**
 * Reference counts of a space map's blocks, compact: one byte per block in pages of one bitmap's
 * span, allocated only where counts are set, and a map for the rare counts above 254.
 */
export class RefCounts {
  private readonly pages: (Uint8Array | undefined)[];
  private readonly big = new Map<number, number>();

  constructor(readonly nrBlocks: number) {
    this.pages = new Array(Math.ceil(nrBlocks / ENTRIES_PER_BITMAP) + 1);
  }

  get(b: number): number {
    const page = this.pages[Math.floor(b / ENTRIES_PER_BITMAP)];
    if (!page) return 0;
    const c = page[b % ENTRIES_PER_BITMAP];
    return c === 255 ? this.big.get(b)! : c;
  }

  inc(b: number): void {
    const p = Math.floor(b / ENTRIES_PER_BITMAP);
    let page = this.pages[p];
    if (!page) page = this.pages[p] = new Uint8Array(ENTRIES_PER_BITMAP);
    const i = b % ENTRIES_PER_BITMAP;
    const c = page[i];
    if (c < 254) page[i] = c + 1;
    else if (c === 254) {
      page[i] = 255;
      this.big.set(b, 255);
    } else this.big.set(b, this.big.get(b)! + 1);
  }

  /** Drops one reference; a count already at zero stays there. */
  dec(b: number): void {
    const page = this.pages[Math.floor(b / ENTRIES_PER_BITMAP)];
    if (!page) return;
    const i = b % ENTRIES_PER_BITMAP;
    const c = page[i];
    if (c === 0) return;
    if (c < 255) page[i] = c - 1;
    else {
      const n = this.big.get(b)! - 1;
      if (n === 254) {
        this.big.delete(b);
        page[i] = 254;
      } else this.big.set(b, n);
    }
  }

  /** The counts of one bitmap's span, or undefined if all are zero. Values of 255 mean "see get()". */
  page(bitmap: number): Uint8Array | undefined {
    return this.pages[bitmap];
  }
}
