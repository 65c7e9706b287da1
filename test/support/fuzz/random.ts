// Seeded randomness for the fuzz campaign: every case is replayable from (seed, case number).
import { rng } from '../generate.js';

/** One well-mixed 32-bit seed per (campaign seed, case): neighbouring cases share nothing. */
export function caseSeed(seed: number, caseNo: number): number {
  let h = (seed >>> 0) ^ Math.imul(caseNo + 1, 0x9e3779b1);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0 || 1;
}

export class Rand {
  private readonly next: () => number;

  constructor(seed: number) {
    this.next = rng(seed);
    // xorshift's first outputs follow the seed closely
    for (let i = 0; i < 4; i++) this.next();
  }

  /** A float in [0, 1). */
  float(): number {
    return this.next();
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** An integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[this.int(items.length)];
  }

  /** One of `items`, each as likely as its weight. */
  weighted<T>(items: readonly (readonly [T, number])[]): T {
    const total = items.reduce((s, [, w]) => s + w, 0);
    let x = this.next() * total;
    for (const [item, w] of items) {
      if ((x -= w) < 0) return item;
    }
    return items[items.length - 1][0];
  }

  u32(): number {
    return (this.next() * 0x100000000) >>> 0;
  }

  /** A uniformly random value of `bits` bits (bits <= 64). */
  bits(bits: number): bigint {
    const v = (BigInt(this.u32()) << 32n) | BigInt(this.u32());
    return v & ((1n << BigInt(bits)) - 1n);
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}
