// Sequential allocation of metadata blocks for a tool that writes a whole pool (restore, repair),
// with the reference count of every block, and writes batched into large sequential writes.
import { BLOCK_SIZE, BlockWriter, InputError } from '../io/block-io.js';
import { RefCounts } from './ref-counts.js';
import { MAX_METADATA_BLOCKS } from './space-map/metadata.js';

/** 1 MiB writes: as fast as 4 MiB ones here, and 3 MiB less of peak RSS (docs/benchmarks.md). */
const BATCH_BLOCKS = 256;

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
  /** Reserves a block, to be filled later with `writeAt` (zero until then). */
  alloc(): number;
  /** Writes a whole block reserved with `alloc`. */
  writeAt(block: number, data: Uint8Array): void;
  /** A block written earlier, or null if it was never written. */
  read(block: number): Buffer | null;
}

/**
 * Hands out metadata blocks in increasing order from block 1 (block 0 is the superblock) and keeps
 * their reference counts. New blocks are copied into one large buffer that is written with a
 * single system call when full, so building millions of nodes costs few writes.
 *
 * Once the output is full, allocation goes on without writing ("counting mode") so that the
 * caller can finish the input and tell the user how big the output must be.
 */
export class BlockAllocator implements MetadataAllocator {
  /** Blocks the metadata may use: the output's size, capped at what the space map can address. */
  readonly nrBlocks: number;
  readonly refCounts: RefCounts;
  private readonly batch = Buffer.alloc(BATCH_BLOCKS * BLOCK_SIZE);
  /** The batch as words: Uint32Array.fill is a V8 builtin (Buffer.fill is JS that must warm up). */
  private readonly batchWords = new Uint32Array(this.batch.buffer, this.batch.byteOffset, this.batch.length >>> 2);
  private batchStart = 1;
  private nextBlock = 1;

  constructor(private readonly out: BlockWriter) {
    this.nrBlocks = Math.min(out.nrBlocks, MAX_METADATA_BLOCKS);
    this.refCounts = new RefCounts();
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

  /** Reserves the next block (zero until written), to be filled later with `writeAt`. */
  alloc(): number {
    if (this.nextBlock - this.batchStart >= BATCH_BLOCKS) this.flush();
    return this.nextBlock++;
  }

  /** Writes a block reserved earlier with `alloc`. */
  writeAt(block: number, data: Uint8Array): void {
    if (block >= this.nrBlocks) return;
    if (block >= this.batchStart && block < this.nextBlock) {
      // TypedArray set, a V8 builtin: fast from the first call, unlike Buffer.copy (JS to warm up).
      this.batch.set(data.length === BLOCK_SIZE ? data : data.subarray(0, BLOCK_SIZE), (block - this.batchStart) * BLOCK_SIZE);
    } else {
      this.out.write(block, Buffer.from(data.buffer, data.byteOffset, BLOCK_SIZE));
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

  /** Writes out the batch of new blocks, then zeroes what it used for the next blocks reserved. */
  flush(): void {
    const end = Math.min(this.nextBlock, this.nrBlocks);
    if (end > this.batchStart) {
      const bytes = (end - this.batchStart) * BLOCK_SIZE;
      this.out.write(this.batchStart, this.batch.subarray(0, bytes));
      this.batchWords.fill(0, 0, bytes >>> 2);
    }
    this.batchStart = this.nextBlock;
  }
}
