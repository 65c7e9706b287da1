// The bottom-up B-tree builder: node fill, key order, heights, a big stream, shared leaves.
// Trees are written to a temp file and read back node by node.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { BlockReader, BlockWriter } from '../src/io/block-io.js';
import { BTreeBuilder, KeyOrderError, NodeSummary } from '../src/pdata/btree/builder.js';
import { BlockAllocator } from '../src/pdata/block-allocator.js';
import { BTreeNode, maxEntriesFor, nodeDefect } from '../src/pdata/btree/node.js';
import { readBlockNr, writeU64 } from '../src/pdata/le.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('thin-builder-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const MAX8 = maxEntriesFor(8);

interface TreeShape {
  height: number;
  entries: [number, number][];
  leaves: number[];
}

/** Reads a tree back, checking what the kernel relies on at every node; returns the problems found. */
function readTree(io: BlockReader, root: number, valueSize = 8): TreeShape {
  const entries: [number, number][] = [];
  const leaves: number[] = [];
  const depths = new Set<number>();
  const problems: string[] = [];
  const visit = (block: number, depth: number, isRoot: boolean, lowKey: number | null): void => {
    const node = new BTreeNode(block, io.read(block));
    const defect = nodeDefect(node, block, valueSize);
    if (defect) return void problems.push(`block ${block}: ${defect}`);
    if (node.maxEntries !== maxEntriesFor(node.isLeaf ? valueSize : 8)) problems.push(`block ${block}: max entries`);
    // Non-root nodes at least half full (the kernel needs a third).
    if (!isRoot && node.nrEntries < Math.floor(node.maxEntries / 2)) problems.push(`block ${block}: underfull`);
    for (let i = 1; i < node.nrEntries; i++) {
      if (node.key(i) <= node.key(i - 1)) problems.push(`block ${block}: key ${i} out of order`);
    }
    if (lowKey !== null && node.key(0) !== lowKey) problems.push(`block ${block}: first key is not the parent's key`);
    if (node.isLeaf) {
      depths.add(depth);
      leaves.push(block);
      for (let i = 0; i < node.nrEntries; i++) entries.push([Number(node.key(i)), valueSize === 8 ? node.valueBlock(i) : 0]);
    } else {
      for (let i = 0; i < node.nrEntries; i++) visit(node.valueBlock(i), depth + 1, false, Number(node.key(i)));
    }
  };
  visit(root, 1, true, null);
  expect(problems).toEqual([]);
  expect(depths.size).toBe(1);
  return { height: [...depths][0], entries, leaves };
}

let file: string;
let out: BlockWriter;
let alloc: BlockAllocator;
beforeEach(() => {
  file = path.join(dir, `t${Math.random().toString(36).slice(2)}.bin`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 64 * 1024 * 1024);
  out = new BlockWriter(file);
  alloc = new BlockAllocator(out);
  return () => out.close();
});

function finish(): BlockReader {
  alloc.flush();
  return new BlockReader(file);
}

const value = Buffer.alloc(8);
function pushRange(b: BTreeBuilder, from: number, n: number, step = 1): void {
  for (let i = 0; i < n; i++) {
    writeU64(value, 0, from + i * step + 7);
    b.push(from + i * step, value);
  }
}

describe('BTreeBuilder', () => {
  it('writes an empty tree as one empty leaf', () => {
    const root = new BTreeBuilder(alloc, { valueSize: 8 }).complete();
    const t = readTree(finish(), root);
    expect(t.height).toBe(1);
    expect(t.entries).toEqual([]);
  });

  it.each([1, MAX8 / 2, MAX8, MAX8 + 1, 2 * MAX8, 2 * MAX8 + 1, 3 * MAX8 - 1, MAX8 * MAX8, MAX8 * MAX8 + 1])(
    'packs %i entries into balanced, well-filled nodes of the least height',
    (n) => {
      const b = new BTreeBuilder(alloc, { valueSize: 8 });
      pushRange(b, 100, n, 3);
      const root = b.complete();
      const t = readTree(finish(), root);
      expect(t.entries.length).toBe(n);
      expect(t.entries.every(([k, v], i) => k === 100 + 3 * i && v === k + 7)).toBe(true);
      // Leaves needed at best, and the height a full fan-out gives.
      expect(t.leaves.length).toBe(Math.ceil(n / MAX8));
      let height = 1;
      for (let nodes = Math.ceil(n / MAX8); nodes > 1; nodes = Math.ceil(nodes / MAX8)) height++;
      expect(t.height).toBe(height);
    },
  );

  it('sizes nodes by value size (24-byte device details, 16-byte index entries, 4-byte counts)', () => {
    for (const valueSize of [24, 16, 4]) {
      const b = new BTreeBuilder(alloc, { valueSize });
      const v = Buffer.alloc(valueSize, 0xab);
      for (let i = 0; i < 1000; i++) b.push(i, v);
      const root = b.complete();
      const io = finish();
      const t = readTree(io, root, valueSize);
      io.close();
      expect(t.leaves.length).toBe(Math.ceil(1000 / maxEntriesFor(valueSize)));
    }
  });

  it('refuses keys that do not rise', () => {
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    pushRange(b, 10, 5);
    expect(() => b.push(14, value)).toThrow(KeyOrderError);
    expect(() => b.push(3, value)).toThrow(KeyOrderError);
  });

  it('streams a million entries with keys up to 2^52', () => {
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    const n = 1_000_000;
    for (let i = 0; i < n; i++) {
      writeU64(value, 0, i);
      b.push(i * 2 ** 32, value);
    }
    const root = b.complete();
      const t = readTree(finish(), root);
    expect(t.entries.length).toBe(n);
    expect(t.height).toBe(3);
    expect(t.entries[n - 1]).toEqual([(n - 1) * 2 ** 32, n - 1]);
  });

  it('calls refValues with every value of each leaf it writes', () => {
    const seen: number[] = [];
    const b = new BTreeBuilder(alloc, { valueSize: 8, refValues: (vals, n) => { for (let i = 0; i < n; i++) seen.push(readBlockNr(vals, 8 * i)); } });
    pushRange(b, 0, 5000);
    b.complete();
    expect(seen.sort((x, y) => x - y)).toEqual(Array.from({ length: 5000 }, (_, i) => i + 7));
  });
});

describe('BTreeBuilder.pushRun', () => {
  /** Values k + 7 as u64 words, as pushRange writes them. */
  const keyPlus7 = (first: number) => ({
    fill(words: Uint32Array, at: number, offset: number, n: number) {
      for (let i = 0; i < n; i++) {
        const v = first + offset + i + 7;
        words[at + 2 * i] = v % 2 ** 32;
        words[at + 2 * i + 1] = Math.floor(v / 2 ** 32);
      }
    },
  });

  it('writes the same blocks as pushing the entries one by one', () => {
    // Runs of every length around node boundaries, keys crossing 2^32.
    const runs: [number, number][] = [];
    let key = 2 ** 32 - 1000;
    for (const len of [1, 1, 2, MAX8 - 1, 1, MAX8, MAX8 + 1, 2 * MAX8, 3, 3 * MAX8 + 5, 1, 700]) {
      runs.push([key, len]);
      key += len + (len % 3);
    }
    const build = (byRun: boolean): Buffer => {
      const f = path.join(dir, `run-${byRun}.bin`);
      fs.writeFileSync(f, '');
      fs.truncateSync(f, 16 * 1024 * 1024);
      const w = new BlockWriter(f);
      const a = new BlockAllocator(w);
      const refs: number[] = [];
      const b = new BTreeBuilder(a, { valueSize: 8, refValues: (v, n) => { for (let i = 0; i < n; i++) refs.push(readBlockNr(v, 8 * i)); } });
      for (const [first, len] of runs) {
        if (byRun) b.pushRun(first, len, keyPlus7(first));
        else pushRange(b, first, len);
      }
      expect(b.complete()).toBeGreaterThan(0);
      a.flush();
      w.close();
      expect(refs.length).toBe(runs.reduce((s, [, len]) => s + len, 0));
      return fs.readFileSync(f);
    };
    expect(build(true).equals(build(false))).toBe(true);
  });

  it('refuses a run that does not rise above the keys before it', () => {
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    b.pushRun(10, 5, keyPlus7(10));
    expect(() => b.pushRun(14, 2, keyPlus7(14))).toThrow(KeyOrderError);
    expect(() => b.push(12, value)).toThrow(KeyOrderError);
  });
});

describe('shared leaves', () => {
  /** Leaves built once, as a <def>. */
  function def(from: number, n: number): { leaves: NodeSummary[]; refs: number[] } {
    const refs: number[] = [];
    const b = new BTreeBuilder(alloc, { valueSize: 8, refValues: (v, n) => { for (let i = 0; i < n; i++) refs.push(readBlockNr(v, 8 * i)); } }, true);
    pushRange(b, from, n);
    return { leaves: b.completeLeaves(), refs };
  }

  it('points several trees at the same leaf blocks, counting each leaf reference', () => {
    const shared = def(10_000, 3000);
    expect(shared.refs.length).toBe(3000);
    const a = new BTreeBuilder(alloc, { valueSize: 8 });
    pushRange(a, 0, 700);
    a.pushLeaves(shared.leaves);
    pushRange(a, 20_000, 600);
    const rootA = a.complete();
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    b.pushLeaves(shared.leaves);
    const rootB = b.complete();

    const io = finish();
    const ta = readTree(io, rootA);
    const tb = readTree(io, rootB);
    expect(ta.entries.map(([k]) => k)).toEqual([
      ...Array.from({ length: 700 }, (_, i) => i),
      ...Array.from({ length: 3000 }, (_, i) => 10_000 + i),
      ...Array.from({ length: 600 }, (_, i) => 20_000 + i),
    ]);
    expect(tb.entries.map(([k]) => k)).toEqual(Array.from({ length: 3000 }, (_, i) => 10_000 + i));
    const sharedBlocks = shared.leaves.map((l) => l.block);
    expect(tb.leaves).toEqual(sharedBlocks);
    for (const blk of sharedBlocks) {
      expect(ta.leaves).toContain(blk);
      expect(alloc.refCounts.get(blk)).toBe(2);
    }
  });

  it('copies a leaf too small to share, and never leaves an underfull last leaf', () => {
    const small = def(500, 20);
    const big = def(1000, MAX8 * 3);
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    pushRange(b, 0, 10); // too few to stand alone before the shared leaves
    b.pushLeaves(small.leaves);
    b.pushLeaves(big.leaves);
    pushRange(b, 5000, 5); // too few to end on: the last shared leaf is taken back
    const root = b.complete();
    const t = readTree(finish(), root);
    expect(t.entries.length).toBe(10 + 20 + 3 * MAX8 + 5);
    expect(t.leaves).not.toContain(small.leaves[0].block);
    const sharedUsed = big.leaves.filter((l) => t.leaves.includes(l.block));
    expect(sharedUsed.length).toBeGreaterThan(0);
    expect(sharedUsed.length).toBeLessThan(big.leaves.length);
    for (const l of big.leaves) expect(alloc.refCounts.get(l.block)).toBe(t.leaves.includes(l.block) ? 1 : 0);
  });

  it('makes a lone shared leaf the root of a tree that holds nothing else', () => {
    const one = def(0, MAX8);
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    b.pushLeaves(one.leaves);
    expect(b.complete()).toBe(one.leaves[0].block);
  });

  it('refuses shared leaves that would break key order', () => {
    const d = def(100, 300);
    const b = new BTreeBuilder(alloc, { valueSize: 8 });
    pushRange(b, 150, 1);
    expect(() => b.pushLeaves(d.leaves)).toThrow(KeyOrderError);
  });
});
