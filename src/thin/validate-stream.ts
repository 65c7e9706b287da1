// A MetadataVisitor filter that refuses metadata thin_restore must not write, then forwards
// every event unchanged (apart from the superblock overrides) to the next visitor.
//
//   const v = new StreamValidator(writer, { nrDataBlocks: 1 << 20 });
//   await readMetadataXml('dump.xml', v);       // errors come out as "dump.xml:12: <reason>"
//
// It throws StreamError; a source that knows where the current event came from (the XML reader)
// prefixes the location. It holds a few numbers per device and per <def>, never per mapping.
import { U64, U64_MAX, u64Add } from '../pdata/le.js';
import { DeviceInfo, MetadataVisitor, PoolInfo, SuperblockOverrides, applyOverrides } from './events.js';
import { MAX_DATA_BLOCK } from './mapping.js';
import { MAX_DEV_ID } from './mapping-tree.js';
import { MAX_DATA_BLOCK_SIZE, MIN_DATA_BLOCK_SIZE, validDataBlockSize } from './superblock.js';

/** The event stream describes metadata that cannot be written; the message names the problem. */
export class StreamError extends Error {}

export type { SuperblockOverrides };
/** Superblock flag bits the kernel defines (needs_check). */
const KNOWN_FLAGS = 1;

/** Where in a device or def the last mapping ended; enough to check order without the mappings. */
interface Span {
  count: number; // mapped blocks so far
  first: U64; // first mapped thin block
  lastBegin: U64; // first thin block of the last run (or ref)
  end: U64; // one past the last mapped thin block (2^64 after the very last one)
}

const emptySpan = (): Span => ({ count: 0, first: -1, lastBegin: -1, end: 0 });
/** One past the largest thin block. */
const THIN_BLOCKS_END = U64_MAX + 1n;

export class StreamValidator implements MetadataVisitor {
  private pool: PoolInfo | undefined;
  private ended = false;
  private readonly devIds = new Set<number>();
  private readonly defs = new Map<string, Span>();
  private dev: DeviceInfo | undefined;
  private defName: string | undefined;
  private span = emptySpan();
  /** The pool's nr_data_blocks (at most 2^40, so a number) and time, for the per-mapping checks. */
  private nrDataBlocks = 0;
  private poolTime = 0;

  constructor(
    private readonly next: MetadataVisitor,
    private readonly overrides: SuperblockOverrides = {},
  ) {}

  superblockBegin(source: PoolInfo): void {
    if (this.pool) throw new StreamError('a second superblock');
    const pool = applyOverrides(source, this.overrides);
    const bs = pool.dataBlockSize;
    if (!validDataBlockSize(bs)) {
      throw new StreamError(
        `data_block_size ${bs} is not a multiple of ${MIN_DATA_BLOCK_SIZE} between ` +
          `${MIN_DATA_BLOCK_SIZE} and ${MAX_DATA_BLOCK_SIZE} sectors`,
      );
    }
    if (pool.nrDataBlocks > MAX_DATA_BLOCK + 1) {
      throw new StreamError(`nr_data_blocks ${pool.nrDataBlocks} exceeds 2^40, the most a mapping can address`);
    }
    if ((pool.flags & ~KNOWN_FLAGS) !== 0) {
      throw new StreamError(`flags ${pool.flags} has bits other than needs_check (1)`);
    }
    if (pool.version !== 1 && pool.version !== 2) {
      throw new StreamError(`version ${pool.version} is not a metadata version the kernel reads (1 or 2)`);
    }
    this.pool = pool;
    this.nrDataBlocks = Number(pool.nrDataBlocks);
    this.poolTime = pool.time;
    this.next.superblockBegin(pool);
  }

  superblockEnd(): void {
    this.needPool('end of superblock');
    if (this.dev || this.defName !== undefined) throw new StreamError('superblock ends inside a device or def');
    this.ended = true;
    this.next.superblockEnd();
  }

  deviceBegin(dev: DeviceInfo): void {
    const pool = this.needPool('device');
    if (this.dev) throw new StreamError(`device ${dev.devId} nested inside device ${this.dev.devId}`);
    if (this.defName !== undefined) throw new StreamError(`device ${dev.devId} inside def '${this.defName}'`);
    if (dev.devId > MAX_DEV_ID) throw new StreamError(`dev_id ${dev.devId} exceeds the kernel's limit ${MAX_DEV_ID}`);
    if (this.devIds.has(dev.devId)) throw new StreamError(`device ${dev.devId} appears twice`);
    for (const [what, t] of [['creation_time', dev.creationTime], ['snap_time', dev.snapTime]] as const) {
      if (t > pool.time) {
        throw new StreamError(`device ${dev.devId}: ${what} ${t} is later than the superblock's time ${pool.time}`);
      }
    }
    this.devIds.add(dev.devId);
    this.dev = dev;
    this.span = emptySpan();
    this.next.deviceBegin(dev);
  }

  deviceEnd(): void {
    const dev = this.dev;
    if (!dev) throw new StreamError('end of a device that was not begun');
    if (this.span.count !== dev.mappedBlocks) {
      throw new StreamError(
        `device ${dev.devId}: mapped_blocks is ${dev.mappedBlocks} but it holds ${this.span.count} mappings`,
      );
    }
    this.dev = undefined;
    this.next.deviceEnd();
  }

  mapRun(thinBegin: U64, dataBegin: number, length: number, time: number): void {
    // Every check in one test, the errors worded apart: kept this small, this and the writer's
    // mapRun both fit in the loop V8 inlines them into, with no boxed number passed per mapping.
    const end = u64Add(thinBegin, length);
    if (
      this.pool === undefined || this.ended || (!this.dev && this.defName === undefined) || !(length >= 1) ||
      typeof end !== 'number' || dataBegin + length - 1 >= this.nrDataBlocks || time > this.poolTime
    ) {
      this.refuseMapping(thinBegin, dataBegin, length, time, end);
    }
    this.follow(thinBegin, end, length);
    this.next.mapRun(thinBegin, dataBegin, length, time);
  }

  /** Throws what is wrong with a mapping, if anything (a thin block past 2^53 is fine). */
  private refuseMapping(thinBegin: U64, dataBegin: number, length: number, time: number, end: U64): void {
    this.needPool('mapping');
    if (!this.dev && this.defName === undefined) throw new StreamError('mapping outside a device or def');
    if (!(length >= 1)) throw new StreamError(`mapping of thin block ${thinBegin} has length ${length}`);
    if (typeof end !== 'number' && end > THIN_BLOCKS_END) {
      throw new StreamError(`thin blocks ${thinBegin} + length ${length} run past the largest thin block (2^64-1)`);
    }
    const nrDataBlocks = this.nrDataBlocks;
    if (dataBegin + length - 1 >= nrDataBlocks) {
      const bad = Math.max(dataBegin, nrDataBlocks);
      throw new StreamError(
        `data block ${bad} (thin block ${u64Add(thinBegin, bad - dataBegin)}) is beyond the data device: ` +
          `nr_data_blocks is ${nrDataBlocks}`,
      );
    }
    if (time > this.poolTime) {
      throw new StreamError(
        `mapping of thin block ${thinBegin} has time ${time}, later than the superblock's time ${this.poolTime}`,
      );
    }
  }

  defBegin(name: string): void {
    this.needPool('def');
    if (!this.next.defBegin) throw new StreamError('shared mappings (<def>/<ref>) are not supported here');
    if (this.dev) throw new StreamError(`def '${name}' inside device ${this.dev.devId}`);
    if (this.defName !== undefined) throw new StreamError(`def '${name}' nested inside def '${this.defName}'`);
    if (this.defs.has(name)) throw new StreamError(`def '${name}' is defined twice`);
    this.defName = name;
    this.span = emptySpan();
    this.next.defBegin(name);
  }

  defEnd(): void {
    if (this.defName === undefined || !this.next.defEnd) throw new StreamError('end of a def that was not begun');
    this.defs.set(this.defName, this.span);
    this.defName = undefined;
    this.next.defEnd();
  }

  ref(name: string): void {
    if (!this.dev && this.defName === undefined) throw new StreamError(`ref '${name}' outside a device or def`);
    const def = this.defs.get(name);
    if (!def) throw new StreamError(`ref to undefined def '${name}'`);
    if (!this.next.ref) throw new StreamError('shared mappings (<def>/<ref>) are not supported here');
    if (def.count > 0) {
      // The def's own mappings were checked in order; only its place among its neighbours is new.
      this.follow(def.first, def.end, def.count, def.lastBegin);
    }
    this.next.ref(name);
  }

  /** The pool, or an error saying `what` came before any superblock. */
  private needPool(what: string): PoolInfo {
    if (!this.pool) throw new StreamError(`${what} before the superblock`);
    if (this.ended) throw new StreamError(`${what} after the end of the superblock`);
    return this.pool;
  }

  /** Records `count` mapped blocks spanning [begin, end) after the section's previous ones. */
  private follow(begin: U64, end: U64, count: number, lastBegin = begin): void {
    const s = this.span;
    if (s.count > 0 && begin < s.end) {
      const where = this.dev ? `device ${this.dev.devId}` : `def '${this.defName}'`;
      if (begin >= s.lastBegin) {
        throw new StreamError(
          `${where}: thin block ${begin} is mapped twice (the previous mapping covers ${s.lastBegin}..${u64Add(s.end, -1)})`,
        );
      }
      throw new StreamError(
        `${where}: mappings are not in increasing thin-block order (thin block ${begin} after ${s.lastBegin})`,
      );
    }
    // A store made every time: one made only at a section's start would come after V8 optimised
    // the parse (which inlines this) and throw that code away, once per device.
    s.first = s.count === 0 ? begin : s.first;
    s.count += count;
    s.lastBegin = lastBegin;
    s.end = end;
  }
}
