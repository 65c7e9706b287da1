// B-trees changed through the transaction manager, and the space maps updated in place under them.
// Oracles: a plain Map of what the tree should hold, the read path's validating walk (which
// rejects unordered keys, uneven depths and non-root nodes under a third full, as thin_check
// does) and the read path's space-map readers, which must find every block counted exactly as
// often as something points at it.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE, BlockReader, BlockWriter } from '../src/io/block-io.js';
import { BlockManager } from '../src/pdata/block-manager.js';
import { BTree, ValueType } from '../src/pdata/btree/tree.js';
import { BTreeError, walkBTree } from '../src/pdata/btree/walk.js';
import { U64, readBlockNr, readU64, writeU64 } from '../src/pdata/le.js';
import { ENTRIES_PER_BITMAP, SpaceMapReader } from '../src/pdata/space-map/common.js';
import { openDiskSpaceMap } from '../src/pdata/space-map/disk.js';
import { DataSpaceMap } from '../src/pdata/space-map/disk-in-place.js';
import { MetadataSpaceMap } from '../src/pdata/space-map/metadata-in-place.js';
import { openMetadataSpaceMap } from '../src/pdata/space-map/metadata.js';
import { SpaceMapRoot, spaceMapSize } from '../src/pdata/space-map/root.js';
import { TransactionManager } from '../src/pdata/transaction-manager.js';
import { rng } from './support/generate.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('btree-mutation-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let seq = 0;
function setup(nrBlocks = 8192) {
  const file = path.join(dir, `meta-${seq++}.bin`);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, nrBlocks * BLOCK_SIZE);
  const tm = new TransactionManager(new BlockManager(new BlockWriter(file), { cacheBlocks: 256 }));
  const msm = MetadataSpaceMap.format(tm, nrBlocks);
  return { file, tm, msm };
}

/** u64 values that point at nothing. */
const PLAIN: ValueType = { size: 8 };

function value(v: number): Buffer {
  const b = Buffer.alloc(8);
  writeU64(b, 0, v);
  return b;
}

/** Every key, in order, and every node, by walking the tree on disk with the read path. */
function walkOnDisk(file: string, root: number): { keys: number[]; values: number[]; errors: BTreeError[] } {
  const io = new BlockReader(file);
  const keys: number[] = [];
  const values: number[] = [];
  const errors: BTreeError[] = [];
  walkBTree(io, root, 8, {
    leaf(n) {
      for (let i = 0; i < n.nrEntries; i++) {
        keys.push(n.keyNumber(i));
        values.push(n.valueBlock(i));
      }
    },
    error: (e) => errors.push(e),
  });
  io.close();
  return { keys, values, errors };
}

function expectTree(file: string, root: number, model: Map<number, number>): void {
  const { keys, values, errors } = walkOnDisk(file, root);
  expect(errors.map((e) => e.message)).toEqual([]);
  const sorted = [...model.keys()].sort((a, b) => a - b);
  expect(keys).toEqual(sorted);
  expect(values).toEqual(sorted.map((k) => model.get(k)));
}

/** Every block's count in a committed space map, read with the read path (overflow included). */
function countsOnDisk(file: string, root: SpaceMapRoot, kind: 'metadata' | 'data'): Uint32Array {
  const io = new BlockReader(file);
  const sink = { error: (e: Error) => { throw e; } };
  const sm: SpaceMapReader = kind === 'metadata' ? openMetadataSpaceMap(io, root, sink) : openDiskSpaceMap(io, root, sink);
  const nrBlocks = spaceMapSize(root);
  const out = new Uint32Array(nrBlocks);
  sm.forEachBitmap(sink, (first, counts) => out.set(counts.subarray(0, Math.min(counts.length, nrBlocks - first)), first));
  for (const o = sm.overflowEntries(sink); o.block !== Infinity; o.next()) out[o.block] = o.count;
  io.close();
  return out;
}

/** References to every metadata block from the given roots (a shared node counts once per parent). */
function references(file: string, roots: number[], nrBlocks: number): Uint32Array {
  const io = new BlockReader(file);
  const refs = new Uint32Array(nrBlocks);
  const memo = new Map();
  for (const root of roots) {
    walkBTree(io, root, 8, { leaf() {}, nodeRef: (b) => refs[b]++, error: (e) => { throw e; } }, { memo });
  }
  io.close();
  return refs;
}

describe('B-tree insert, lookup and remove', () => {
  it('holds what a map holds through random inserts, overwrites and removals, every node at least a third full', () => {
    const { file, tm } = setup();
    const tree = new BTree(tm, PLAIN);
    const rand = rng(7);
    const model = new Map<number, number>();
    let root = tree.empty();
    for (let i = 0; i < 20000; i++) {
      const k = Math.floor(rand() * 50000);
      model.set(k, i);
      root = tree.insert(root, [k], value(i)).root;
    }
    tm.preCommit();
    expectTree(file, root, model);
    const out = Buffer.alloc(8);
    for (const [k, v] of [...model].slice(0, 500)) {
      expect(tree.lookup(root, [k], out)).toBe(true);
      expect(readU64(out, 0)).toBe(v);
    }
    expect(tree.lookup(root, [50001], out)).toBe(false);
    const keys = [...model.keys()];
    for (let i = 0; i < keys.length; i += 2) {
      root = tree.remove(root, [keys[i]]);
      model.delete(keys[i]);
    }
    tm.preCommit();
    expectTree(file, root, model);
    expect(tm.bm.locked).toBe(0);
  });

  it('fills nodes well under sequential inserts at either end, and empties back to one leaf', () => {
    for (const order of ['ascending', 'descending'] as const) {
      const { file, tm } = setup();
      const tree = new BTree(tm, PLAIN);
      const model = new Map<number, number>();
      let root = tree.empty();
      for (let i = 0; i < 10000; i++) {
        const k = order === 'ascending' ? i : 10000 - i;
        model.set(k, k * 3);
        root = tree.insert(root, [k], value(k * 3)).root;
      }
      tm.preCommit();
      expectTree(file, root, model);
      const io = new BlockReader(file);
      let leaves = 0;
      walkBTree(io, root, 8, { leaf: () => leaves++, error: (e) => { throw e; } });
      io.close();
      // 252 entries a leaf: split one into two at the ends leaves them half full, not worse.
      expect(leaves).toBeLessThanOrEqual(Math.ceil(10000 / 126) + 1);
      for (const k of [...model.keys()]) {
        root = tree.remove(root, [k]);
        model.delete(k);
      }
      tm.preCommit();
      expectTree(file, root, model);
    }
  });

  it('removes ranges of keys, as a discard does, leaving the rest', () => {
    const { file, tm } = setup();
    const tree = new BTree(tm, PLAIN);
    const rand = rng(11);
    const model = new Map<number, number>();
    let root = tree.empty();
    for (let i = 0; i < 30000; i++) {
      const k = Math.floor(rand() * 100000);
      model.set(k, k);
      root = tree.insert(root, [k], value(k)).root;
    }
    for (let round = 0; round < 40; round++) {
      const begin = Math.floor(rand() * 100000);
      const end = begin + Math.floor(rand() * (round % 5 === 0 ? 20000 : 500));
      const r = tree.removeRange(root, begin, end);
      root = r.root;
      let expected = 0;
      for (const k of [...model.keys()]) {
        if (k >= begin && k < end) {
          model.delete(k);
          expected++;
        }
      }
      expect(r.removed).toBe(expected);
    }
    tm.preCommit();
    expectTree(file, root, model);
  });

  it('keeps 64-bit keys exact, and finds the next key at or above any key', () => {
    const { tm } = setup();
    const tree = new BTree(tm, PLAIN);
    const big = (i: number): U64 => (1n << 60n) + BigInt(i * 3);
    let root = tree.empty();
    for (let i = 0; i < 2000; i++) root = tree.insert(root, [i % 2 ? big(i) : i], value(i)).root;
    const seen: U64[] = [];
    tree.forEach(root, (k) => seen.push(k));
    expect(seen.length).toBe(2000);
    expect(seen.slice(0, 1000).every((k) => typeof k === 'number')).toBe(true);
    expect(seen[1000]).toBe(big(1));
    expect(seen[1999]).toBe(big(1999));
    const out = Buffer.alloc(8);
    expect(tree.lookupNext(root, 1999, out)).toBe(big(1));
    expect(tree.lookupNext(root, big(2), out)).toBe(big(3));
    expect(readU64(out, 0)).toBe(3);
    expect(tree.lookupNext(root, big(2000), out)).toBe(null);
    root = tree.removeRange(root, big(0), big(1000)).root;
    const left: U64[] = [];
    tree.forEach(root, (k) => left.push(k));
    expect(left.length).toBe(1000 + 500);
    expect(left[1000]).toBe(big(1001));
  });
});

describe('B-trees sharing nodes (snapshots)', () => {
  it('changes a shared tree by copying the path, leaving the other tree as it was and every count exact', () => {
    const { file, tm, msm } = setup();
    const tree = new BTree(tm, PLAIN);
    const model = new Map<number, number>();
    let a = tree.empty();
    for (let i = 0; i < 5000; i++) {
      model.set(i * 2, i);
      a = tree.insert(a, [i * 2], value(i)).root;
    }
    tm.preCommit();
    // A snapshot: a second reference to the same root.
    tm.inc(a);
    let b = a;
    const bModel = new Map(model);
    for (let i = 0; i < 300; i++) {
      const k = i * 37 + 1;
      bModel.set(k, 9);
      b = tree.insert(b, [k], value(9)).root;
    }
    b = tree.removeRange(b, 4000, 6000).root;
    for (const k of [...bModel.keys()]) if (k >= 4000 && k < 6000) bModel.delete(k);
    tm.preCommit();
    expect(b).not.toBe(a);
    expectTree(file, a, model);
    expectTree(file, b, bModel);

    const refs = references(file, [a, b], msm.nrBlocks);
    const counts = countsOnDisk(file, msm.root(), 'metadata');
    for (let blk = 1; blk < msm.nrBlocks; blk++) {
      // Tree nodes: counted once per parent pointer (or root); the space map's own blocks aside.
      if (refs[blk] > 0) expect([blk, counts[blk]]).toEqual([blk, refs[blk]]);
    }

    // Deleting one tree releases only what it alone held.
    tree.del(b);
    tm.preCommit();
    expectTree(file, a, model);
    const after = countsOnDisk(file, msm.root(), 'metadata');
    const refsA = references(file, [a], msm.nrBlocks);
    for (let blk = 1; blk < msm.nrBlocks; blk++) {
      if (refs[blk] > 0 || refsA[blk] > 0) expect([blk, after[blk]]).toEqual([blk, refsA[blk]]);
    }
    tree.del(a);
    tm.preCommit();
    const none = countsOnDisk(file, msm.root(), 'metadata');
    for (let blk = 1; blk < msm.nrBlocks; blk++) if (refsA[blk] > 0) expect(none[blk]).toBe(0);
  });

  it('counts what a shared leaf\'s values point at once per distinct leaf, through a two-level tree', () => {
    const { tm } = setup();
    const held = new Map<number, number>();
    const counting: ValueType = {
      size: 8,
      inc: (v, off, n) => { for (let i = 0; i < n; i++) held.set(readBlockNr(v, off + 8 * i), (held.get(readBlockNr(v, off + 8 * i)) ?? 0) + 1); },
      dec: (v, off, n) => { for (let i = 0; i < n; i++) held.set(readBlockNr(v, off + 8 * i), held.get(readBlockNr(v, off + 8 * i))! - 1); },
      equal: (a, ao, b, bo) => readBlockNr(a, ao) === readBlockNr(b, bo),
    };
    const tree = new BTree(tm, counting, 2);
    let root = tree.empty();
    for (let i = 0; i < 100; i++) {
      held.set(1000 + i, 1);
      root = tree.insert(root, [1, i], value(1000 + i)).root;
    }
    // Device 2 shares device 1's tree (its top-level value is the same subtree root).
    const top = new BTree(tm, PLAIN);
    const sub = Buffer.alloc(8);
    expect(top.lookup(root, [1], sub)).toBe(true);
    tm.inc(readBlockNr(sub, 0));
    root = top.insert(root, [2], sub).root;
    // A write through device 2 copies the shared leaf: every value in it gains a holder.
    held.set(5000, 1);
    const r = tree.insert(root, [2, 7], value(5000));
    root = r.root;
    expect(r.inserted).toBe(false);
    expect(held.get(1007)).toBe(1);
    expect(held.get(1008)).toBe(2);
    expect(held.get(5000)).toBe(1);
    // Overwriting with an equal value drops nothing; removing drops the value's holder.
    tree.insert(root, [2, 8], value(1008));
    expect(held.get(1008)).toBe(2);
    root = tree.remove(root, [2, 8]);
    expect(held.get(1008)).toBe(1);
    tree.del(root);
    expect([...held.values()].every((c) => c === 0)).toBe(true);
  });
});

describe('space maps updated in place', () => {
  it('the metadata space map counts every block it hands out, its own included, as the read path finds them', () => {
    const { file, tm, msm } = setup(20000);
    const tree = new BTree(tm, PLAIN);
    let root = tree.empty();
    const rand = rng(3);
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 4000; i++) root = tree.insert(root, [Math.floor(rand() * 1e6)], value(i)).root;
      tm.preCommit();
      tm.commit(0, Buffer.alloc(BLOCK_SIZE), { name: 'superblock', salt: 160774 });
    }
    const counts = countsOnDisk(file, msm.root(), 'metadata');
    const refs = references(file, [root], msm.nrBlocks);
    // The tree's nodes once each; everything else the space map counts is its own or block 0.
    let extra = 0;
    for (let b = 0; b < msm.nrBlocks; b++) {
      if (refs[b] > 0) expect(counts[b]).toBe(refs[b]);
      else if (counts[b] > 0) extra++;
    }
    expect(msm.root().nrAllocated).toBe(counts.reduce((n, c) => n + (c > 0 ? 1 : 0), 0));
    // Superblock, index, ref-count root, bitmaps: a handful, not a leak per commit.
    expect(extra).toBeLessThan(8);
  });

  it('never hands out a metadata block freed in the open transaction', () => {
    const { tm, msm } = setup(4096);
    const tree = new BTree(tm, PLAIN);
    let root = tree.empty();
    for (let i = 0; i < 3000; i++) root = tree.insert(root, [i], value(i)).root;
    tm.preCommit();
    tm.commit(0, Buffer.alloc(BLOCK_SIZE), { name: 'superblock', salt: 160774 });
    const committed = new Set<number>();
    const io = new BlockReader(tm.bm.store.path);
    walkBTree(io, root, 8, { leaf() {}, nodeRef: (b) => committed.add(b), error: (e) => { throw e; } });
    io.close();
    // Every change shadows (frees) committed nodes; none of them may come back before a commit.
    for (let i = 0; i < 3000; i += 3) {
      root = tree.insert(root, [i], value(i + 1)).root;
      const b = msm.newBlock();
      expect(committed.has(b)).toBe(false);
      msm.dec(b);
    }
  });

  it('hands out data blocks by a cursor that survives commits, never reusing a block freed in the open transaction', () => {
    const { tm } = setup();
    const dsm = DataSpaceMap.format(tm, 40000);
    const first: number[] = [];
    for (let i = 0; i < 100; i++) first.push(dsm.newBlock());
    expect(first).toEqual([...Array(100).keys()]);
    dsm.commit();
    tm.preCommit();
    // Free 10..19 in a new transaction: not reused in it, nor after its commit until the cursor wraps.
    for (let b = 10; b < 20; b++) expect(dsm.dec(b)).toBe(true);
    expect(dsm.newBlock()).toBe(100);
    dsm.commit();
    expect(dsm.newBlock()).toBe(101);
    // A block allocated and freed in the same transaction may come straight back.
    const c = dsm.newBlock();
    dsm.dec(c);
    expect(dsm.nrFree).toBe(40000 - 92);
    // Fill to the end: then the cursor wraps to the blocks freed before the last commit, and to c.
    const rest: number[] = [];
    for (;;) {
      const b = dsm.newBlock();
      if (b < 0) break;
      rest.push(b);
    }
    expect(rest[0]).toBe(c + 1);
    expect(rest.slice(-12)).toEqual([39999, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, c]);
    expect(dsm.nrFree).toBe(0);
  });

  it('keeps counts of 3 and more in the ref-count tree, exactly as the read path reads them', () => {
    const { file, tm, msm } = setup();
    const dsm = DataSpaceMap.format(tm, 3 * ENTRIES_PER_BITMAP + 5);
    const expected = new Map<number, number>();
    const rand = rng(5);
    for (let i = 0; i < 3000; i++) {
      const b = Math.floor(rand() * dsm.nrBlocks);
      const n = 1 + Math.floor(rand() * 6);
      for (let k = 0; k < n; k++) dsm.inc(b);
      expected.set(b, (expected.get(b) ?? 0) + n);
    }
    for (const [b, n] of [...expected].slice(0, 500)) {
      dsm.dec(b);
      expected.set(b, n - 1);
    }
    dsm.commit();
    tm.preCommit();
    const counts = countsOnDisk(file, dsm.root(), 'data');
    for (let b = 0; b < dsm.nrBlocks; b++) expect(counts[b]).toBe(expected.get(b) ?? 0);
    expect(dsm.root().nrAllocated).toBe([...expected.values()].filter((n) => n > 0).length);
    for (const [b, n] of [...expected].slice(0, 50)) expect(dsm.count(b)).toBe(n);
    expect(msm.nrBlocks).toBe(8192);
  });
});
