// thin_repair and thin_dump -r against a corpus of damaged metadata made here: generated
// metadata restored by the reference thin_restore, then damaged one way per case. For each case
// our repair must give metadata the REFERENCE thin_check accepts, recover at least the mappings
// the reference thin_repair recovers (counted by the reference thin_dump), and hit the exact
// count the damage leaves; damage that misses the mappings must lose nothing.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockReader } from '../src/io/block-io.js';
import { BTreeNode, NODE_HEADER_SIZE } from '../src/pdata/btree/node.js';
import { walkBTree } from '../src/pdata/btree/walk.js';
import { BTREE_CSUM_XOR, sealBlock } from '../src/pdata/checksum.js';
import { DEVICE_DETAILS_SIZE } from '../src/thin/device-details.js';
import { BlockKind, scanBlocks } from '../src/thin/salvage-scan.js';
import { readDeviceRoots } from '../src/thin/mapping-tree.js';
import { readSuperblock } from '../src/thin/superblock.js';
import { readBlock, writeBlock } from './support/damage.js';
import { generateXml } from './support/generate.js';
import { referenceRestore, runOurs, runReference, tempDir } from './support/reference.js';

const META_MIB = 8;
let dir: string;
let base: string;
let baseDump: string;
let totalMappings: number;
const blocks = { superblock: 0, topRoot: 0, detailsRoot: 0, leaf: 0, leafEntries: 0, internal: 0, internalMappings: 0, bitmap: 0 };

/** Mappings in a thin_dump XML text: single mappings plus the lengths of ranges. */
function countMappings(xml: string): number {
  let n = 0;
  for (const m of xml.matchAll(/<(single_mapping)|<range_mapping[^>]* length="(\d+)"/g)) n += m[1] ? 1 : Number(m[2]);
  return n;
}

function emptyMetadata(name: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, '');
  fs.truncateSync(p, META_MIB << 20);
  return p;
}

function damaged(name: string, block: number, how: 'zero' | 'flip'): string {
  const p = path.join(dir, `${name}.bin`);
  fs.copyFileSync(base, p);
  const fd = fs.openSync(p, 'r+');
  if (how === 'zero') fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, block * 4096);
  else fs.writeSync(fd, Buffer.from([0xff, 0x0f, 0xf0, 0x55]), 0, 4, block * 4096 + 100);
  fs.closeSync(fd);
  return p;
}

interface Outcome {
  status: number;
  stderr: string;
  dump: string;
  mappings: number;
  checkStatus: number;
}

function outcome(tool: 'ours' | 'reference', input: string, overrides: string[]): Outcome {
  const out = emptyMetadata(`${path.basename(input)}.${tool}.out`);
  const args = [...overrides, '-i', input, '-o', out];
  const r = tool === 'ours' ? runOurs('thin_repair', args) : runReference('thin_repair', args);
  const dump = r.status === 0 ? runReference('thin_dump', [out]).stdout : '';
  const checkStatus = runReference('thin_check', [out]).status;
  return { status: r.status, stderr: r.stderr, dump, mappings: countMappings(dump), checkStatus };
}

/** Runs both repairs; ours must succeed, pass the reference check and recover no less. */
function compare(input: string, overrides: string[] = []): Outcome {
  const ours = outcome('ours', input, overrides);
  const ref = outcome('reference', input, overrides);
  expect(ours.status, ours.stderr).toBe(0);
  expect(ours.checkStatus).toBe(0);
  expect(ours.mappings).toBeGreaterThanOrEqual(ref.mappings);
  return ours;
}

beforeAll(() => {
  dir = tempDir('thin-repair-');
  const xml = path.join(dir, 'base.xml');
  fs.writeFileSync(
    xml,
    generateXml({ seed: 7, origins: 2, snapshotsPerOrigin: 3, mappingsPerOrigin: 3000, deleteSome: true, emptyDevices: 1 }),
  );
  base = path.join(dir, 'base.bin');
  referenceRestore(xml, base, META_MIB);
  baseDump = runReference('thin_dump', [base]).stdout;
  totalMappings = countMappings(baseDump);

  // Find the blocks to damage: roots from the superblock, a device's internal root and one of
  // its leaves from another device, a data space-map bitmap from the scan.
  const io = new BlockReader(base);
  try {
    const sb = readSuperblock(io);
    blocks.topRoot = sb.dataMappingRoot;
    blocks.detailsRoot = sb.deviceDetailsRoot;
    const roots = readDeviceRoots(io, sb.dataMappingRoot, (e) => {
      throw e;
    });
    const internalRoots = roots.filter((r) => !new BTreeNode(r.root, io.read(r.root)).isLeaf);
    expect(internalRoots.length).toBeGreaterThanOrEqual(2);
    const leafOwner = new BTreeNode(internalRoots[0].root, io.read(internalRoots[0].root));
    blocks.leaf = leafOwner.valueBlock(2);
    blocks.leafEntries = new BTreeNode(blocks.leaf, io.read(blocks.leaf)).nrEntries;
    blocks.internal = internalRoots[1].root;
    const devId = internalRoots[1].devId;
    const device = baseDump.split('<device ').find((d) => d.startsWith(`dev_id="${devId}"`))!;
    blocks.internalMappings = countMappings(device);
    const scan = scanBlocks(io);
    blocks.bitmap = scan.kind.indexOf(BlockKind.Bitmap);
    expect(blocks.bitmap).toBeGreaterThan(0);
  } finally {
    io.close();
  }
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('thin_repair on damaged metadata', () => {
  it('undamaged metadata comes back identical', () => {
    expect(compare(base).dump).toBe(baseDump);
  });

  it('a zeroed leaf loses exactly that leaf', () => {
    const ours = compare(damaged('leaf', blocks.leaf, 'zero'));
    expect(ours.mappings).toBe(totalMappings - blocks.leafEntries);
  });

  it("a zeroed internal node (a device's root) loses exactly that device's mappings, not the device", () => {
    const ours = compare(damaged('internal', blocks.internal, 'zero'));
    expect(ours.mappings).toBe(totalMappings - blocks.internalMappings);
    expect(ours.dump.match(/<device /g)?.length).toBe(baseDump.match(/<device /g)?.length);
  });

  it('bit flips in the top-level mapping root: no less than the reference, every device kept', () => {
    const ours = compare(damaged('top', blocks.topRoot, 'flip'));
    expect(ours.dump.match(/<device /g)?.length).toBe(baseDump.match(/<device /g)?.length);
  });

  it('a zeroed details root loses no mapping', () => {
    const ours = compare(damaged('details', blocks.detailsRoot, 'zero'));
    expect(ours.mappings).toBe(totalMappings);
  });

  it('a zeroed superblock, with the overrides, gives back every device and mapping', () => {
    const sb = /<superblock[^>]*>/.exec(baseDump)![0];
    const attr = (name: string) => new RegExp(`${name}="(\\d+)"`).exec(sb)![1];
    const overrides = [
      '--transaction-id', attr('transaction'),
      '--data-block-size', attr('data_block_size'),
      '--nr-data-blocks', attr('nr_data_blocks'),
    ];
    const ours = compare(damaged('superblock', 0, 'zero'), overrides);
    // Everything but the superblock line (its time is inferred from the mappings) is identical.
    const body = (xml: string) => xml.slice(xml.indexOf('\n'));
    expect(body(ours.dump)).toBe(body(baseDump));
    expect(/<superblock[^>]*>/.exec(ours.dump)![0]).toContain(`transaction="${attr('transaction')}"`);
  });

  it('a zeroed superblock without --data-block-size is refused, naming the option', () => {
    const input = damaged('superblock-bare', 0, 'zero');
    const r = runOurs('thin_repair', ['-i', input, '-o', emptyMetadata('bare.out')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^thin_repair: .*--data-block-size/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('a corrupted space-map bitmap loses nothing: the dump is identical', () => {
    const ours = compare(damaged('bitmap', blocks.bitmap, 'flip'));
    expect(ours.dump).toBe(baseDump);
  });
});

/** A copy of the base image with one B-tree node rewritten by `edit` and resealed (checksum fixed). */
function resealed(name: string, block: number, edit: (node: BTreeNode) => void): string {
  const p = path.join(dir, `${name}.bin`);
  fs.copyFileSync(base, p);
  const buf = readBlock(p, block);
  edit(new BTreeNode(block, buf));
  sealBlock(buf, BTREE_CSUM_XOR);
  writeBlock(p, block, buf);
  return p;
}

/** The details tree's leaf holding `devId`, and the entry's index. */
function detailsEntry(devId: number): { leaf: number; index: number } {
  const io = new BlockReader(base);
  try {
    let found: { leaf: number; index: number } | undefined;
    walkBTree(io, readSuperblock(io).deviceDetailsRoot, DEVICE_DETAILS_SIZE, {
      leaf(node) {
        for (let i = 0; i < node.nrEntries; i++) if (node.keyNumber(i) === devId) found = { leaf: node.block, index: i };
      },
      error: (e) => {
        throw e;
      },
    });
    return found!;
  } finally {
    io.close();
  }
}

describe('thin_repair never stops on a damaged value', () => {
  it('a leaf whose values were bit-flipped (checksum fixed): no less than the reference, the rest intact', () => {
    const input = resealed('values', blocks.leaf, (node) => {
      // Flip high bits of every third value's data block: most point past the data device.
      for (let i = 0; i < node.nrEntries; i += 3) node.buf[node.valueOffset(i) + 6] ^= 0x5a;
    });
    const ours = compare(input);
    expect(ours.mappings).toBeGreaterThanOrEqual(totalMappings - blocks.leafEntries);
  });

  it('a leaf whose keys were bit-flipped out of order (checksum fixed): keeps the sound ones', () => {
    const input = resealed('keys', blocks.leaf, (node) => {
      for (let i = 5; i < node.nrEntries; i += 40) node.buf[NODE_HEADER_SIZE + 8 * i + 7] ^= 0x80; // past 2^63
    });
    const ours = compare(input);
    const flipped = Math.ceil((blocks.leafEntries - 5) / 40);
    // Every flipped key is out of order; the node's other entries are all kept.
    expect(ours.mappings).toBe(totalMappings - flipped);
  });

  for (const [what, value] of [['2^64-1', 0xffn], ['2^63', 0x80n]] as const) {
    it(`a device whose details hold a transaction id of ${what}: every mapping recovered, the id kept exactly`, () => {
      const devId = Number(/<device dev_id="(\d+)"/.exec(baseDump)![1]);
      const { leaf, index } = detailsEntry(devId);
      const input = resealed(`tid-${value}`, leaf, (node) => {
        const off = node.valueOffset(index) + 8;
        if (value === 0xffn) node.buf.fill(0xff, off, off + 8);
        else node.buf.writeBigUInt64LE(1n << 63n, off);
      });
      const ours = compare(input);
      expect(ours.mappings).toBe(totalMappings);
      const tid = value === 0xffn ? '18446744073709551615' : '9223372036854775808';
      expect(ours.dump).toContain(`<device dev_id="${devId}" mapped_blocks=`);
      expect(ours.dump).toMatch(new RegExp(`<device dev_id="${devId}" [^>]*transaction="${tid}"`));
    });
  }

  it('mappings newer than the pool: kept, with time 0 (the kernel copies before writing)', () => {
    const sbTime = Number(/<superblock [^>]*time="(\d+)"/.exec(baseDump)![1]);
    const input = resealed('late', blocks.leaf, (node) => {
      const off = node.valueOffset(0);
      node.buf.writeUInt32LE(((node.buf.readUInt32LE(off) & 0xff000000) | (sbTime + 7)) >>> 0, off);
    });
    const ours = compare(input);
    expect(ours.mappings).toBe(totalMappings);
    const r = runOurs('thin_repair', ['-i', input, '-o', emptyMetadata('late.out')]);
    expect(r.stderr).toMatch(/1 mappings newer than the pool's time \d+ given time 0/);
  });
});

describe('thin_dump -r', () => {
  it('prints the salvage as XML the reference thin_restore accepts', () => {
    const input = damaged('dump-leaf', blocks.leaf, 'zero');
    const r = runOurs('thin_dump', ['-r', input]);
    expect(r.status, r.stderr).toBe(0);
    expect(countMappings(r.stdout)).toBe(totalMappings - blocks.leafEntries);
    const xml = path.join(dir, 'dump-leaf.xml');
    fs.writeFileSync(xml, r.stdout);
    const out = emptyMetadata('dump-leaf.restored');
    expect(runReference('thin_restore', ['-i', xml, '-o', out]).status).toBe(0);
    expect(runReference('thin_check', [out]).status).toBe(0);
  });

  it('on sound metadata prints what thin_dump prints', () => {
    expect(runOurs('thin_dump', ['-r', base]).stdout).toBe(baseDump);
  });
});

describe('thin_repair command line', () => {
  it('refuses an output that is the input', () => {
    const copy = damaged('same', blocks.leaf, 'zero');
    const before = fs.readFileSync(copy);
    const r = runOurs('thin_repair', ['-i', copy, '-o', copy]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^thin_repair: .*input/);
    expect(fs.readFileSync(copy).equals(before)).toBe(true);
  });

  it('needs both -i and -o, and an existing output', () => {
    expect(runOurs('thin_repair', ['-o', emptyMetadata('x.out')]).status).toBe(1);
    expect(runOurs('thin_repair', ['-i', base]).status).toBe(1);
    const r = runOurs('thin_repair', ['-i', base, '-o', path.join(dir, 'missing.out')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/missing\.out/);
  });

  it('names a missing input in one line', () => {
    const r = runOurs('thin_repair', ['-i', path.join(dir, 'nope.bin'), '-o', emptyMetadata('y.out')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/nope\.bin: No such file or directory/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('overrides replace the superblock values, as the reference does', () => {
    const ours = outcome('ours', base, ['--transaction-id', '2345', '--data-block-size', '256']);
    const ref = outcome('reference', base, ['--transaction-id', '2345', '--data-block-size', '256']);
    expect(ours.dump).toBe(ref.dump);
  });
});
