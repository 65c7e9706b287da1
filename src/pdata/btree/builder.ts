// Builds a B-tree bottom-up from entries arriving in key order, writing each node as soon as it is
// full. Only a small buffer per level is held, so memory does not grow with the tree.
//
// Nodes are packed so the kernel can keep updating them: each level holds back up to two nodes'
// worth of entries and writes a full node only when more arrive, so the last two nodes of a level
// share the remainder and every non-root node ends at least half full (the kernel needs a third).
//
// Subtrees are shared at the leaf level: a set of leaves built once (a `<def>`) can be pushed
// into any number of trees, which point at the same leaf blocks. Internal nodes are never shared,
// so pushing leaves never disturbs another tree.
import { BLOCK_SIZE } from '../../io/block-io.js';
import { BTREE_CSUM_XOR, sealBlock } from '../checksum.js';
import { U64, readBlockNr, readU64, u64Add, writeU64 } from '../le.js';
import { MetadataAllocator } from '../block-allocator.js';
import { INTERNAL_NODE, LEAF_NODE, NODE_HEADER_SIZE, maxEntriesFor } from './node.js';

/** A written node as its parent sees it. */
export interface NodeSummary {
  block: number;
  firstKey: U64;
  lastKey: U64;
  nrEntries: number;
}

/** Entries arrive out of order: the tree would be unsearchable. */
export class KeyOrderError extends Error {}

export interface BuilderOptions {
  /** Bytes per leaf value. */
  valueSize: number;
  /**
   * Called with the `n` values (packed, `valueSize` bytes each) of every leaf this builder
   * writes: the leaf holds a reference through each of them.
   */
  refValues?: (values: Buffer, n: number) => void;
  /** Undoes `refValues` for the values of a leaf that ends up unused. */
  unrefValues?: (values: Buffer, n: number) => void;
}

/**
 * Fills the values of a run of entries (see BTreeBuilder.pushRun): `n` values, those of entries
 * `offset` .. `offset + n - 1` of the run, as little-endian u32 words from `words[at]` on.
 */
export interface RunValues {
  fill(words: Uint32Array, at: number, offset: number, n: number): void;
}

const TWO_32 = 0x100000000;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** Where a level sends the nodes it writes: the level above, or a list of leaves. */
interface NodeSink {
  add(node: NodeSummary): void;
  /** Takes back the last node added (it has not been referenced yet). */
  removeLast(): void;
}

/** Buffered entries of one level and the nodes written from them. */
class Level {
  readonly maxEntries: number;
  /** Keys as they go on disk (u64 little-endian), so any u64 is kept exactly. */
  readonly keys: Buffer;
  readonly values: Buffer;
  /** The same bytes as u32 words (`Buffer.alloc` gives each its own aligned memory; every value size of the format is whole words). */
  readonly keyWords: Uint32Array;
  readonly valueWords: Uint32Array;
  len = 0;
  /** Nodes handed to the sink. */
  nodesOut = 0;
  /** The node being written, before it goes to the allocator's batch. */
  private readonly node = Buffer.alloc(BLOCK_SIZE);
  private readonly nodeWords = new Uint32Array(this.node.buffer, this.node.byteOffset, BLOCK_SIZE >>> 2);
  private readonly nodeHeader = new DataView(this.node.buffer, this.node.byteOffset, NODE_HEADER_SIZE);

  constructor(
    private readonly alloc: MetadataAllocator,
    readonly isLeaf: boolean,
    readonly valueSize: number,
    private readonly sink: () => NodeSink,
    private readonly refValues?: (values: Buffer, n: number) => void,
  ) {
    if (valueSize % 4 !== 0) throw new RangeError(`values of ${valueSize} bytes: the builder takes whole u32 words`);
    this.maxEntries = maxEntriesFor(valueSize);
    // Two nodes' worth are held back; a merge or rebalance can add up to one more node.
    this.keys = Buffer.alloc(3 * this.maxEntries * 8);
    this.values = Buffer.alloc(3 * this.maxEntries * valueSize);
    this.keyWords = new Uint32Array(this.keys.buffer, this.keys.byteOffset, this.keys.length / 4);
    this.valueWords = new Uint32Array(this.values.buffer, this.values.byteOffset, this.values.length / 4);
  }

  /**
   * Appends `count` entries keyed `firstKey`, `firstKey + 1`, ... (all below 2^53), their values
   * from `values`; as `push` would, a chunk at a time (little-endian hosts; every value size of
   * the format is whole words).
   */
  pushRun(firstKey: number, count: number, values: RunValues): void {
    const kw = this.keyWords;
    const wordsPerValue = this.valueSize >>> 2;
    const full = 2 * this.maxEntries;
    let hi = Math.floor(firstKey / TWO_32);
    let lo = firstKey - hi * TWO_32;
    for (let done = 0; done < count; ) {
      if (this.len >= full) this.emit(this.maxEntries);
      const n = Math.min(count - done, full - this.len);
      for (let w = 2 * this.len, end = w + 2 * n; w < end; w += 2) {
        kw[w] = lo;
        kw[w + 1] = hi;
        if (++lo === TWO_32) {
          lo = 0;
          hi++;
        }
      }
      values.fill(this.valueWords, this.len * wordsPerValue, done, n);
      this.len += n;
      done += n;
    }
  }

  /** Appends an entry (keys are checked by the caller), first writing a node if two are held. */
  push(key: U64, src: Buffer, srcOff: number): void {
    if (this.len >= 2 * this.maxEntries) this.emit(this.maxEntries);
    this.setKey(key);
    const vs = this.valueSize;
    const values = this.values;
    // Values are a few bytes: a byte loop beats Buffer.copy's bounds checks and call.
    for (let i = 0, to = this.len * vs; i < vs; i++) values[to + i] = src[srcOff + i];
    this.len++;
  }

  /** `push` of a 4-byte value given as a number (ref counts), without a buffer. */
  pushU32(key: number, value: number): void {
    if (this.len >= 2 * this.maxEntries) this.emit(this.maxEntries);
    this.setKey(key);
    if (LITTLE_ENDIAN) this.valueWords[this.len] = value;
    else this.values.writeUInt32LE(value, this.len * 4);
    this.len++;
  }

  /** Key slot `len`: a number as two u32 words (exact below 2^53), a bigint through writeU64. */
  private setKey(key: U64): void {
    if (typeof key === 'number' && LITTLE_ENDIAN) {
      const lo = key >>> 0;
      this.keyWords[2 * this.len] = lo;
      this.keyWords[2 * this.len + 1] = (key - lo) / TWO_32;
    } else {
      writeU64(this.keys, this.len * 8, key);
    }
  }

  /** Writes a node from the first `n` buffered entries. */
  emit(n: number): void {
    const block = this.alloc.alloc();
    const vs = this.valueSize;
    // Laid out in this level's own block through u32 words (TypedArray builtins, fast from the
    // first node), the unused space between keys and values and after the values zeroed.
    const node = this.node;
    const words = this.nodeWords;
    const valuesAt = (NODE_HEADER_SIZE >>> 2) + 2 * this.maxEntries;
    const valuesEnd = valuesAt + n * (vs >>> 2);
    const header = this.nodeHeader;
    header.setUint32(4, this.isLeaf ? LEAF_NODE : INTERNAL_NODE, true);
    header.setUint32(8, block % TWO_32, true);
    header.setUint32(12, Math.floor(block / TWO_32), true);
    header.setUint32(16, n, true);
    header.setUint32(20, this.maxEntries, true);
    header.setUint32(24, vs, true);
    words.set(this.keyWords.subarray(0, 2 * n), NODE_HEADER_SIZE >>> 2);
    words.fill(0, (NODE_HEADER_SIZE >>> 2) + 2 * n, valuesAt);
    words.set(this.valueWords.subarray(0, valuesEnd - valuesAt), valuesAt);
    words.fill(0, valuesEnd);
    sealBlock(node, BTREE_CSUM_XOR);
    this.alloc.writeAt(block, node);
    this.refValues?.(this.values, n);
    if (!this.isLeaf) for (let i = 0; i < n; i++) this.alloc.refCounts.inc(readBlockNr(this.values, i * vs));
    const summary: NodeSummary = {
      block,
      firstKey: n > 0 ? readU64(this.keys, 0) : 0,
      lastKey: n > 0 ? readU64(this.keys, (n - 1) * 8) : 0,
      nrEntries: n,
    };
    this.keyWords.copyWithin(0, 2 * n, 2 * this.len);
    this.valueWords.copyWithin(0, n * (vs >>> 2), this.len * (vs >>> 2));
    this.len -= n;
    this.nodesOut++;
    this.sink().add(summary);
  }

  /** Writes every buffered entry, as one node or two balanced ones. */
  emitAll(): void {
    while (this.len > 2 * this.maxEntries) this.emit(this.maxEntries);
    if (this.len === 0) return;
    if (this.len <= this.maxEntries) {
      this.emit(this.len);
    } else {
      const first = Math.floor(this.len / 2);
      this.emit(first);
      this.emit(this.len);
    }
  }

  /** Puts `n` entries (keys as u64 bytes, values) in front of the buffered ones. */
  prepend(keys: Buffer, values: Buffer, n: number): void {
    const vs = this.valueSize;
    this.keys.copyWithin(n * 8, 0, this.len * 8);
    this.values.copyWithin(n * vs, 0, this.len * vs);
    keys.copy(this.keys, 0, 0, n * 8);
    values.copy(this.values, 0, 0, n * vs);
    this.len += n;
  }
}

/** The level above the leaves: it turns node summaries into (first key, child block) entries. */
class InternalSink implements NodeSink {
  private readonly child = Buffer.alloc(8);
  constructor(readonly level: Level) {}

  add(node: NodeSummary): void {
    writeU64(this.child, 0, node.block);
    this.level.push(node.firstKey, this.child, 0);
  }

  removeLast(): void {
    this.level.len--;
  }
}

class ListSink implements NodeSink {
  readonly nodes: NodeSummary[] = [];
  add(node: NodeSummary): void {
    this.nodes.push(node);
  }
  removeLast(): void {
    this.nodes.pop();
  }
}

/** The last leaf handed up, kept in case the final leaf needs entries from it. */
interface LastLeaf {
  node: NodeSummary;
  /** Pushed in pre-built (shared) rather than written by this builder. */
  shared: boolean;
}

export class BTreeBuilder {
  private readonly leaves: Level;
  private readonly internal: Level[] = [];
  private readonly sinks: InternalSink[] = [];
  private readonly listSink?: ListSink;
  private readonly valueSize: number;
  private readonly half: number;
  private lastKey: U64 = -1;
  private lastLeaf: LastLeaf | null = null;
  private done = false;

  /**
   * `leavesOnly`: build just the leaves (a shared `<def>`), collected by `completeLeaves`
   * instead of being tied together under a root.
   */
  constructor(
    private readonly alloc: MetadataAllocator,
    private readonly opts: BuilderOptions,
    leavesOnly = false,
  ) {
    this.valueSize = opts.valueSize;
    if (leavesOnly) this.listSink = new ListSink();
    // Remember each leaf written, in case the final leaf must take entries back from it.
    const recordingSink: NodeSink = {
      add: (node) => {
        this.lastLeaf = { node, shared: false };
        this.sinkOfLeaves().add(node);
      },
      removeLast: () => this.sinkOfLeaves().removeLast(),
    };
    this.leaves = new Level(alloc, true, opts.valueSize, () => recordingSink, opts.refValues);
    this.half = Math.floor(this.leaves.maxEntries / 2);
  }

  /** Refuses a key that is not above every key pushed before. */
  private mustFollow(key: U64): void {
    if (key <= this.lastKey) throw new KeyOrderError(`key ${key} out of order: it follows key ${this.lastKey}`);
  }

  /** Adds one entry; `key` must be above every key pushed before. */
  push(key: U64, value: Buffer, valueOff = 0): void {
    this.mustFollow(key);
    this.lastKey = key;
    this.leaves.push(key, value, valueOff);
  }

  /** `push` for a tree of 4-byte values (the space maps' ref counts): the value as a u32. */
  pushU32(key: number, value: number): void {
    if (this.valueSize !== 4) throw new RangeError(`pushU32 into a tree of ${this.valueSize}-byte values`);
    this.mustFollow(key);
    this.lastKey = key;
    this.leaves.pushU32(key, value);
  }

  /**
   * Adds `count` entries keyed `firstKey` .. `firstKey + count - 1`, above every key pushed
   * before, with values filled by `values` straight into the node buffers (no per-entry call):
   * the fast path of long streams of mappings. Keys must stay below 2^53.
   */
  pushRun(firstKey: number, count: number, values: RunValues): void {
    this.mustFollow(firstKey);
    if (!Number.isSafeInteger(firstKey + count) || count < 1) throw new RangeError(`a run of ${count} keys from ${firstKey}`);
    if (!LITTLE_ENDIAN) return this.pushRunByEntry(firstKey, count, values);
    this.lastKey = firstKey + count - 1;
    this.leaves.pushRun(firstKey, count, values);
  }

  /**
   * `pushRun` where words in the host's order are not the disk's: one entry at a time, through
   * `push` (apart, so that `pushRun` stays small enough for V8 to inline into its callers).
   */
  private pushRunByEntry(firstKey: number, count: number, values: RunValues): void {
    const words = new Uint32Array(this.valueSize >>> 2);
    const value = Buffer.from(words.buffer);
    for (let i = 0; i < count; i++) {
      values.fill(words, 0, i, 1);
      for (let w = 0; w < words.length; w++) value.writeUInt32LE(words[w], 4 * w);
      this.push(firstKey + i, value);
    }
  }

  /**
   * Adds pre-built leaves (from `completeLeaves` of another builder) in key order. Each is shared
   * by pointing at it, unless it is too small to stand as a node here, or the entries pushed just
   * before it are too few to make a node of their own: then its entries are copied instead.
   */
  pushLeaves(leaves: NodeSummary[]): void {
    for (const leaf of leaves) {
      if (leaf.nrEntries === 0) continue;
      this.mustFollow(leaf.firstKey);
      const pending = this.leaves.len;
      if (leaf.nrEntries < this.half || (pending > 0 && pending < this.half)) {
        const { keys, values } = this.readLeaf(leaf);
        for (let i = 0; i < leaf.nrEntries; i++) this.push(readU64(keys, i * 8), values, i * this.valueSize);
        continue;
      }
      this.leaves.emitAll();
      this.leaves.nodesOut++;
      this.sinkOfLeaves().add(leaf);
      this.lastLeaf = { node: leaf, shared: true };
      this.lastKey = leaf.lastKey;
    }
  }

  /** Finishes a tree; returns its root block (an empty leaf if nothing was pushed). */
  complete(): number {
    this.finishLeaves();
    if (this.leaves.nodesOut === 0) this.leaves.emit(0);
    for (let i = 0; ; i++) {
      const level = this.internal[i];
      if (level.nodesOut === 0 && level.len === 1) return readBlockNr(level.values, 0);
      level.emitAll();
    }
  }

  /** Finishes a leaves-only builder; returns its leaves in key order. */
  completeLeaves(): NodeSummary[] {
    this.finishLeaves();
    return this.listSink!.nodes;
  }

  private finishLeaves(): void {
    if (this.done) throw new Error('B-tree builder completed twice');
    this.done = true;
    const pending = this.leaves.len;
    // Rather than end with an underfull leaf, take back the previous leaf and share its entries.
    if (pending > 0 && pending < this.half && this.leaves.nodesOut > 0 && this.lastLeaf) {
      this.takeBackLastLeaf(this.lastLeaf);
    }
    this.leaves.emitAll();
  }

  private takeBackLastLeaf(last: LastLeaf): void {
    const { keys, values } = this.readLeaf(last.node);
    this.sinkOfLeaves().removeLast();
    this.leaves.nodesOut--;
    // A leaf written here and never referenced is dropped: its values no longer count.
    if (!last.shared) this.opts.unrefValues?.(values, last.node.nrEntries);
    this.leaves.prepend(keys, values, last.node.nrEntries);
  }

  /** A leaf's entries, read back from the output. */
  private readLeaf(node: NodeSummary): { keys: Buffer; values: Buffer } {
    const n = node.nrEntries;
    const keys = Buffer.alloc(n * 8);
    const values = Buffer.alloc(n * this.valueSize);
    const buf = this.alloc.read(node.block);
    if (!buf) {
      // Counting mode (the output is full): only the number of entries matters now.
      for (let i = 0; i < n; i++) writeU64(keys, i * 8, u64Add(node.firstKey, i));
      return { keys, values };
    }
    const maxEntries = buf.readUInt32LE(20);
    buf.copy(keys, 0, NODE_HEADER_SIZE, NODE_HEADER_SIZE + n * 8);
    buf.copy(values, 0, NODE_HEADER_SIZE + 8 * maxEntries, NODE_HEADER_SIZE + 8 * maxEntries + n * this.valueSize);
    return { keys, values };
  }

  private sinkOfLeaves(): NodeSink {
    return this.listSink ?? this.parentOf(0);
  }

  /** The sink above level `i` (0 = leaves), created on first use. */
  private parentOf(i: number): InternalSink {
    let level = this.internal[i];
    if (!level) {
      level = new Level(this.alloc, false, 8, () => this.parentOf(i + 1));
      this.internal[i] = level;
      this.sinks[i] = new InternalSink(level);
    }
    return this.sinks[i];
  }
}
