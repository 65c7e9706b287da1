// thin_dump against the reference thin_dump 0.9.0 on generated metadata restored by the reference
// thin_restore: the same bytes and exit status for every format and option, including partial
// output on damaged and truncated metadata, and the metadata snapshot (-m).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE, BlockReader } from '../src/io/block-io.js';
import { walkBTree } from '../src/pdata/btree/walk.js';
import { readDeviceRoots, MAPPING_VALUE_SIZE } from '../src/thin/mapping-tree.js';
import { decodeSuperblock, encodeSuperblock, readSuperblock } from '../src/thin/superblock.js';
import { GenerateOptions, generateXml } from './support/generate.js';
import { referenceRestore, runOurs, runReference, sha256, tempDir } from './support/reference.js';

const dir = tempDir('thin-dump-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Case extends GenerateOptions {
  name: string;
}

const CASES: Case[] = [
  { name: 'snapshot-chains', seed: 1, dataBlockSize: 128, origins: 2, snapshotsPerOrigin: 3, mappingsPerOrigin: 1500, emptyDevices: 2, deleteSome: true },
  { name: 'huge-offset', seed: 2, dataBlockSize: 1024, origins: 1, snapshotsPerOrigin: 2, mappingsPerOrigin: 1000, hugeOffset: true },
  { name: 'largest-blocks', seed: 3, dataBlockSize: 2097152, origins: 1, snapshotsPerOrigin: 5, mappingsPerOrigin: 800, deleteSome: true },
  { name: 'deep-tree', seed: 4, dataBlockSize: 128, origins: 1, snapshotsPerOrigin: 0, mappingsPerOrigin: 30000, emptyDevices: 0 },
  { name: 'no-devices', seed: 5, origins: 0, emptyDevices: 0 },
];

const images = new Map<string, string>();

function restore(name: string, xml: string): string {
  const xmlPath = path.join(dir, `${name}.xml`);
  const img = path.join(dir, `${name}.bin`);
  fs.writeFileSync(xmlPath, xml);
  referenceRestore(xmlPath, img, 8);
  return img;
}

/** Runs of every shape the merge must get right: across leaves, broken by time, by data, by a gap. */
function runShapesXml(): string {
  const lines = ['<superblock uuid="" time="3" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100000">'];
  lines.push('  <device dev_id="7" mapped_blocks="1603" transaction="0" creation_time="0" snap_time="0">');
  const single = (thin: number, data: number, time: number) =>
    lines.push(`    <single_mapping origin_block="${thin}" data_block="${data}" time="${time}"/>`);
  for (let i = 0; i < 1000; i++) single(i, 5000 + i, 1); // one run over several leaves
  for (let i = 1000; i < 1300; i++) single(i, 5000 + i, i < 1150 ? 1 : 2); // time changes mid-way
  for (let i = 1300; i < 1600; i++) single(i, i % 2 ? 9000 + i : 20000 + i, 0); // data never consecutive
  single(1601, 7000, 3); // after a gap
  single(1602, 7001, 3);
  single(1603, 7003, 3);
  lines.push('  </device>', '</superblock>');
  return lines.join('\n') + '\n';
}

beforeAll(() => {
  for (const c of CASES) images.set(c.name, restore(c.name, generateXml(c)));
  images.set('run-shapes', restore('run-shapes', runShapesXml()));
});

/** Device ids in an image, from the reference's own dump. */
function devIds(img: string): number[] {
  return [...runReference('thin_dump', ['--skip-mappings', img]).stdout.matchAll(/dev_id="(\d+)"/g)].map((m) => Number(m[1]));
}

function expectSame(args: string[]): void {
  const ref = runReference('thin_dump', args);
  const ours = runOurs('thin_dump', args);
  expect(ours.status, `exit status of thin_dump ${args.join(' ')} (our stderr: ${ours.stderr})`).toBe(ref.status);
  // Compared as a boolean: a diff of megabytes helps nobody; rerun by hand to see it.
  expect(ours.stdout === ref.stdout, `stdout of thin_dump ${args.join(' ')} differs from the reference`).toBe(true);
}

describe('thin_dump matches the reference on generated metadata', () => {
  for (const name of [...CASES.map((c) => c.name), 'run-shapes']) {
    it(`${name}: xml and human_readable`, () => {
      const img = images.get(name)!;
      const before = sha256(img);
      expectSame([img]);
      expectSame(['-f', 'human_readable', img]);
      expect(sha256(img)).toBe(before);
    });
  }

  it('--skip-mappings, --dev-id (one, several, absent), overrides, in both formats', () => {
    const img = images.get('snapshot-chains')!;
    const ids = devIds(img);
    expect(ids.length).toBeGreaterThan(4);
    expectSame(['--skip-mappings', img]);
    expectSame(['--format', 'human_readable', '--skip-mappings', img]);
    expectSame(['--dev-id', String(ids[1]), img]);
    expectSame(['--dev-id', String(ids[3]), '--dev-id', String(ids[0]), '-f', 'human_readable', img]);
    expectSame(['--dev-id', '999999', img]);
    expectSame(['--dev-id', String(ids[2]), '--skip-mappings', img]);
    expectSame(['--transaction-id', '77', '--data-block-size', '256', '--nr-data-blocks', '12345', img]);
    expectSame(['--nr-data-blocks', '5', '-f', 'human_readable', '--skip-mappings', img]);
  });

  it('-o writes the same file as the reference and leaves no temporary file behind', () => {
    const img = images.get('huge-offset')!;
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    const ref = runReference('thin_dump', ['-o', path.join(out, 'ref.xml'), img]);
    const ours = runOurs('thin_dump', ['-o', path.join(out, 'ours.xml'), img]);
    expect([ours.status, ours.stdout]).toEqual([ref.status, ref.stdout]);
    expect(fs.readFileSync(path.join(out, 'ours.xml'), 'latin1')).toBe(fs.readFileSync(path.join(out, 'ref.xml'), 'latin1'));
    // Overwrites an existing file.
    expect(runOurs('thin_dump', ['-f', 'human_readable', '--output', path.join(out, 'ours.xml'), img]).status).toBe(0);
    expect(fs.readFileSync(path.join(out, 'ours.xml'), 'latin1')).toBe(runReference('thin_dump', ['-f', 'human_readable', img]).stdout);
    expect(fs.readdirSync(out).sort()).toEqual(['ours.xml', 'ref.xml']);
  });

  it('refuses to write its output over its input', () => {
    const img = images.get('no-devices')!;
    const before = sha256(img);
    const ours = runOurs('thin_dump', ['-o', img, img]);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toMatch(/input/);
    expect(sha256(img)).toBe(before);
  });
});

/** Copies a restored image and lets `change` edit its blocks. */
function variant(from: string, name: string, change: (buf: Buffer) => void): string {
  const buf = fs.readFileSync(images.get(from)!);
  change(buf);
  const p = path.join(dir, `${name}.bin`);
  fs.writeFileSync(p, buf);
  return p;
}

/** Leaf blocks of the first device with more than `minLeaves` leaves, in key order. */
function leavesOfABigDevice(img: string, minLeaves: number): number[] {
  const io = new BlockReader(img);
  try {
    const sb = readSuperblock(io);
    for (const { root } of readDeviceRoots(io, sb.dataMappingRoot, () => {})) {
      const leaves: number[] = [];
      walkBTree(io, root, MAPPING_VALUE_SIZE, { leaf: (n) => leaves.push(n.block), error: () => {} });
      if (leaves.length > minLeaves) return leaves;
    }
  } finally {
    io.close();
  }
  throw new Error('no device with enough leaves');
}

describe('thin_dump on damaged metadata matches the reference verdict and partial output', () => {
  it('a damaged leaf in the middle of a device: runs up to it, then the error', () => {
    const leaves = leavesOfABigDevice(images.get('deep-tree')!, 4);
    const img = variant('deep-tree', 'bad-leaf', (buf) => buf.fill(0, leaves[2] * BLOCK_SIZE, (leaves[2] + 1) * BLOCK_SIZE));
    expectSame([img]);
    expectSame(['-f', 'human_readable', img]);
    expectSame(['--skip-mappings', img]);
    const ours = runOurs('thin_dump', [img]);
    expect(ours.stderr).toBe('metadata contains errors (run thin_check for details).\nperhaps you wanted to run with --repair\n');
  });

  it('a damaged device in a pool of many: earlier devices dumped, later ones not', () => {
    const leaves = leavesOfABigDevice(images.get('snapshot-chains')!, 2);
    const img = variant('snapshot-chains', 'bad-snapshot-leaf', (buf) => buf.writeUInt32LE((buf.readUInt32LE(leaves[1] * BLOCK_SIZE) ^ 1) >>> 0, leaves[1] * BLOCK_SIZE));
    expectSame([img]);
    expectSame(['--dev-id', String(devIds(images.get('snapshot-chains')!).at(-1)), img]);
  });

  it('a damaged device details tree: nothing printed', () => {
    const img = variant('snapshot-chains', 'bad-details', (buf) => {
      const root = decodeSuperblock(buf.subarray(0, BLOCK_SIZE)).deviceDetailsRoot;
      buf.fill(0, root * BLOCK_SIZE, (root + 1) * BLOCK_SIZE);
    });
    expectSame([img]);
    expect(runOurs('thin_dump', [img]).stdout).toBe('');
  });

  it('truncated metadata: the trees run off the end', () => {
    const img = path.join(dir, 'truncated.bin');
    const leaves = leavesOfABigDevice(images.get('deep-tree')!, 4);
    fs.writeFileSync(img, fs.readFileSync(images.get('deep-tree')!).subarray(0, (leaves[3] + 1) * BLOCK_SIZE));
    expectSame([img]);
  });

  it('inputs that are not metadata: one-line error, exit 1, as the reference fails', () => {
    const zero = path.join(dir, 'zero.bin');
    fs.writeFileSync(zero, Buffer.alloc(64 * BLOCK_SIZE));
    const tiny = path.join(dir, 'tiny.bin');
    fs.writeFileSync(tiny, Buffer.alloc(100));
    const empty = path.join(dir, 'empty.bin');
    fs.writeFileSync(empty, '');
    for (const args of [[zero], [tiny], [empty], [path.join(dir, 'missing.bin')], [dir], ['-m', zero]]) {
      const ref = runReference('thin_dump', args);
      const ours = runOurs('thin_dump', args);
      expect([ours.status, ours.stdout], args.join(' ')).toEqual([ref.status, ref.stdout]);
      expect(ours.status).toBe(1);
      expect(ours.stderr.trim().split('\n'), ours.stderr).toHaveLength(1);
    }
  });
});

describe('thin_dump -m (metadata snapshot)', () => {
  let img: string;
  let snapBlock: number;

  // thin_restore can't make a metadata snapshot, so the test makes one the way the kernel does:
  // a copy of the superblock in a free block (space map roots wiped), named by held_root. The
  // copy gets a different transaction id and time, so dumping the live superblock by mistake shows.
  beforeAll(() => {
    img = variant('snapshot-chains', 'with-snap', (buf) => {
      snapBlock = buf.length / BLOCK_SIZE - 1;
      const free = buf.subarray(snapBlock * BLOCK_SIZE);
      if (!free.equals(Buffer.alloc(BLOCK_SIZE))) throw new Error('last block is in use');
      const sb = decodeSuperblock(buf.subarray(0, BLOCK_SIZE));
      const copy = encodeSuperblock({
        ...sb,
        blocknr: snapBlock,
        transactionId: Number(sb.transactionId) + 100,
        time: sb.time + 1,
        dataSpaceMapRoot: Buffer.alloc(128),
        metadataSpaceMapRoot: Buffer.alloc(128),
      });
      copy.copy(buf, snapBlock * BLOCK_SIZE);
      encodeSuperblock({ ...sb, heldRoot: snapBlock }).copy(buf, 0);
    });
  });

  it('dumps the held snapshot like the reference, with or without its block named', () => {
    expectSame(['-m', img]);
    expectSame(['--metadata-snap', '-f', 'human_readable', img]);
    expectSame([`-m${snapBlock}`, img]);
    expectSame([`--metadata-snap=${snapBlock}`, '--skip-mappings', img]);
    expectSame(['-m', '--dev-id', String(devIds(img)[2]), img]);
    expect(runOurs('thin_dump', ['-m', img]).stdout).toMatch(/transaction="1\d\d"/);
    expectSame([img]);
  });

  it('a wrong snapshot block, or no snapshot held, fails as in the reference', () => {
    expectSame([`-m${snapBlock - 1}`, img]);
    expectSame(['-m0', img]);
    expectSame(['-m', images.get('huge-offset')!]);
    expect(runOurs('thin_dump', ['-m', images.get('huge-offset')!]).stderr).toMatch(/no current metadata snap/);
  });

  it('a damaged snapshot superblock fails only with -m', () => {
    const bad = variant('snapshot-chains', 'bad-snap', (buf) => {
      const sb = decodeSuperblock(buf.subarray(0, BLOCK_SIZE));
      const last = buf.length / BLOCK_SIZE - 1;
      encodeSuperblock({ ...sb, heldRoot: last }).copy(buf, 0);
      buf.fill(7, last * BLOCK_SIZE);
    });
    expectSame([bad]);
    expectSame(['-m', bad]);
  });
});

describe('thin_dump command line', () => {
  it('usage errors exit 1 with one line; -h and -V exit 0', () => {
    for (const args of [[], ['-f', 'yaml', images.get('no-devices')!], ['--dev-id', 'x', images.get('no-devices')!], ['-mx', images.get('no-devices')!]]) {
      const r = runOurs('thin_dump', args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    expect(runOurs('thin_dump', ['-h']).status).toBe(0);
    expect(runOurs('thin_dump', ['-h']).stdout).toMatch(/--metadata-snap/);
    expect(runOurs('thin_dump', ['-V']).stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });
});
