// The block manager: metadata blocks read through a bounded cache, each checked by the validator
// of its kind when it comes off the device (checksum, the block number it records, layout) and
// sealed (block number, checksum) when it goes back. Memory stays at the cache size however large
// the metadata: a clean block is dropped when space is needed, a dirty one is written out first.
//
// Dirty blocks may reach the device before a commit: the transaction manager only ever dirties
// blocks that the last commit does not use, so early writes never touch committed metadata. The
// superblock is the exception, which is why it never goes through the cache (see commitSuperblock).
import { BLOCK_SIZE, InputError } from '../io/block-io.js';
import { blockChecksum } from './checksum.js';
import { readU64, writeU64 } from './le.js';

/** The device under the block manager: a metadata file or block device (BlockWriter fits). */
export interface BlockStore {
  readonly path: string;
  readonly nrBlocks: number;
  /** Reads block `block` into `buf` (BLOCK_SIZE bytes). */
  readInto(block: number, buf: Buffer): Buffer;
  /** Writes `data` (whole blocks) from block `block` on. */
  write(block: number, data: Buffer): void;
  /** Makes every write so far durable. */
  sync(): void;
}

/**
 * A kind of metadata block. Every kind starts with {csum u32, u32, blocknr u64}: the checksum of
 * bytes 4.. sealed with the kind's salt, and the block's own number.
 */
export interface BlockValidator {
  readonly name: string;
  readonly salt: number;
  /** Further checks of a block whose checksum and number are right: a reason, or null. */
  check?(buf: Buffer): string | null;
}

/** A metadata block that fails its validator: damage, named with the file and block. */
export class MetadataBlockError extends InputError {
  constructor(path: string, readonly block: number, reason: string) {
    super(`${path}: metadata block ${block}: ${reason}`);
  }
}

/** The machine stopped (a simulated crash): nothing more reaches the device, nothing is cleaned up. */
export class CrashError extends Error {}

const BLOCKNR_OFFSET = 8;

/** A cached block. `data` stays valid while the block is locked (between a get and its unlock). */
export class Block {
  dirty = false;
  pins = 0;
  constructor(readonly location: number, readonly data: Buffer, public validator: BlockValidator) {}
}

export interface BlockManagerOptions {
  /** Blocks kept in memory (default 8192, 32 MiB). Locked blocks may exceed it briefly. */
  cacheBlocks?: number;
  /**
   * Sync the device at each flush and commit (default). Off, commits still write in the same
   * order, but reach stable storage only when the system writes them back: for scratch pools.
   */
  sync?: boolean;
}

/** Blocks per write when dirty blocks at consecutive locations are written together. */
const WRITE_RUN = 256;

export class BlockManager {
  private readonly cache = new Map<number, Block>();
  private readonly capacity: number;
  private readonly durable: boolean;
  private readonly spare: Buffer[] = [];
  private readonly run = Buffer.allocUnsafe(WRITE_RUN * BLOCK_SIZE);
  /** Blocks read from and written to the device, for the summary and the benchmarks. */
  reads = 0;
  writes = 0;

  constructor(readonly store: BlockStore, opts: BlockManagerOptions = {}) {
    this.capacity = Math.max(64, opts.cacheBlocks ?? 8192);
    this.durable = opts.sync ?? true;
  }

  get nrBlocks(): number {
    return this.store.nrBlocks;
  }

  /** Locks block `location` for reading; it must be of the validator's kind. */
  read(location: number, v: BlockValidator): Block {
    const b = this.lookup(location, v) ?? this.load(location, v);
    b.pins++;
    return b;
  }

  /** Locks block `location` for changing; it is written back sealed at the next flush. */
  write(location: number, v: BlockValidator): Block {
    const b = this.read(location, v);
    b.dirty = true;
    return b;
  }

  /** Locks block `location` as a new, zeroed block of kind `v`, without reading it. */
  zero(location: number, v: BlockValidator): Block {
    this.checkLocation(location);
    let b = this.cache.get(location);
    if (b) {
      if (b.pins > 0) throw new Error(`block manager: block ${location} is reused while locked`);
      this.cache.delete(location);
      b.data.fill(0);
      b.validator = v;
    } else {
      this.makeRoom();
      b = new Block(location, this.buffer(true), v);
    }
    this.cache.set(location, b);
    b.dirty = true;
    b.pins = 1;
    return b;
  }

  unlock(b: Block): void {
    if (b.pins <= 0) throw new Error(`block manager: block ${b.location} unlocked twice`);
    b.pins--;
  }

  /** Writes every dirty block, sealed, in location order (consecutive ones together), then syncs. */
  flush(): void {
    const dirty: Block[] = [];
    for (const b of this.cache.values()) if (b.dirty) dirty.push(b);
    dirty.sort((a, b) => a.location - b.location);
    let i = 0;
    while (i < dirty.length) {
      let j = i + 1;
      while (j < dirty.length && j - i < WRITE_RUN && dirty[j].location === dirty[j - 1].location + 1) j++;
      if (j - i === 1) {
        this.writeOne(dirty[i]);
      } else {
        for (let k = i; k < j; k++) {
          seal(dirty[k]);
          dirty[k].data.copy(this.run, (k - i) * BLOCK_SIZE);
          dirty[k].dirty = false;
        }
        this.store.write(dirty[i].location, this.run.subarray(0, (j - i) * BLOCK_SIZE));
        this.writes += j - i;
      }
      i = j;
    }
    if (this.durable) this.store.sync();
  }

  /**
   * Writes the superblock, the commit point: sealed with `v`, written after everything flushed
   * before it, then synced. It never sits in the cache, so nothing writes it early.
   */
  commitSuperblock(location: number, data: Buffer, v: BlockValidator): void {
    const cached = this.cache.get(location);
    if (cached) {
      if (cached.pins > 0) throw new Error(`block manager: superblock ${location} is locked at commit`);
      this.cache.delete(location);
      this.spare.push(cached.data);
    }
    writeU64(data, BLOCKNR_OFFSET, location);
    data.writeUInt32LE(blockChecksum(data, v.salt), 0);
    this.store.write(location, data);
    this.writes++;
    if (this.durable) this.store.sync();
  }

  /** Reads the superblock (or its copy) straight from the device, validated. */
  readUncached(location: number, v: BlockValidator): Buffer {
    const buf = Buffer.alloc(BLOCK_SIZE);
    this.checkLocation(location);
    this.store.readInto(location, buf);
    this.reads++;
    this.validate(location, buf, v);
    return buf;
  }

  /** Forgets every cached block, dirty ones included (a transaction being abandoned). */
  discardAll(): void {
    for (const b of this.cache.values()) this.spare.push(b.data);
    this.cache.clear();
  }

  /** Blocks held in memory now. */
  get cachedBlocks(): number {
    return this.cache.size;
  }

  /** Blocks currently locked: 0 between operations, or a lock leaked. */
  get locked(): number {
    let n = 0;
    for (const b of this.cache.values()) if (b.pins > 0) n++;
    return n;
  }

  private lookup(location: number, v: BlockValidator): Block | undefined {
    const b = this.cache.get(location);
    if (!b) return undefined;
    if (b.validator !== v) {
      throw new MetadataBlockError(this.store.path, location, `expected a ${v.name}, but the block is in use as a ${b.validator.name}`);
    }
    // Most recently used last: eviction scans from the front.
    this.cache.delete(location);
    this.cache.set(location, b);
    return b;
  }

  private load(location: number, v: BlockValidator): Block {
    this.checkLocation(location);
    this.makeRoom();
    const buf = this.buffer(false);
    try {
      this.store.readInto(location, buf);
      this.reads++;
      this.validate(location, buf, v);
    } catch (e) {
      this.spare.push(buf);
      throw e;
    }
    const b = new Block(location, buf, v);
    this.cache.set(location, b);
    return b;
  }

  private validate(location: number, buf: Buffer, v: BlockValidator): void {
    if (buf.readUInt32LE(0) !== blockChecksum(buf, v.salt)) {
      throw new MetadataBlockError(this.store.path, location, `bad checksum in ${v.name}`);
    }
    const recorded = readU64(buf, BLOCKNR_OFFSET);
    if (recorded !== location) {
      throw new MetadataBlockError(this.store.path, location, `${v.name} says it is block ${recorded}`);
    }
    const reason = v.check?.(buf);
    if (reason) throw new MetadataBlockError(this.store.path, location, reason);
  }

  private checkLocation(location: number): void {
    if (!Number.isSafeInteger(location) || location < 0 || location >= this.store.nrBlocks) {
      throw new MetadataBlockError(this.store.path, location, `beyond the end of the metadata device (${this.store.nrBlocks} blocks)`);
    }
  }

  private buffer(zeroed: boolean): Buffer {
    const buf = this.spare.pop();
    if (buf) {
      if (zeroed) buf.fill(0);
      return buf;
    }
    return zeroed ? Buffer.alloc(BLOCK_SIZE) : Buffer.allocUnsafe(BLOCK_SIZE);
  }

  /** Drops least recently used unlocked blocks until one more fits, writing dirty ones out. */
  private makeRoom(): void {
    if (this.cache.size < this.capacity) return;
    for (const b of this.cache.values()) {
      if (b.pins > 0) continue;
      if (b.dirty) this.writeOne(b);
      this.cache.delete(b.location);
      this.spare.push(b.data);
      if (this.cache.size < this.capacity) return;
    }
  }

  private writeOne(b: Block): void {
    seal(b);
    this.store.write(b.location, b.data);
    this.writes++;
    b.dirty = false;
  }
}

function seal(b: Block): void {
  writeU64(b.data, BLOCKNR_OFFSET, b.location);
  b.data.writeUInt32LE(blockChecksum(b.data, b.validator.salt), 0);
}
