// The model: what the pool must hold after every operation, kept by the kernel's rules as plainly
// as possible, independently of the pool's trees and space maps. Per device and virtual block it
// keeps who wrote the block (a trace line, zeroes, unknown, or a mix of those per sector), the
// data block the mapping points at and the time it was mapped; per data block how many mappings
// (or held allocations) use it. From that it says what every read must return, when a write must
// copy, which data block the kernel's allocation cursor hands out next and when the pool is out of
// data space. Compact: typed arrays, about 40 bytes per mapped block.
import { U64 } from '../pdata/le.js';

/** Content of a block (or a run of its sectors): a trace line (>= 1), or one of these. */
export const ZEROES = 0;
export const UNKNOWN = -1;
/** The block's sectors differ: see its segments. */
const MIXED = -2;

/** Sectors [begin, end) of a block hold what `line` wrote (or ZEROES, UNKNOWN). */
export interface Segment {
  begin: number;
  end: number;
  line: number;
}

/** A whole block's content: one line (or ZEROES, UNKNOWN) for all of it, or segments covering it. */
export type Content = number | Segment[];

/**
 * A device's read-only external origin (the thin target's origin device): its unmapped blocks
 * read from it. Its content is named by the trace line that attached it (so it reads as what that
 * line "wrote", or, with a file, what the file holds), and it ends after `sectors`.
 */
export interface OriginRef {
  line: number;
  sectors: number;
}

const EMPTY = 0;
const USED = 1;
const GONE = 2;

function hashKey(key: number): number {
  const h = Math.imul((key >>> 0) ^ Math.imul(Math.floor(key / 0x100000000), 0x27d4eb2f), 0x9e3779b1);
  return h ^ (h >>> 15);
}

/** Open addressing over typed arrays: one shard of a BlockTable. */
class Shard {
  size = 0;
  occupied = 0;
  keys: Float64Array;
  state: Uint8Array;
  /** Who wrote each block; empty when the model keeps no content (no data file). */
  line: Int32Array;
  /** Data blocks have 40 bits: the low 32 and the high 8 apart. */
  dataLow: Uint32Array;
  dataHigh: Uint8Array;
  time: Uint32Array;

  constructor(capacity: number, readonly content: boolean) {
    this.keys = new Float64Array(capacity);
    this.state = new Uint8Array(capacity);
    this.line = new Int32Array(content ? capacity : 0);
    this.dataLow = new Uint32Array(capacity);
    this.dataHigh = new Uint8Array(capacity);
    this.time = new Uint32Array(capacity);
  }

  data(i: number): number {
    return this.dataHigh[i] * 0x100000000 + this.dataLow[i];
  }

  setData(i: number, data: number): void {
    this.dataLow[i] = data >>> 0;
    this.dataHigh[i] = Math.floor(data / 0x100000000);
  }

  find(key: number, h: number): number {
    const mask = this.keys.length - 1;
    for (let i = h & mask; ; i = (i + 1) & mask) {
      const s = this.state[i];
      if (s === EMPTY) return -1;
      if (s === USED && this.keys[i] === key) return i;
    }
  }

  /** A slot for a new key (which is not present). */
  place(key: number, h: number): number {
    if ((this.occupied + 1) * 2 > this.keys.length) this.resize(this.size * 2 < this.keys.length / 4 ? this.keys.length : this.keys.length * 2);
    const mask = this.keys.length - 1;
    let slot = h & mask;
    while (this.state[slot] === USED) slot = (slot + 1) & mask;
    if (this.state[slot] === EMPTY) this.occupied++;
    this.state[slot] = USED;
    this.keys[slot] = key;
    this.size++;
    return slot;
  }

  clone(): Shard {
    const t = new Shard(1, this.content);
    t.size = this.size;
    t.occupied = this.occupied;
    t.keys = this.keys.slice();
    t.state = this.state.slice();
    t.line = this.line.slice();
    t.dataLow = this.dataLow.slice();
    t.dataHigh = this.dataHigh.slice();
    t.time = this.time.slice();
    return t;
  }

  private resize(capacity: number): void {
    const { keys, state, line, dataLow, dataHigh, time } = this;
    this.keys = new Float64Array(capacity);
    this.state = new Uint8Array(capacity);
    this.line = new Int32Array(this.content ? capacity : 0);
    this.dataLow = new Uint32Array(capacity);
    this.dataHigh = new Uint8Array(capacity);
    this.time = new Uint32Array(capacity);
    this.size = 0;
    this.occupied = 0;
    for (let i = 0; i < keys.length; i++) {
      if (state[i] !== USED) continue;
      const slot = this.place(keys[i], hashKey(keys[i]));
      if (this.content) this.line[slot] = line[i];
      this.dataLow[slot] = dataLow[i];
      this.dataHigh[slot] = dataHigh[i];
      this.time[slot] = time[i];
    }
  }
}

/** Shards of a table: each grows alone, so growing never holds two copies of the whole table. */
const SHARD_BITS = 4;
const SHARD_SHIFT = 27;
const LOCAL = (1 << SHARD_SHIFT) - 1;

/**
 * One device's mappings: thin block -> (content, data block, time), about 45 bytes an entry.
 * A slot names an entry until the table next changes.
 */
export class BlockTable {
  private readonly shards: Shard[];

  /** `content`: whether to keep who wrote each block (only a replay with data reads it back). */
  constructor(content: boolean, shards?: Shard[]) {
    this.shards = shards ?? Array.from({ length: 1 << SHARD_BITS }, () => new Shard(4, content));
  }

  get size(): number {
    let n = 0;
    for (const s of this.shards) n += s.size;
    return n;
  }

  /** The slot of `key`, or -1. */
  find(key: number): number {
    const h = hashKey(key);
    const shard = h >>> (32 - SHARD_BITS);
    const local = this.shards[shard].find(key, h);
    return local < 0 ? -1 : (shard << SHARD_SHIFT) | local;
  }

  /** Sets `key`'s mapping; returns its slot. */
  set(key: number, line: number, data: number, time: number): number {
    const h = hashKey(key);
    const shardIndex = h >>> (32 - SHARD_BITS);
    const shard = this.shards[shardIndex];
    let local = shard.find(key, h);
    if (local < 0) local = shard.place(key, h);
    if (shard.content) shard.line[local] = line;
    shard.setData(local, data);
    shard.time[local] = time;
    return (shardIndex << SHARD_SHIFT) | local;
  }

  deleteSlot(slot: number): void {
    const shard = this.shards[slot >>> SHARD_SHIFT];
    shard.state[slot & LOCAL] = GONE;
    shard.size--;
  }

  lineAt(slot: number): number {
    const shard = this.shards[slot >>> SHARD_SHIFT];
    return shard.content ? shard.line[slot & LOCAL] : UNKNOWN;
  }

  dataAt(slot: number): number {
    return this.shards[slot >>> SHARD_SHIFT].data(slot & LOCAL);
  }

  timeAt(slot: number): number {
    return this.shards[slot >>> SHARD_SHIFT].time[slot & LOCAL];
  }

  /** Every mapping, in no particular order. */
  forEach(fn: (key: number, slot: number) => void): void {
    this.shards.forEach((s, shard) => {
      for (let i = 0; i < s.keys.length; i++) if (s.state[i] === USED) fn(s.keys[i], (shard << SHARD_SHIFT) | i);
    });
  }

  clone(): BlockTable {
    return new BlockTable(this.shards[0].content, this.shards.map((s) => s.clone()));
  }
}

export interface ModelDevice {
  table: BlockTable;
  /** Blocks whose sectors differ (MIXED in the table): their segments, covering the whole block. */
  mixed: Map<number, Segment[]>;
  transactionId: U64;
  creationTime: number;
  snapTime: number;
  /** Mappings changed since the last commit (a flush through it commits). */
  changed: boolean;
  origin?: OriginRef;
}

function cloneDevice(d: ModelDevice): ModelDevice {
  // Segment arrays are never changed in place, so sharing them is safe.
  return { ...d, table: d.table.clone(), mixed: new Map(d.mixed), changed: false };
}

const CHUNK_SHIFT = 16;
const CHUNK = 1 << CHUNK_SHIFT;

/** How many mappings (and allocations not yet mapped) use each data block; chunks made on demand. */
class DataUsers {
  private readonly chunks: (Uint32Array | undefined)[] = [];
  used = 0;

  get(b: number): number {
    return this.chunks[b >>> CHUNK_SHIFT]?.[b & (CHUNK - 1)] ?? 0;
  }

  /** Data blocks with more than one user. */
  shared(): number {
    let n = 0;
    for (const chunk of this.chunks) {
      if (!chunk) continue;
      for (let i = 0; i < CHUNK; i++) if (chunk[i] > 1) n++;
    }
    return n;
  }

  /** Adds `delta`; returns the count before. */
  add(b: number, delta: number): number {
    const c = b >>> CHUNK_SHIFT;
    const chunk = this.chunks[c] ?? (this.chunks[c] = new Uint32Array(CHUNK));
    const i = b & (CHUNK - 1);
    const before = chunk[i];
    const after = before + delta;
    if (after < 0) throw new Error(`model: data block ${b} released more often than held`);
    chunk[i] = after;
    if (before === 0 && after > 0) this.used++;
    else if (before > 0 && after === 0) this.used--;
    return before;
  }
}

/** What an allocation must return: a block, or out of space (after a commit when none is free at all). */
export type Allocation = { block: number } | { outOfSpace: 'commit-first' | 'freed-in-transaction' };

export interface ModelStats {
  allocated: number;
  copied: number;
  freed: number;
}

/** How to take back one change of the metadata (a transaction's changes are undone on abort or crash). */
type Undo =
  | { kind: 'mapping'; devId: number; block: number; existed: boolean; line: number; data: number; time: number; mixed?: Segment[] }
  | { kind: 'hold'; block: number; delta: number }
  | { kind: 'device'; devId: number; device: ModelDevice | undefined; holds: boolean }
  | { kind: 'rename'; from: number; to: number }
  | { kind: 'pool'; time: number; transactionId: U64; held: Map<number, ModelDevice> | null; snapTimes: Array<[number, number]> };

export class Model {
  time = 0;
  transactionId: U64 = 0;
  readonly devices = new Map<number, ModelDevice>();
  /** The metadata snapshot's devices, as they were when it was taken. */
  held: Map<number, ModelDevice> | null = null;
  private readonly users = new DataUsers();
  /** Data blocks whose use changed in this transaction: were they in use at the last commit? */
  private readonly usedAtCommit = new Map<number, boolean>();
  /** The allocation cursor: starts at 0 when the pool is opened, survives commits. */
  private cursor = 0;
  /**
   * Data blocks allocated whose mapping is not inserted yet (IO in flight, or IO that failed after
   * its allocation): a commit records them allocated but mapped by nothing, as the kernel's does.
   */
  readonly unmappedAllocations = new Set<number>();
  readonly stats: ModelStats = { allocated: 0, copied: 0, freed: 0 };
  /** This transaction's changes, newest last. */
  private undo: Undo[] = [];
  private undoing = false;

  /** `content`: keep who wrote each block, to check what reads return (a replay with data). */
  constructor(public nrDataBlocks: number, readonly sectorsPerBlock: number, readonly keepsContent = true) {}

  /** A new, empty table for a device. */
  newTable(): BlockTable {
    return new BlockTable(this.keepsContent);
  }

  // ---- data blocks

  private hold(b: number, delta: number): void {
    if (!this.usedAtCommit.has(b) && !this.undoing) this.usedAtCommit.set(b, this.users.get(b) > 0);
    const before = this.users.add(b, delta);
    if (before > 0 && before + delta === 0 && !this.undoing) this.stats.freed++;
  }

  /** Whether a data block is mapped (or allocated) by anything now, the held snapshot included. */
  inUse(b: number): boolean {
    return this.users.get(b) > 0;
  }

  private free(b: number): boolean {
    if (this.users.get(b) > 0) return false;
    const atCommit = this.usedAtCommit.get(b);
    return atCommit === undefined || !atCommit;
  }

  /** The kernel's choice: the first block from the cursor on free now and at the last commit. */
  nextAllocation(): Allocation {
    if (this.nrDataBlocks - this.users.used === 0) return { outOfSpace: 'commit-first' };
    for (const [from, to] of [[this.cursor, this.nrDataBlocks], [0, Math.min(this.cursor, this.nrDataBlocks)]]) {
      for (let b = from; b < to; b++) if (this.free(b)) return { block: b };
    }
    return { outOfSpace: 'freed-in-transaction' };
  }

  /** The pool handed out `b` (checked against nextAllocation by the caller). */
  allocated(b: number, copy: boolean): void {
    this.cursor = b + 1;
    this.hold(b, 1);
    this.unmappedAllocations.add(b);
    this.undo.push({ kind: 'hold', block: b, delta: 1 });
    this.stats.allocated++;
    if (copy) this.stats.copied++;
  }

  /** Counts every data block's users afresh from the devices and the held snapshot (a model just loaded). */
  recount(): void {
    for (const devices of [this.devices, this.held ?? new Map<number, ModelDevice>()]) {
      for (const d of devices.values()) d.table.forEach((_k, slot) => this.users.add(d.table.dataAt(slot), 1));
    }
  }

  /** Data blocks more than one mapping (or the held snapshot and a mapping) use. */
  get sharedDataBlocks(): number {
    return this.users.shared();
  }

  get freeDataBlocks(): number {
    return this.nrDataBlocks - this.users.used;
  }

  // ---- devices

  device(devId: number): ModelDevice | undefined {
    return this.devices.get(devId);
  }

  createThin(devId: number): void {
    this.undo.push({ kind: 'device', devId, device: undefined, holds: false });
    this.devices.set(devId, { table: this.newTable(), mixed: new Map(), transactionId: this.transactionId, creationTime: this.time, snapTime: this.time, changed: false });
  }

  createSnap(devId: number, originId: number): void {
    const origin = this.devices.get(originId)!;
    this.savePool([[originId, origin.snapTime]]);
    this.undo.push({ kind: 'device', devId, device: undefined, holds: true });
    this.time++;
    origin.snapTime = this.time;
    const snap = cloneDevice(origin);
    snap.transactionId = this.transactionId;
    snap.creationTime = this.time;
    snap.snapTime = this.time;
    snap.table.forEach((_k, slot) => this.hold(snap.table.dataAt(slot), 1));
    this.devices.set(devId, snap);
  }

  deleteDevice(devId: number): void {
    const d = this.devices.get(devId)!;
    this.undo.push({ kind: 'device', devId, device: d, holds: true });
    d.table.forEach((_k, slot) => this.hold(d.table.dataAt(slot), -1));
    this.devices.delete(devId);
  }

  /**
   * Rolls origin `originId` back to its snapshot `snapId`, as lvm2 merges a thin snapshot: the
   * origin's mappings are released and the snapshot's device (mappings, details, external
   * origin) takes the origin's id.
   */
  merge(snapId: number, originId: number): void {
    this.deleteDevice(originId);
    this.undo.push({ kind: 'rename', from: snapId, to: originId });
    this.devices.set(originId, this.devices.get(snapId)!);
    this.devices.delete(snapId);
  }

  /** What a read of an unmapped block returns: its external origin's sectors, zeroes past the origin's end. */
  unmappedContent(devId: number, block: number): Content {
    const origin = this.devices.get(devId)?.origin;
    const first = block * this.sectorsPerBlock;
    if (!origin || first >= origin.sectors) return ZEROES;
    const n = origin.sectors - first;
    return n >= this.sectorsPerBlock ? origin.line : [{ begin: 0, end: n, line: origin.line }, { begin: n, end: this.sectorsPerBlock, line: ZEROES }];
  }

  /**
   * What a newly provisioned block holds before a partial write lands on it: the external
   * origin's sectors copied (dm-thin's schedule_external_copy), the rest zeroed, or left as the
   * data block was when zeroing is off.
   */
  provisionContent(devId: number, block: number, zero: boolean): Content {
    const origin = this.devices.get(devId)?.origin;
    const first = block * this.sectorsPerBlock;
    const rest = zero ? ZEROES : UNKNOWN;
    if (!origin || first >= origin.sectors) return rest;
    const n = origin.sectors - first;
    return n >= this.sectorsPerBlock ? origin.line : [{ begin: 0, end: n, line: origin.line }, { begin: n, end: this.sectorsPerBlock, line: rest }];
  }

  setTransactionId(id: U64): void {
    this.savePool([]);
    this.transactionId = id;
  }

  private savePool(snapTimes: Array<[number, number]>): void {
    this.undo.push({ kind: 'pool', time: this.time, transactionId: this.transactionId, held: this.held, snapTimes });
  }

  reserveMetadataSnap(): void {
    this.savePool([]);
    const held = new Map<number, ModelDevice>();
    for (const [id, d] of this.devices) {
      const copy = cloneDevice(d);
      copy.table.forEach((_k, slot) => this.hold(copy.table.dataAt(slot), 1));
      held.set(id, copy);
    }
    this.held = held;
  }

  releaseMetadataSnap(): void {
    this.savePool([]);
    for (const d of this.held!.values()) d.table.forEach((_k, slot) => this.hold(d.table.dataAt(slot), -1));
    this.held = null;
  }

  // ---- mappings

  /** Maps `block` to `data` (already held by its allocation), replacing (and releasing) an old mapping. */
  map(devId: number, block: number, data: number, content: Content): void {
    const d = this.devices.get(devId)!;
    const slot = d.table.find(block);
    this.saveMapping(devId, d, block, slot);
    this.unmappedAllocations.delete(data);
    if (slot >= 0) this.hold(d.table.dataAt(slot), -1);
    this.setContent(d, block, content, data, this.time);
    d.changed = true;
  }

  /** Unmaps `block`; its data block loses this use. */
  unmap(devId: number, block: number): void {
    const d = this.devices.get(devId)!;
    const slot = d.table.find(block);
    this.saveMapping(devId, d, block, slot);
    this.hold(d.table.dataAt(slot), -1);
    d.table.deleteSlot(slot);
    d.mixed.delete(block);
    d.changed = true;
  }

  private saveMapping(devId: number, d: ModelDevice, block: number, slot: number): void {
    if (this.undoing) return;
    if (slot < 0) {
      this.undo.push({ kind: 'mapping', devId, block, existed: false, line: 0, data: 0, time: 0 });
    } else {
      const t = d.table;
      this.undo.push({ kind: 'mapping', devId, block, existed: true, line: t.lineAt(slot), data: t.dataAt(slot), time: t.timeAt(slot), mixed: d.mixed.get(block) });
    }
  }

  /**
   * Overwrites sectors [begin, end) of a mapped block in place. Not undone by an abort or a crash:
   * the data went where the committed mapping points too.
   */
  overwrite(devId: number, block: number, begin: number, end: number, line: number): void {
    const d = this.devices.get(devId)!;
    const slot = d.table.find(block);
    const content = begin === 0 && end === this.sectorsPerBlock ? line : overlay(segments(this.contentOf(devId, block), this.sectorsPerBlock), begin, end, line, this.sectorsPerBlock);
    this.setContent(d, block, content, d.table.dataAt(slot), d.table.timeAt(slot));
  }

  /** The content of a mapped block (UNKNOWN when the model keeps none). */
  contentOf(devId: number, block: number): Content {
    const d = this.devices.get(devId)!;
    const line = d.table.lineAt(d.table.find(block));
    return line === MIXED ? d.mixed.get(block)! : line;
  }

  private setContent(d: ModelDevice, block: number, content: Content, data: number, time: number): void {
    if (!this.keepsContent) {
      d.table.set(block, UNKNOWN, data, time);
      return;
    }
    let line: number;
    if (typeof content === 'number') line = content;
    else if (content.length === 1) line = content[0].line;
    else line = MIXED;
    d.table.set(block, line, data, time);
    if (line === MIXED) d.mixed.set(block, content as Segment[]);
    else d.mixed.delete(block);
  }

  // ---- transactions

  commit(): void {
    this.usedAtCommit.clear();
    this.undo = [];
    for (const d of this.devices.values()) d.changed = false;
  }

  /**
   * Takes back every change since the last commit: what the metadata holds after an abort or a
   * crash. The pool is then opened afresh, so the allocation cursor starts over.
   */
  rollback(): void {
    this.undoing = true;
    try {
      for (let i = this.undo.length - 1; i >= 0; i--) {
        const u = this.undo[i];
        switch (u.kind) {
          case 'hold':
            this.hold(u.block, -u.delta);
            this.unmappedAllocations.delete(u.block);
            break;
          case 'mapping': {
            const d = this.devices.get(u.devId)!;
            const slot = d.table.find(u.block);
            if (slot >= 0) {
              // Its data block's use is its allocation's: undone with that if the allocation was
              // in this transaction too, else left allocated and mapped by nothing.
              this.unmappedAllocations.add(d.table.dataAt(slot));
              d.table.deleteSlot(slot);
              d.mixed.delete(u.block);
            }
            if (u.existed) {
              this.hold(u.data, 1);
              d.table.set(u.block, u.line, u.data, u.time);
              if (u.mixed) d.mixed.set(u.block, u.mixed);
            }
            break;
          }
          case 'rename':
            this.devices.set(u.from, this.devices.get(u.to)!);
            this.devices.delete(u.to);
            break;
          case 'device': {
            const now = this.devices.get(u.devId);
            if (now && u.holds) now.table.forEach((_k, slot) => this.hold(now.table.dataAt(slot), -1));
            if (u.device) {
              if (u.holds) u.device.table.forEach((_k, slot) => this.hold(u.device!.table.dataAt(slot), 1));
              this.devices.set(u.devId, u.device);
            } else {
              this.devices.delete(u.devId);
            }
            break;
          }
          case 'pool':
            if (this.held !== u.held) {
              for (const d of this.held?.values() ?? []) d.table.forEach((_k, slot) => this.hold(d.table.dataAt(slot), -1));
              for (const d of u.held?.values() ?? []) d.table.forEach((_k, slot) => this.hold(d.table.dataAt(slot), 1));
              this.held = u.held;
            }
            this.time = u.time;
            this.transactionId = u.transactionId;
            for (const [id, t] of u.snapTimes) {
              const d = this.devices.get(id);
              if (d) d.snapTime = t;
            }
            break;
        }
      }
    } finally {
      this.undoing = false;
    }
    this.commit();
    this.cursor = 0;
  }

  /** Whether anything a commit would write changed since the last one. */
  get changed(): boolean {
    for (const d of this.devices.values()) if (d.changed) return true;
    return false;
  }

}

/** A block's content as segments covering it. */
export function segments(content: Content, sectorsPerBlock: number): Segment[] {
  return typeof content === 'number' ? [{ begin: 0, end: sectorsPerBlock, line: content }] : content;
}

/** `content` with sectors [begin, end) replaced by `line`; segments merged where they meet. */
export function overlay(content: Segment[], begin: number, end: number, line: number, sectorsPerBlock: number): Segment[] {
  if (begin === 0 && end === sectorsPerBlock) return [{ begin, end, line }];
  const out: Segment[] = [];
  const push = (b: number, e: number, l: number): void => {
    const last = out[out.length - 1];
    if (last && last.line === l && last.end === b) last.end = e;
    else out.push({ begin: b, end: e, line: l });
  };
  for (const s of content) if (s.begin < begin) push(s.begin, Math.min(s.end, begin), s.line);
  push(begin, end, line);
  for (const s of content) if (s.end > end) push(Math.max(s.begin, end), s.end, s.line);
  return out;
}
