// thin_rmap as a library function: which devices and thin blocks map the given data blocks.
//
// As the reference thin_rmap 0.9.0: every device's tree is walked in dev_id order; each mapping
// to a data block inside the regions joins the region in hand when it continues it (same
// device, next thin block, next data block) or starts a new one; the regions are then sorted by
// first data block, ties in the reference's order (rmap-order.ts), and printed as
// `data B..E -> thin(D) T..U`. Memory grows with the output, not with the pool: the records
// live in typed arrays (20 bytes a region with the sort's order), and the walk remembers which
// nodes it has seen.
import { BlockReader } from '../io/block-io.js';
import { openMetadataInput } from '../io/open.js';
import { ascii, putAscii } from '../formats/ascii.js';
import { FdSink, NUMBER_ROOM, putNumber } from '../formats/output.js';
import { BTreeNode, NODE_HEADER_SIZE } from '../pdata/btree/node.js';
import { BTreeError, SubtreeMemo, walkBTree } from '../pdata/btree/walk.js';
import { U64, parseU64, toU64, u64Add } from '../pdata/le.js';
import { MAPPING_VALUE_SIZE, readDeviceDetails, readDeviceRoots } from '../thin/mapping-tree.js';
import { readSuperblock } from '../thin/superblock.js';
import { stdSort } from './rmap-order.js';

/** Data blocks [begin, end). */
export interface Region {
  begin: U64;
  end: U64;
}

export class RmapError extends Error {}

/** `B..E` (E one past the end), with the reference's messages. */
export function parseRegion(text: string): Region {
  const dots = text.indexOf('..');
  if (dots < 0) throw new RmapError('badly formed region (no dots)');
  const begin = parseU64(text.slice(0, dots));
  const end = parseU64(text.slice(dots + 2));
  if (begin === null || end === null) throw new RmapError("badly formed region (couldn't parse numbers)");
  if (end <= begin) throw new RmapError('badly formed region (end <= begin)');
  return { begin, end };
}

/** The regions sorted and with overlapping or touching ones merged, for a binary search. */
function mergeRegions(regions: readonly Region[]): Region[] {
  const sorted = [...regions].sort((a, b) => (a.begin < b.begin ? -1 : a.begin > b.begin ? 1 : 0));
  const merged: Region[] = [];
  for (const r of sorted) {
    const last = merged[merged.length - 1];
    if (last && r.begin <= last.end) {
      if (r.end > last.end) last.end = r.end;
    } else {
      merged.push({ ...r });
    }
  }
  return merged;
}

/** A region bound as a number: data blocks are below 2^40, so a bound past 2^53 is past them all. */
const bound = (b: U64): number => (typeof b === 'number' ? b : Infinity);

const TWO_32 = 0x100000000;
/** High words of thin blocks below 2^53, which fit a number exactly. */
const SAFE_HI = 0x200000;
const INT32_MAX = 0x7fffffff;

/** Records reserved before the walk at most (128 MiB of address space); past that they grow. */
const MAX_INITIAL_RECORDS = 1 << 23;

/**
 * The reverse map in the making: one record per region of consecutive mappings, 20 bytes each
 * with the sort's order (a thin block's high word adds 4 only once one is past 2^32).
 */
class RmapRecords {
  count = 0;
  /** First data blocks, the sort keys: int32 while they fit (any pool below 2^31 blocks). */
  dataBegin: Int32Array | Float64Array;
  length: Uint32Array;
  devId: Uint32Array;
  /** Thin blocks as u32 words, exact to 2^64; the high words only once one is past 2^32. */
  thinLow: Uint32Array;
  thinHigh: Uint32Array | null = null;
  /** Lengths past 2^32 - 1, which real metadata (at most 16 GiB) cannot hold. */
  readonly longLength = new Map<number, number>();

  /**
   * Room for `capacity` records from the start: pages never written are never touched, so an
   * estimate above the count costs address space only, and the arrays are not copied as they grow.
   */
  constructor(capacity: number) {
    this.dataBegin = new Int32Array(capacity);
    this.length = new Uint32Array(capacity);
    this.devId = new Uint32Array(capacity);
    this.thinLow = new Uint32Array(capacity);
  }

  /** Starts record `count` (the caller found the mapping does not continue the last one). */
  start(devId: number, thinLow: number, thinHigh: number, data: number): void {
    if (this.count === this.length.length) this.grow();
    if (data > INT32_MAX && this.dataBegin instanceof Int32Array) this.dataBegin = Float64Array.from(this.dataBegin);
    const j = this.count++;
    this.devId[j] = devId;
    this.dataBegin[j] = data;
    this.thinLow[j] = thinLow;
    if (thinHigh !== 0) (this.thinHigh ??= new Uint32Array(this.length.length))[j] = thinHigh;
  }

  /** Ends record `count - 1` at `length` mappings. */
  end(length: number): void {
    const j = this.count - 1;
    if (length > 0xffffffff) this.longLength.set(j, length);
    else this.length[j] = length;
  }

  lengthOf(i: number): number {
    const len = this.length[i];
    return this.longLength.size === 0 ? len : this.longLength.get(i) ?? len;
  }

  thin(i: number): U64 {
    const high = this.thinHigh === null ? 0 : this.thinHigh[i];
    const low = this.thinLow[i];
    return high < SAFE_HI ? high * TWO_32 + low : toU64((BigInt(high) << 32n) | BigInt(low));
  }

  private grow(): void {
    const n = this.length.length * 2;
    const grown = <T extends Int32Array | Float64Array | Uint32Array>(a: T, b: T): T => (b.set(a), b);
    this.dataBegin = this.dataBegin instanceof Int32Array ? grown(this.dataBegin, new Int32Array(n)) : grown(this.dataBegin, new Float64Array(n));
    this.length = grown(this.length, new Uint32Array(n));
    this.devId = grown(this.devId, new Uint32Array(n));
    this.thinLow = grown(this.thinLow, new Uint32Array(n));
    if (this.thinHigh) this.thinHigh = grown(this.thinHigh, new Uint32Array(n));
  }
}

/** The records of a reverse map and their order by first data block (`dataBegin`, sorted). */
interface ReverseMap {
  records: RmapRecords;
  order: Int32Array;
  dataBegin: Int32Array | Float64Array;
}

/**
 * The reverse map of `regions`, in the reference's order: record `order[k]` is the k-th to print,
 * and `dataBegin[k]` its first data block. Throws RmapError on damage.
 */
export function reverseMap(
  io: BlockReader,
  regions: readonly Region[],
  onProgress?: (done: number, total: number) => void,
): ReverseMap {
  const merged = mergeRegions(regions);
  const begins = Float64Array.from(merged, (r) => bound(r.begin));
  const ends = Float64Array.from(merged, (r) => bound(r.end));
  const lowest = begins[0];
  const highest = ends[ends.length - 1];
  const single = merged.length === 1;
  const inRegions = (b: number): boolean => {
    let lo = 0;
    let hi = ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ends[mid] <= b) lo = mid + 1;
      else hi = mid;
    }
    return lo < ends.length && begins[lo] <= b;
  };

  const sb = readSuperblock(io);
  const fail = (e: BTreeError): never => {
    throw new RmapError(`Damage in mapping tree, please run thin_check: ${e.message}`);
  };
  // Every device's mapped blocks: the progress bar's total (shared subtrees are read once, so it
  // ends early) and, each capped at the regions' size, at most that many records. The reference
  // does not read the device details: damage there only leaves the estimate wrong.
  let regionBlocks = 0;
  // (A region starting past 2^53 holds no data block.)
  for (let r = 0; r < begins.length; r++) if (begins[r] !== Infinity) regionBlocks += ends[r] - begins[r];
  let total = 0;
  let most = 0;
  for (const d of readDeviceDetails(io, sb.deviceDetailsRoot, () => {})) {
    total += Number(d.mappedBlocks);
    most += Math.min(Number(d.mappedBlocks), regionBlocks);
  }
  const records = new RmapRecords(most > 1024 ? Math.min(most, MAX_INITIAL_RECORDS) : 1024);
  // The record in the making: it goes on while a device maps the next thin block (u32 words,
  // exact to 2^64) to the next data block.
  let runLength = 0;
  let nextData = -1;
  let nextThinLow = 0;
  let nextThinHigh = 0;
  // As the reference, a node is visited once in the whole walk: a subtree devices share is
  // reported for the first of them (in dev_id order) only.
  const memo: SubtreeMemo = new Map();
  let done = 0;
  for (const { devId, root } of readDeviceRoots(io, sb.dataMappingRoot, fail)) {
    nextData = -1; // a new device starts a new record
    walkBTree(io, root, MAPPING_VALUE_SIZE, {
      leaf(node: BTreeNode) {
        const words = node.words;
        const n = node.nrEntries;
        let length = runLength;
        let dataNext = nextData;
        let thinLowNext = nextThinLow;
        let thinHighNext = nextThinHigh;
        for (let i = 0, k = NODE_HEADER_SIZE / 4, v = (NODE_HEADER_SIZE + 8 * node.maxEntries) / 4; i < n; i++, k += 2, v += 2) {
          const data = words[v + 1] * 256 + (words[v] >>> 24);
          if (data < lowest || data >= highest || !(single || inRegions(data))) continue;
          const thinLow = words[k];
          const thinHigh = words[k + 1];
          if (data === dataNext && thinLow === thinLowNext && thinHigh === thinHighNext) {
            length++;
          } else {
            if (length > 0) records.end(length);
            records.start(devId, thinLow, thinHigh, data);
            length = 1;
          }
          dataNext = data + 1;
          thinLowNext = (thinLow + 1) >>> 0;
          thinHighNext = thinLowNext === 0 ? (thinHigh + 1) >>> 0 : thinHigh;
        }
        runLength = length;
        nextData = dataNext;
        nextThinLow = thinLowNext;
        nextThinHigh = thinHighNext;
        done += n;
        onProgress?.(done, total);
      },
      error: fail,
    }, { memo });
  }
  if (runLength > 0) records.end(runLength);
  return sortRecords(records);
}

/**
 * The records' order by first data block. A function of its own: reverseMap is optimised during
 * the walk, and a loop after it, never run by then, would throw that code away and start
 * interpreted (half a million records at 1M).
 */
function sortRecords(records: RmapRecords): ReverseMap {
  const order = new Int32Array(records.count);
  for (let i = 0; i < order.length; i++) order[i] = i;
  // Sorted in place along with the order: the records' first data blocks are not needed unsorted.
  const dataBegin = records.dataBegin.subarray(0, records.count);
  stdSort(order, dataBegin);
  return { records, order, dataBegin };
}

/** The end of a region, as the reference's u64 arithmetic has it: 2^64 wraps to 0. */
function thinEnd(thin: U64, len: number): U64 {
  const end = u64Add(thin, len);
  return end === 2n ** 64n ? 0 : end;
}

const DATA = ascii('data ');
const DOTS = ascii('..');
const ARROW = ascii(' -> thin(');
const CLOSE = ascii(') ');
const NEWLINE = ascii('\n');
/** The longest line: five numbers of up to 20 digits and the text between them. */
const LINE_ROOM = 5 * NUMBER_ROOM + 32;

/** A line with a number past 2^31, through the U64 path (rare: kept out of the hot loop). */
function printWideLine(out: FdSink, data: number, len: number, dev: number, thin: U64): void {
  out.bytes(DATA);
  out.number(data);
  out.bytes(DOTS);
  out.number(data + len);
  out.bytes(ARROW);
  out.number(dev);
  out.bytes(CLOSE);
  out.number(thin);
  out.bytes(DOTS);
  out.number(thinEnd(thin, len));
  out.bytes(NEWLINE);
}

/** Prints the reverse map of `regions` of the pool at `input`. */
export function rmapPool(
  input: string,
  regions: readonly Region[],
  stdoutFd = 1,
  onProgress?: (done: number, total: number) => void,
): void {
  if (regions.length === 0) throw new RmapError('No regions provided.');
  const io = openMetadataInput(input);
  try {
    const { records, order, dataBegin } = reverseMap(io, regions, onProgress);
    const out = new FdSink(stdoutFd);
    const { buf, view } = out;
    const { length: lengths, devId: devIds, thinLow } = records;
    // A line whose numbers are all below 2^31, the common case, is formatted in place; any other
    // goes through the U64 path (every line does once a thin block passes 2^32 or a length
    // 2^32 - 1: their high parts live outside the arrays read here).
    const plain = records.thinHigh === null && records.longLength.size === 0;
    // Lines with the same first data block and length (snapshots sharing a run) have the same
    // `data B..E -> thin(` prefix: copied from the line before while it is still in the buffer.
    let prevData = -1;
    let prevLen = 0;
    let prevStart = 0;
    let prevArrowEnd = 0;
    let prevThin = -1;
    let prevCloseStart = 0;
    let prevEnd = 0;
    for (let k = 0; k < order.length; k++) {
      const i = order[k];
      const data = dataBegin[k];
      const len = lengths[i];
      const thin = thinLow[i];
      const dev = devIds[i];
      if (plain && data + len <= INT32_MAX && thin + len <= INT32_MAX && dev <= INT32_MAX) {
        let p = out.reserve(LINE_ROOM);
        const lineStart = p;
        const copied = data === prevData && len === prevLen && p > prevArrowEnd;
        if (copied) {
          const n = prevArrowEnd - prevStart;
          for (let c = 0; c < n; c += 4) view.setUint32(p + c, view.getUint32(prevStart + c, true), true);
          p += n;
        } else {
          putAscii(view, buf, p, DATA);
          p = putNumber(view, buf, p + DATA.length, data);
          putAscii(view, buf, p, DOTS);
          p = putNumber(view, buf, p + DOTS.length, data + len);
          putAscii(view, buf, p, ARROW);
          p += ARROW.length;
          prevData = data;
          prevLen = len;
        }
        prevStart = lineStart;
        prevArrowEnd = p;
        p = putNumber(view, buf, p, dev);
        if (thin === prevThin && copied) {
          // The same thin blocks too (a snapshot's unbroken sharing): the rest of the line as well.
          const n = prevEnd - prevCloseStart;
          for (let c = 0; c < n; c += 4) view.setUint32(p + c, view.getUint32(prevCloseStart + c, true), true);
          prevCloseStart = p;
          p += n;
        } else {
          prevCloseStart = p;
          putAscii(view, buf, p, CLOSE);
          p = putNumber(view, buf, p + CLOSE.length, thin);
          putAscii(view, buf, p, DOTS);
          p = putNumber(view, buf, p + DOTS.length, thin + len);
          buf[p++] = 0x0a;
          prevThin = thin;
        }
        prevEnd = p;
        out.advance(p);
      } else {
        printWideLine(out, data, records.lengthOf(i), dev, records.thin(i));
        prevData = -1;
      }
    }
    out.flush();
  } finally {
    io.close();
  }
}
