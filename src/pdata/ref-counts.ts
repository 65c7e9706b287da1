// Reference counts of the blocks a space map describes, as the tools compute them (from trees,
// or while building metadata): one byte per block, in pages of one bitmap's span allocated only
// where a count is set (nr_data_blocks can be huge and sparsely used), and a map for the rare
// counts above 254.
import { ENTRIES_PER_BITMAP } from './space-map/common.js';

const SPILLED = 255;

export class RefCounts {
  // Indexed by bitmap number; a plain array grown on demand, never sized up front.
  private readonly pages: (Uint8Array | undefined)[] = [];
  private readonly big = new Map<number, number>();

  get(b: number): number {
    const page = this.pages[Math.floor(b / ENTRIES_PER_BITMAP)];
    if (!page) return 0;
    const c = page[b % ENTRIES_PER_BITMAP];
    return c === SPILLED ? this.big.get(b)! : c;
  }

  inc(b: number): void {
    const p = Math.floor(b / ENTRIES_PER_BITMAP);
    const page = this.pages[p] ?? (this.pages[p] = new Uint8Array(ENTRIES_PER_BITMAP));
    const i = b - p * ENTRIES_PER_BITMAP;
    const c = page[i];
    if (c < SPILLED - 1) page[i] = c + 1;
    else if (c === SPILLED - 1) {
      page[i] = SPILLED;
      this.big.set(b, SPILLED);
    } else this.big.set(b, this.big.get(b)! + 1);
  }

  /** inc() of each of the `n` blocks from `b`, a page at a time. */
  incRange(b: number, n: number): void {
    const end = b + n;
    while (b < end) {
      const p = Math.floor(b / ENTRIES_PER_BITMAP);
      const page = this.pages[p] ?? (this.pages[p] = new Uint8Array(ENTRIES_PER_BITMAP));
      const base = p * ENTRIES_PER_BITMAP;
      const stop = Math.min(end, base + ENTRIES_PER_BITMAP) - base;
      for (let i = b - base; i < stop; i++) {
        const c = page[i];
        if (c < SPILLED - 1) page[i] = c + 1;
        else this.inc(base + i);
      }
      b = base + stop;
    }
  }

  /** dec() of each of the `n` blocks from `b`. */
  decRange(b: number, n: number): void {
    for (let i = 0; i < n; i++) this.dec(b + i);
  }

  /** Drops one reference; a count already at zero stays there. */
  dec(b: number): void {
    const page = this.pages[Math.floor(b / ENTRIES_PER_BITMAP)];
    if (!page) return;
    const i = b % ENTRIES_PER_BITMAP;
    const c = page[i];
    if (c === 0) return;
    if (c < SPILLED) page[i] = c - 1;
    else {
      const n = this.big.get(b)! - 1;
      if (n === SPILLED - 1) {
        this.big.delete(b);
        page[i] = SPILLED - 1;
      } else this.big.set(b, n);
    }
  }

  /** The counts of one bitmap's span, or undefined if all are zero. 255 means "see get()". */
  page(bitmap: number): Uint8Array | undefined {
    return this.pages[bitmap];
  }

  /** The counts of one bitmap's span [bitmap * 16320, + out.length) into `out`. */
  fillBitmap(bitmap: number, out: Uint32Array): void {
    const page = this.pages[bitmap];
    if (!page) {
      out.fill(0);
      return;
    }
    out.set(page.subarray(0, out.length));
    if (this.big.size === 0) return;
    const first = bitmap * ENTRIES_PER_BITMAP;
    for (let i = 0; i < out.length; i++) if (out[i] === SPILLED) out[i] = this.big.get(first + i)!;
  }
}
