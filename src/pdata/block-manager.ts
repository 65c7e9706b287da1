// The block manager: metadata blocks read through a bounded cache, each checked by the validator
// of its kind when it comes off the device (checksum, the block number it records, layout) and
// sealed (block number, checksum) when it goes back. Memory stays at the cache size however large
// the metadata: a clean block is dropped when space is needed, a dirty one is written out first.
//
// Dirty blocks may reach the device before a commit: the transaction manager only ever dirties
// blocks that the last commit does not use, so early writes never touch committed metadata. The
// superblock is the exception, which is why it never goes through the cache (see commitSuperblock).
import { BLOCK_SIZE, BlockWriter, InputError } from '../io/block-io.js';
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
  /** Writes consecutive blocks from `block` on, one buffer each (saves copying them together). */
  writeBlocks?(block: number, blocks: Buffer[]): void;
  /** Makes every write so far durable. */
  sync(): void;
}

/**
 * A store that passes every call to a metadata file: the base of stores that watch or cut off
 * the writes (a simulated crash, failing writes, a test's log). It has no `writeBlocks`, so a
 * subclass that overrides `write` sees every block written unless it adds its own.
 */
export class ForwardingStore implements BlockStore {
  constructor(protected readonly inner: BlockWriter) {}
  get path(): string {
    return this.inner.path;
  }
  get nrBlocks(): number {
    return this.inner.nrBlocks;
  }
  readInto(block: number, buf: Buffer): Buffer {
    return this.inner.readInto(block, buf);
  }
  write(block: number, data: Buffer): void {
    this.inner.write(block, data);
  }
  sync(): void {
    this.inner.sync();
  }
  close(): void {
    this.inner.close();
  }
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

/**
 * A cached block. `data` stays valid while the block is locked (between a get and its unlock);
 * after that the block manager may reuse the object for another location.
 */
export class Block {
  dirty = false;
  pins = 0;
  /** Neighbours in the cache's recency list (least recently used first). */
  older: Block | null = null;
  newer: Block | null = null;
  constructor(public location: number, readonly data: Buffer, public validator: BlockValidator) {}
}

export interface BlockManagerOptions {
  /** Blocks kept in memory (default 4096, 16 MiB). Locked blocks may exceed it briefly. */
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
  /** The recency list: a Map re-insert per access would make V8 rehash the table over and over. */
  private oldest: Block | null = null;
  private newest: Block | null = null;
  private readonly capacity: number;
  private readonly durable: boolean;
  /**
   * Blocks dropped from the cache, kept for reuse with their buffers: a block replaced on every
   * change would otherwise leave a steady stream of garbage in the old generation.
   */
  private readonly spare: Block[] = [];
  private run = Buffer.alloc(0);
  /** Blocks read from and written to the device, for the summary and the benchmarks. */
  reads = 0;
  writes = 0;

  constructor(readonly store: BlockStore, opts: BlockManagerOptions = {}) {
    this.capacity = Math.max(64, opts.cacheBlocks ?? 4096);
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

  /**
   * Locks block `location` as a new block of kind `v`, without reading it: zeroed, or with
   * whatever bytes (`zeroed` false) for a caller about to fill all of it.
   */
  zero(location: number, v: BlockValidator, zeroed = true): Block {
    this.checkLocation(location);
    let b = this.cache.get(location);
    if (b) {
      if (b.pins > 0) throw new Error(`block manager: block ${location} is reused while locked`);
      if (zeroed) b.data.fill(0);
      b.validator = v;
      this.touch(b);
    } else {
      this.makeRoom();
      b = this.block(location, v);
      if (zeroed) b.data.fill(0);
      this.add(b);
    }
    b.dirty = true;
    b.pins = 1;
    return b;
  }

  /**
   * Moves `b` (clean, locked once, by the caller) to `location`, a free block about to take its
   * copy: a shadow without copying. The caller's lock now holds `location`; the old location
   * leaves the cache, and a later read of it loads it from the device, which still holds it.
   */
  relocate(b: Block, location: number): Block {
    this.checkLocation(location);
    if (b.pins !== 1 || b.dirty) throw new Error(`block manager: block ${b.location} cannot move while shared or dirty`);
    const stale = this.cache.get(location);
    if (stale) {
      if (stale.pins > 0) throw new Error(`block manager: block ${location} is reused while locked`);
      // Whatever it held is dead: the block was free.
      this.drop(stale);
    }
    this.cache.delete(b.location);
    b.location = location;
    this.cache.set(location, b);
    b.dirty = true;
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
          dirty[k].dirty = false;
        }
        if (this.store.writeBlocks) {
          this.store.writeBlocks(dirty[i].location, dirty.slice(i, j).map((b) => b.data));
        } else {
          if (this.run.length === 0) this.run = Buffer.allocUnsafe(WRITE_RUN * BLOCK_SIZE);
          for (let k = i; k < j; k++) dirty[k].data.copy(this.run, (k - i) * BLOCK_SIZE);
          this.store.write(dirty[i].location, this.run.subarray(0, (j - i) * BLOCK_SIZE));
        }
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
      this.drop(cached);
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
    for (const b of this.cache.values()) this.recycle(b);
    this.cache.clear();
    this.oldest = this.newest = null;
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
    this.touch(b);
    return b;
  }

  private load(location: number, v: BlockValidator): Block {
    this.checkLocation(location);
    this.makeRoom();
    const b = this.block(location, v);
    try {
      this.store.readInto(location, b.data);
      this.reads++;
      this.validate(location, b.data, v);
    } catch (e) {
      this.recycle(b);
      throw e;
    }
    this.add(b);
    return b;
  }

  /** Links a new block in as the most recently used. */
  private add(b: Block): void {
    this.cache.set(b.location, b);
    b.older = this.newest;
    b.newer = null;
    if (this.newest) this.newest.newer = b;
    else this.oldest = b;
    this.newest = b;
  }

  private unlink(b: Block): void {
    if (b.older) b.older.newer = b.newer;
    else this.oldest = b.newer;
    if (b.newer) b.newer.older = b.older;
    else this.newest = b.older;
    b.older = b.newer = null;
  }

  /** Makes a cached block the most recently used. */
  private touch(b: Block): void {
    if (this.newest === b) return;
    this.unlink(b);
    b.older = this.newest;
    if (this.newest) this.newest.newer = b;
    else this.oldest = b;
    this.newest = b;
  }

  private drop(b: Block): void {
    this.unlink(b);
    this.cache.delete(b.location);
    this.recycle(b);
  }

  private recycle(b: Block): void {
    b.older = b.newer = null;
    b.dirty = false;
    b.pins = 0;
    this.spare.push(b);
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

  /** A block object for `location`, reused if one is spare; its bytes are whatever they were. */
  private block(location: number, v: BlockValidator): Block {
    const b = this.spare.pop();
    if (!b) return new Block(location, Buffer.alloc(BLOCK_SIZE), v);
    b.location = location;
    b.validator = v;
    return b;
  }

  /** Drops least recently used unlocked blocks until one more fits, writing dirty ones out. */
  private makeRoom(): void {
    let b = this.oldest;
    while (this.cache.size >= this.capacity && b) {
      const next = b.newer;
      if (b.pins === 0) {
        if (b.dirty) this.writeOne(b);
        this.drop(b);
      }
      b = next;
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
