// The foundation: checksums, superblock codec, and the validating B-tree walk on synthetic trees.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { BLOCK_SIZE, BlockReader } from '../src/io/block-io.js';
import {
  BTREE_CSUM_XOR, SUPERBLOCK_CSUM_XOR, blockChecksum, crc32c, crc32cImplementation, crc32cPortable, sealBlock,
} from '../src/pdata/checksum.js';
import { writeU64 } from '../src/pdata/le.js';
import { INTERNAL_NODE, LEAF_NODE, NODE_HEADER_SIZE, maxEntriesFor } from '../src/pdata/btree/node.js';
import { BTreeError, walkBTree } from '../src/pdata/btree/walk.js';
import { decodeSuperblock, encodeSuperblock, readSuperblock } from '../src/thin/superblock.js';
import { KERNEL_IMAGES, tempDir } from './support/reference.js';

const dir = tempDir();
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('crc32c', () => {
  it('matches the standard check value', () => {
    expect(crc32cPortable(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
  });

  it('native and portable agree on random blocks and sub-ranges', () => {
    expect(['native', 'portable']).toContain(crc32cImplementation);
    for (let i = 0; i < 50; i++) {
      const b = Buffer.alloc(BLOCK_SIZE);
      for (let j = 0; j < b.length; j++) b[j] = (j * 131 + i * 7919) & 0xff;
      const start = i % 9;
      const end = BLOCK_SIZE - (i % 13);
      expect(crc32c(b, start, end)).toBe(crc32cPortable(b, start, end));
    }
  });
});

/** Builds a metadata file from a map of block number -> block contents. */
function image(name: string, blocks: Map<number, Buffer>, nrBlocks = 16): string {
  const p = path.join(dir, name);
  const all = Buffer.alloc(nrBlocks * BLOCK_SIZE);
  for (const [b, buf] of blocks) buf.copy(all, b * BLOCK_SIZE);
  fs.writeFileSync(p, all);
  return p;
}

function node(block: number, flags: number, entries: Array<[number, number]>, valueSize = 8): Buffer {
  const buf = Buffer.alloc(BLOCK_SIZE);
  const max = maxEntriesFor(valueSize);
  buf.writeUInt32LE(flags, 4);
  writeU64(buf, 8, block);
  buf.writeUInt32LE(entries.length, 16);
  buf.writeUInt32LE(max, 20);
  buf.writeUInt32LE(valueSize, 24);
  entries.forEach(([k, v], i) => {
    writeU64(buf, NODE_HEADER_SIZE + 8 * i, k);
    writeU64(buf, NODE_HEADER_SIZE + 8 * max + valueSize * i, v);
  });
  sealBlock(buf, BTREE_CSUM_XOR);
  return buf;
}

/** Walks a synthetic tree; its tiny nodes are underfull, which only `strict` rejects. */
function walk(file: string, root: number, strict = false) {
  const io = new BlockReader(file);
  const leafKeys: number[] = [];
  const errors: BTreeError[] = [];
  const refs: number[] = [];
  const summary = walkBTree(io, root, 8, {
    leaf(n) {
      for (let i = 0; i < n.nrEntries; i++) leafKeys.push(Number(n.key(i)));
    },
    nodeRef: (b) => refs.push(b),
    error: (e) => errors.push(e),
  }, { allowUnderfull: !strict });
  io.close();
  return { leafKeys, errors, refs, summary };
}

describe('B-tree walk', () => {
  it('visits leaves in key order and reports every node reference', () => {
    const f = image('ok', new Map([
      [1, node(1, INTERNAL_NODE, [[0, 2], [100, 3]])],
      [2, node(2, LEAF_NODE, [[0, 9], [5, 9]])],
      [3, node(3, LEAF_NODE, [[100, 9], [150, 9]])],
    ]));
    const r = walk(f, 1);
    expect(r.errors).toEqual([]);
    expect(r.leafKeys).toEqual([0, 5, 100, 150]);
    expect(r.refs).toEqual([1, 2, 3]);
    expect(r.summary).toMatchObject({ height: 1, minKey: 0, maxKey: 150 });
  });

  it('reports a bad checksum with the block and the key range lost', () => {
    const bad = node(3, LEAF_NODE, [[100, 9]]);
    bad[100] ^= 1;
    const f = image('csum', new Map([
      [1, node(1, INTERNAL_NODE, [[0, 2], [100, 3]])],
      [2, node(2, LEAF_NODE, [[0, 9]])],
      [3, bad],
    ]));
    const r = walk(f, 1);
    expect(r.leafKeys).toEqual([0]);
    expect(r.errors).toHaveLength(1);
    expect(r.errors[0]).toMatchObject({ block: 3, lowKey: 100, reason: 'bad checksum in btree node' });
  });

  it('rejects keys out of order, keys outside the parent range, and a wrong blocknr', () => {
    const f = image('order', new Map([
      [1, node(1, INTERNAL_NODE, [[0, 2], [100, 3], [200, 4]])],
      [2, node(2, LEAF_NODE, [[5, 9], [4, 9]])],
      [3, node(3, LEAF_NODE, [[250, 9]])],
      [4, node(7, LEAF_NODE, [[200, 9]])],
    ]));
    const reasons = walk(f, 1).errors.map((e) => `${e.block}: ${e.reason}`);
    expect(reasons).toEqual([
      '2: keys out of order: 4 after 5',
      '3: key 250 outside parent range [100, 200)',
      '4: block number mismatch: node says 7',
    ]);
  });

  it('catches a cycle and leaves at different depths', () => {
    const cyc = image('cycle', new Map([
      [1, node(1, INTERNAL_NODE, [[0, 2]])],
      [2, node(2, INTERNAL_NODE, [[0, 1]])],
    ]));
    expect(walk(cyc, 1).errors.map((e) => e.block)).toEqual([1]);
    const uneven = image('uneven', new Map([
      [1, node(1, INTERNAL_NODE, [[0, 2], [100, 3]])],
      [2, node(2, LEAF_NODE, [[0, 9]])],
      [3, node(3, INTERNAL_NODE, [[100, 4]])],
      [4, node(4, LEAF_NODE, [[100, 9]])],
    ]));
    expect(walk(uneven, 1).errors.map((e) => e.reason)).toEqual(['leaves at different depths']);
  });

  it('catches a node reached twice through two parents, far apart or past the end, in every walk', () => {
    // Leaf 2 is reached through 40000 and 3, which lie in different 4 KiB pages of the walk's
    // bitmap of blocks; 90000 is past the end (a sparse file of 40001 blocks).
    const f = path.join(dir, 'cross-linked');
    fs.writeFileSync(f, '');
    fs.truncateSync(f, 40001 * BLOCK_SIZE);
    const fd = fs.openSync(f, 'r+');
    for (const [b, buf] of [
      [1, node(1, INTERNAL_NODE, [[0, 40000], [100, 3], [200, 90000], [300, 90000]])],
      [40000, node(40000, INTERNAL_NODE, [[0, 2]])],
      [2, node(2, LEAF_NODE, [[0, 9]])],
      [3, node(3, INTERNAL_NODE, [[100, 2]])],
    ] as const) fs.writeSync(fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE);
    fs.closeSync(fd);
    const expected = [
      '2: block referenced twice in one tree (cycle or cross-link)',
      '90000: block 90000 is beyond the end of the metadata device',
      '90000: block referenced twice in one tree (cycle or cross-link)',
    ];
    const reasons = (r: { errors: BTreeError[] }) => r.errors.map((e) => `${e.block}: ${e.reason}`);
    // Again and again: each walk starts from an empty set, whatever the walk before it left.
    expect(reasons(walk(f, 1))).toEqual(expected);
    expect(reasons(walk(f, 1))).toEqual(expected);
    expect(reasons(walk(f, 40000))).toEqual([]);

    // A walk stopped by its visitor's throw leaves no block behind for the next walk...
    const io = new BlockReader(f);
    expect(() => walkBTree(io, 40000, 8, { leaf() { throw new Error('stop'); }, error() {} }, { allowUnderfull: true })).toThrow('stop');
    expect(reasons(walk(f, 40000))).toEqual([]);
    // ...and a walk inside another has a set of its own.
    const inner: BTreeError[] = [];
    const outer: BTreeError[] = [];
    walkBTree(io, 40000, 8, {
      leaf: () => void walkBTree(io, 1, 8, { leaf() {}, error: (e) => inner.push(e) }, { allowUnderfull: true }),
      error: (e) => outer.push(e),
    }, { allowUnderfull: true });
    io.close();
    expect(outer).toEqual([]);
    expect(reasons({ errors: inner })).toEqual(expected);
  });

  it('rejects a non-root node under a third full, as the reference does, but not an underfull root', () => {
    const full = Array.from({ length: 84 }, (_, i): [number, number] => [1000 + i, 9]);
    const f = image('underfull', new Map([
      [1, node(1, INTERNAL_NODE, [[0, 2], [1000, 3]])],
      [2, node(2, LEAF_NODE, [[0, 9], [5, 9]])],
      [3, node(3, LEAF_NODE, full)],
    ]));
    const r = walk(f, 1, true);
    expect(r.errors.map((e) => e.message)).toEqual([
      'too few entries in btree_node: 2, expected at least 84 (max_entries = 252) (block 2)',
    ]);
    expect(r.leafKeys).toEqual(full.map(([k]) => k));
    expect(walk(f, 2, true).errors).toEqual([]);
  });

  it('rejects max_entries inconsistent with the value size', () => {
    const n = node(1, LEAF_NODE, [[0, 9]]);
    n.writeUInt32LE(200, 20);
    sealBlock(n, BTREE_CSUM_XOR);
    const r = walk(image('max', new Map([[1, n]])), 1);
    expect(r.errors[0].reason).toMatch(/max entries 200 inconsistent/);
  });
});

describe('superblock', () => {
  it('encodes back to the same bytes the kernel wrote', () => {
    const img = path.join(KERNEL_IMAGES, 'tmeta.bin.gz');
    if (!fs.existsSync(img)) return expect.fail(`kernel image ${img} missing`);
    const raw = gunzipSync(fs.readFileSync(img)).subarray(0, BLOCK_SIZE);
    const sb = decodeSuperblock(Buffer.from(raw));
    expect(sb.magic).toBe(27022010);
    const again = encodeSuperblock(sb);
    expect(again.subarray(0, 364).equals(Buffer.from(raw.subarray(0, 364)))).toBe(true);
  });

  it('names a bad checksum with the value it wanted', () => {
    const sb = Buffer.alloc(BLOCK_SIZE);
    writeU64(sb, 32, 27022010);
    sealBlock(sb, SUPERBLOCK_CSUM_XOR);
    sb[50] ^= 0xff;
    const f = image('sb', new Map([[0, sb]]));
    const io = new BlockReader(f);
    expect(() => readSuperblock(io)).toThrow(`bad checksum in superblock, wanted ${blockChecksum(sb, SUPERBLOCK_CSUM_XOR)}`);
    io.close();
  });
});
