// Reference counts of the blocks a space map describes, as the tools compute them (from trees,
// or while building metadata): they must be kept whole (the trees are walked device by device,
// the space map is in block order). Pages of one bitmap's span are allocated only where a count
// is set (nr_data_blocks can be huge and sparsely used). The first pages hold a byte a count, up
// to BYTE_PAGES_BUDGET: a small pool never meets the packed code (whose first widening costs V8 a
// deoptimisation, measurable on a pool of 1M mappings). Past it, a page holds its counts in 2
// bits until one would pass 3, then in 4 bits until one would pass 15, then in a byte: a pool
// whose blocks a few snapshots share takes 4 bits a block (a byte a block was 5.7 MB for the
// 20M-mapping bench pool). Counts above 254 are kept in a map.
import { ENTRIES_PER_BITMAP } from './space-map/common.js';

/** Entries of a page: the span of one bitmap. */
const SPAN = ENTRIES_PER_BITMAP;
/** In a page of bytes, a count above 254: the map holds it. */
const SPILLED = 255;
/** Bytes of pages allocated a byte a count before new pages start packed (64 pages, 1 MiB). */
const BYTE_PAGES_BUDGET = 1 << 20;

/** log2 of the counts a byte of `page` holds: 2 (2-bit counts), 1 (4-bit) or 0 (bytes). */
function packing(page: Uint8Array): number {
  return page.length === SPAN ? 0 : page.length === SPAN >>> 1 ? 1 : 2;
}

/** The count at `i` of a page packed `l`. */
function entry(page: Uint8Array, l: number, i: number): number {
  const bits = 8 >>> l;
  return (page[i >>> l] >>> ((i & ((1 << l) - 1)) * bits)) & (0xff >>> (8 - bits));
}

/** Byte -> its two halves widened, as low and high byte: 2 counts each (2 bits to 4) or 1 (4 bits to 8). */
const PAIRS_TO_NIBBLES = Uint16Array.from({ length: 256 }, (_, v) =>
  (v & 3) | (((v >>> 2) & 3) << 4) | (((v >>> 4) & 3) << 8) | ((v >>> 6) << 12));
const NIBBLES_TO_BYTES = Uint16Array.from({ length: 256 }, (_, v) => (v & 15) | ((v >>> 4) << 8));

export class RefCounts {
  /** Indexed by bitmap number; a plain array grown on demand, never sized up front. */
  private readonly pages: (Uint8Array | undefined)[] = [];
  private readonly big = new Map<number, number>();
  /** page()'s answer for a page not held in bytes. */
  private unpacked: Uint8Array | undefined;
  /** Pages allocated a byte a count so far (pages of bytes made by widening are not counted). */
  private bytePages = 0;

  /** `byteBudget`: bytes of pages held a byte a count before new pages start packed. */
  constructor(private readonly byteBudget = BYTE_PAGES_BUDGET) {}

  get(b: number): number {
    const p = Math.floor(b / SPAN);
    const page = this.pages[p];
    if (!page) return 0;
    const l = packing(page);
    const c = entry(page, l, b - p * SPAN);
    return c === SPILLED && l === 0 ? this.big.get(b)! : c;
  }

  inc(b: number): void {
    this.incRange(b, 1);
  }

  /** inc() of each of the `n` blocks from `b`, a page at a time. */
  incRange(b: number, n: number): void {
    const end = b + n;
    while (b < end) {
      const p = Math.floor(b / SPAN);
      const base = p * SPAN;
      const stop = end - base < SPAN ? end - base : SPAN;
      let page = this.pages[p] ?? this.newPage(p);
      let i = b - base;
      for (;;) {
        const len = page.length;
        i = len === SPAN >>> 1 ? incNibbles(page, i, stop) : len === SPAN >>> 2 ? incPairs(page, i, stop) : incBytes(page, i, stop);
        if (i === stop) break;
        // A count this packing cannot raise: widen the page, or spill the count to the map.
        if (len < SPAN) {
          page = this.widen(p, page, packing(page));
          continue;
        }
        const block = base + i;
        if (page[i] === SPILLED) this.big.set(block, this.big.get(block)! + 1);
        else {
          page[i] = SPILLED;
          this.big.set(block, SPILLED);
        }
        if (++i === stop) break;
      }
      b = base + stop;
    }
  }

  /** Page `p`, all zero: a byte a count while within the budget, else 2 bits. */
  private newPage(p: number): Uint8Array {
    if ((this.bytePages + 1) * SPAN > this.byteBudget) return (this.pages[p] = new Uint8Array(SPAN >>> 2));
    this.bytePages++;
    return (this.pages[p] = new Uint8Array(SPAN));
  }

  /** Page `p` (packed `l`) repacked in twice the bits a count. */
  private widen(p: number, page: Uint8Array, l: number): Uint8Array {
    const wider = new Uint8Array(SPAN >>> (l - 1));
    // Each byte becomes two, through a table: a byte of 2-bit counts to two of 4-bit ones, or a
    // byte of 4-bit counts to two bytes.
    const table = l === 2 ? PAIRS_TO_NIBBLES : NIBBLES_TO_BYTES;
    for (let i = 0; i < page.length; i++) {
      const halves = table[page[i]];
      wider[2 * i] = halves & 0xff;
      wider[2 * i + 1] = halves >>> 8;
    }
    this.pages[p] = wider;
    return wider;
  }

  /** dec() of each of the `n` blocks from `b`. */
  decRange(b: number, n: number): void {
    for (let i = 0; i < n; i++) this.dec(b + i);
  }

  /** Drops one reference; a count already at zero stays there. */
  dec(b: number): void {
    const p = Math.floor(b / SPAN);
    const page = this.pages[p];
    if (!page) return;
    const i = b - p * SPAN;
    const l = packing(page);
    const c = entry(page, l, i);
    if (c === 0) return;
    if (l > 0 || c < SPILLED) {
      page[i >>> l] -= 1 << ((i & ((1 << l) - 1)) * (8 >>> l));
      return;
    }
    const n = this.big.get(b)! - 1;
    if (n === SPILLED - 1) {
      this.big.delete(b);
      page[i] = SPILLED - 1;
    } else this.big.set(b, n);
  }

  /**
   * The counts of one bitmap's span as bytes, or undefined if all are zero; 255 means "see
   * get()". Read it before the next call (it may be a buffer this reuses), and never write to it.
   */
  page(bitmap: number): Uint8Array | undefined {
    const page = this.pages[bitmap];
    if (!page || packing(page) === 0) return page;
    const bytes = (this.unpacked ??= new Uint8Array(SPAN));
    unpack(page, bytes);
    return bytes;
  }

  /** The counts of one bitmap's span [bitmap * 16320, + out.length) into `out`. */
  fillBitmap(bitmap: number, out: Uint32Array): void {
    const page = this.pages[bitmap];
    if (!page) {
      out.fill(0);
      return;
    }
    unpack(page, out);
    if (this.big.size === 0 || packing(page) > 0) return;
    const first = bitmap * SPAN;
    for (let i = 0; i < out.length; i++) if (out[i] === SPILLED) out[i] = this.big.get(first + i)!;
  }
}

/** The first `out.length` counts of `page` into `out` (a typed array drops the writes past its end). */
function unpack(page: Uint8Array, out: Uint8Array | Uint32Array): void {
  const n = out.length;
  const l = packing(page);
  if (l === 0) out.set(page.subarray(0, n));
  else if (l === 1) {
    for (let i = 0; i < n; i += 2) {
      out[i] = page[i >>> 1] & 15;
      out[i + 1] = page[i >>> 1] >>> 4;
    }
  } else {
    for (let i = 0; i < n; i += 4) {
      const v = page[i >>> 2];
      out[i] = v & 3;
      out[i + 1] = (v >>> 2) & 3;
      out[i + 2] = (v >>> 4) & 3;
      out[i + 3] = v >>> 6;
    }
  }
}

// Each adds one to counts [i, stop) of a page of one packing, and returns where it stopped: at
// stop, or at a count this packing cannot raise by a plain add (3 of 2 bits, 15 of 4, 254 or
// spilled of a byte). One loop per packing, so shifts and masks are constants.
function incPairs(page: Uint8Array, i: number, stop: number): number {
  for (; i < stop; i++) {
    const shift = (i & 3) << 1;
    if (((page[i >>> 2] >>> shift) & 3) === 3) break;
    page[i >>> 2] += 1 << shift;
  }
  return i;
}

function incNibbles(page: Uint8Array, i: number, stop: number): number {
  for (; i < stop; i++) {
    const shift = (i & 1) << 2;
    if (((page[i >>> 1] >>> shift) & 15) === 15) break;
    page[i >>> 1] += 1 << shift;
  }
  return i;
}

function incBytes(page: Uint8Array, i: number, stop: number): number {
  for (; i < stop; i++) {
    if (page[i] >= SPILLED - 1) break;
    page[i]++;
  }
  return i;
}
