// thin_rmap against the reference thin_rmap 0.9.0 on pools made for its fast paths: many lines
// that repeat the line before but for the device (snapshots sharing runs), or repeat only its
// data blocks (the same run at other thin blocks), over more than one output buffer; and numbers
// either side of 2^31 and 2^32 (thin blocks as written by the reference restore, data blocks
// moved past them in the leaves, which thin_rmap does not check against the pool's size).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BTreeNode } from '../src/pdata/btree/node.js';
import { BTREE_CSUM_XOR, sealBlock } from '../src/pdata/checksum.js';
import { mappingDataBlock, mappingTime, writeMapping } from '../src/thin/mapping.js';
import { deviceNodes, readBlock, setMappedBlocks, writeBlock } from './support/damage.js';
import { rng } from './support/generate.js';
import { devIdsOf } from './support/pools.js';
import { referenceRestore, runOurs, runReference, tempDir } from './support/reference.js';

const dir = tempDir('thin-rmap-wide-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const SNAPSHOTS = 4;

/**
 * An origin of short runs and snapshots of it: most of each snapshot's runs are the origin's
 * (same thin and data blocks: the lines differ in the device only), some the same data blocks at
 * other thin blocks, some shorter, some on data blocks of their own. Device `shifted`'s thin
 * blocks are moved up by `shift`.
 */
function tiesXml(seed: number, shift: number, shifted: number, runs = 15000): string {
  const rand = rng(seed);
  const origin: [number, number, number][] = [];
  let thin = 0;
  let data = 0;
  for (let r = 0; r < runs; r++) {
    const len = rand() < 0.7 ? 1 : 2 + Math.floor(rand() * 20);
    origin.push([thin, data, len]);
    thin += len + 1 + Math.floor(rand() * 3);
    data += len + 1;
  }
  const range = ([t, d, len]: [number, number, number]) =>
    `    <range_mapping origin_begin="${t}" data_begin="${d}" length="${len}" time="0"/>`;
  const devices: string[][] = [origin.map(([t, d, len]) => range([t + (shifted === 0 ? shift : 0), d, len]))];
  for (let s = 1; s <= SNAPSHOTS; s++) {
    const by = s === shifted ? shift : 0;
    devices.push(origin.map(([t, d, len]) => {
      const x = rand();
      if (x < 0.6) return range([t + by, d, len]);
      if (x < 0.75) return range([t + by + 500_000, d, len]);
      if (x < 0.85 && len > 1) return range([t + by, d, len - 1]);
      data += len + 1;
      return range([t + by, data - len, len]);
    }).sort((a, b) => Number(/origin_begin="(\d+)"/.exec(a)![1]) - Number(/origin_begin="(\d+)"/.exec(b)![1])));
  }
  const mapped = (lines: string[]) => lines.reduce((n, l) => n + Number(/length="(\d+)"/.exec(l)![1]), 0);
  return [
    `<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="${data + 10}">`,
    ...devices.flatMap((lines, id) => [
      `  <device dev_id="${id}" mapped_blocks="${mapped(lines)}" transaction="0" creation_time="0" snap_time="1">`,
      ...lines,
      '  </device>',
    ]),
    '</superblock>',
    '',
  ].join('\n');
}

function tiesPool(name: string, seed: number, shift = 0, shifted = 0): string {
  const xml = path.join(dir, `${name}.xml`);
  fs.writeFileSync(xml, tiesXml(seed, shift, shifted));
  const img = path.join(dir, `${name}.bin`);
  referenceRestore(xml, img, 16);
  return img;
}

/** A copy of `src` with every data block of every device moved up by `by` (leaves re-sealed). */
function withDataMoved(src: string, name: string, by: number): string {
  const img = path.join(dir, `${name}.bin`);
  fs.copyFileSync(src, img);
  for (const devId of devIdsOf(img)) {
    for (const leaf of deviceNodes(img, devId).leaves) {
      const buf = readBlock(img, leaf);
      const node = new BTreeNode(leaf, buf);
      for (let i = 0; i < node.nrEntries; i++) {
        const off = node.valueOffset(i);
        writeMapping(buf, off, mappingDataBlock(buf, off) + by, mappingTime(buf, off));
      }
      sealBlock(buf, BTREE_CSUM_XOR);
      writeBlock(img, leaf, buf);
    }
  }
  return img;
}

/** thin_rmap of ours (the installed tool) and 0.9.0's, byte for byte; returns the output. */
function expectSameRmap(img: string, region: string): string {
  const args = ['--region', region, img];
  const ref = runReference('thin_rmap', args);
  const ours = runOurs('thin_rmap', args);
  expect(ours.status, `exit status of thin_rmap ${args.join(' ')}`).toBe(ref.status);
  expect(ref.status).toBe(0);
  expect(ours.stdout === ref.stdout, `stdout of thin_rmap ${args.join(' ')} differs`).toBe(true);
  return ref.stdout;
}

const ALL = '0..18446744073709551615';

describe('thin_rmap matches the reference on repeated and wide lines', () => {
  let ties = '';
  beforeAll(() => {
    ties = tiesPool('ties', 21);
  });

  it('lines repeating the one before, but for the device or the thin blocks, over several output buffers', () => {
    const out = expectSameRmap(ties, ALL);
    // The cases the pool is made of, counted in the reference's output.
    const lines = out.split('\n').slice(0, -1).map((l) => /^data (\d+)\.\.(\d+) -> thin\((\d+)\) (\d+)\.\.(\d+)$/.exec(l)!.slice(1));
    let sameButDevice = 0;
    let sameData = 0;
    for (let i = 1; i < lines.length; i++) {
      const [a, b] = [lines[i - 1], lines[i]];
      if (a[0] === b[0] && a[1] === b[1]) {
        if (a[3] === b[3] && a[4] === b[4]) sameButDevice++;
        else sameData++;
      }
    }
    expect(out.length).toBeGreaterThan(2 << 20);
    expect(sameButDevice).toBeGreaterThan(25000);
    expect(sameData).toBeGreaterThan(8000);
    expectSameRmap(ties, '1000..2000');
  });

  it('thin blocks either side of 2^31 and 2^32', () => {
    // The origin's past 2^32: the walk meets a high word first thing, and keeps it as it grows.
    for (const [name, at, dev] of [['thin-2-31', 2 ** 31 - 60_000, SNAPSHOTS], ['thin-2-32', 2 ** 32 - 60_000, 0]] as const) {
      const img = tiesPool(name, 22, at, dev);
      const out = expectSameRmap(img, ALL);
      const thins = [...out.matchAll(new RegExp(`thin\\(${dev}\\) (\\d+)\\.\\.(\\d+)`, 'g'))].map((m) => Number(m[1]));
      const bound = Math.round(Math.log2(at + 60_000));
      expect(thins.some((t) => t < 2 ** bound) && thins.some((t) => t > 2 ** bound), name).toBe(true);
      // Device details that understate the mappings (thin_rmap sizes its records from them,
      // the reference does not read them): the records grow as the walk goes.
      for (const devId of devIdsOf(img)) setMappedBlocks(img, devId, 1);
      expect(expectSameRmap(img, ALL)).toBe(out);
    }
  });

  it('data blocks either side of 2^31, and up to 2^40', () => {
    for (const [name, by] of [['data-2-31', 2 ** 31 - 30_000], ['data-2-40', 2 ** 40 - 200_000]] as const) {
      const img = withDataMoved(ties, name, by);
      const out = expectSameRmap(img, ALL);
      expect(out).toMatch(new RegExp(`^data ${by}\\.\\.`));
      expectSameRmap(img, `${by + 1000}..${by + 2000}`);
      for (const devId of devIdsOf(img)) setMappedBlocks(img, devId, 1);
      expect(expectSameRmap(img, ALL)).toBe(out);
    }
  });
});
