// thin_check --auto-repair: space-map damage the trees can vouch for is repaired so that both our
// checker and the reference pass and the reference dump is unchanged; damaged trees are refused
// without a byte written; and the repair is a commit through the transactional layer: until the
// superblock switches, only blocks free in the old metadata change (copies of the space-map blocks
// it changes), so a crash leaves the damaged-but-usable metadata as it was. Those copies need only
// a few free blocks, so a pool that ran out of metadata space is repaired too.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE, BlockReader, BlockWriter } from '../src/io/block-io.js';
import { BITMAP_CSUM_XOR, SUPERBLOCK_CSUM_XOR, sealBlock } from '../src/pdata/checksum.js';
import { readU64, writeU64 } from '../src/pdata/le.js';
import { BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, SpaceMapReader, bitmapCount } from '../src/pdata/space-map/common.js';
import { openDiskSpaceMap } from '../src/pdata/space-map/disk.js';
import { openMetadataSpaceMap, readMetadataIndex } from '../src/pdata/space-map/metadata.js';
import { CrashError, ForwardingStore } from '../src/pdata/block-manager.js';
import { Pool, PoolError } from '../src/thin/pool.js';
import { repairSpaceMaps } from '../src/tools/check-repair.js';
import { NEEDS_CHECK_FLAG, dataSpaceMapRoot, metadataSpaceMapRoot, readSuperblock } from '../src/thin/superblock.js';
import * as damage from './support/damage.js';
import { generateXml } from './support/generate.js';
import { referenceRestore, runOurs, runReference, sha256, tempDir, unpackKernelImage } from './support/reference.js';

const dir = tempDir('auto-repair-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let base: string;
let baseDump: string;
let nodes: ReturnType<typeof damage.deviceNodes>;

function copyOf(name: string, from = base): string {
  const f = path.join(dir, `${name.replace(/\W+/g, '-')}.bin`);
  fs.copyFileSync(from, f);
  return f;
}

/** Every block's count in one of the file's space maps (3 = 3 or more). */
function spaceMapCounts(file: string, which: 'metadata' | 'data'): Uint8Array {
  const io = new BlockReader(file);
  try {
    const sb = readSuperblock(io);
    const sink = { error: (e: Error) => { throw e; } };
    const sm: SpaceMapReader = which === 'metadata'
      ? openMetadataSpaceMap(io, metadataSpaceMapRoot(sb), sink)
      : openDiskSpaceMap(io, dataSpaceMapRoot(sb), sink);
    const out = new Uint8Array(sm.nrBlocks);
    sm.forEachBitmap(sink, (first, counts) => out.set(counts, first));
    return out;
  } finally {
    io.close();
  }
}

function blockWithCount(file: string, which: 'metadata' | 'data', count: number, from = 0): number {
  const b = spaceMapCounts(file, which).indexOf(count, from);
  if (b < 0) throw new Error(`no ${which} block with count ${count}`);
  return b;
}

function changedBlocks(a: string, b: string): number[] {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  const out: number[] = [];
  for (let i = 0; i * BLOCK_SIZE < x.length; i++) {
    if (!x.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE).equals(y.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE))) out.push(i);
  }
  return out;
}

/**
 * Damages a copy, repairs it and holds the result against the reference. Returns the damaged
 * copy (kept aside) and the repaired file.
 */
function damageAndRepair(name: string, apply: (f: string) => void, from = base, dump = baseDump) {
  const f = copyOf(name, from);
  apply(f);
  const damaged = copyOf(`${name}-damaged`, f);
  const before = sha256(f);

  // Without --auto-repair nothing changes and the check still fails.
  const plain = runOurs('thin_check', [f]);
  expect(plain.status, plain.stderr).toBe(1);
  expect(sha256(f)).toBe(before);

  const r = runOurs('thin_check', ['--auto-repair', f]);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toContain('repaired the space maps');

  const ours = runOurs('thin_check', [f]);
  expect(ours.status, ours.stderr).toBe(0);
  const ref = runReference('thin_check', [f]);
  expect(ref.status, ref.stderr).toBe(0);
  expect(runReference('thin_dump', [f]).stdout).toBe(dump);

  // Only the superblock and blocks free in the damaged metadata changed.
  const oldCounts = spaceMapCounts(damaged, 'metadata');
  const changed = changedBlocks(damaged, f);
  expect(changed[0]).toBe(0);
  for (const b of changed.slice(1)) expect(oldCounts[b], `block ${b} was in use`).toBe(0);

  // A crash just before the superblock write: the old superblock over the new blocks reads as
  // the damaged metadata did, finding for finding.
  const crashed = copyOf(`${name}-crashed`, f);
  damage.writeBlock(crashed, 0, damage.readBlock(damaged, 0));
  expect(runOurs('thin_check', [crashed]).stderr).toBe(plain.stderr);
  expect(runReference('thin_check', [crashed]).status).toBe(runReference('thin_check', [damaged]).status);
  expect(runReference('thin_dump', [crashed]).stdout).toBe(runReference('thin_dump', [damaged]).stdout);
  return { damaged, repaired: f, output: r };
}

beforeAll(() => {
  const xml = path.join(dir, 'base.xml');
  fs.writeFileSync(xml, generateXml({ seed: 7, mappingsPerOrigin: 2000, snapshotsPerOrigin: 4, nrDataBlocks: 20000 }));
  base = path.join(dir, 'base.bin');
  referenceRestore(xml, base, 8);
  baseDump = runReference('thin_dump', [base]).stdout;
  nodes = damage.deviceNodes(base, 0);
});

describe('repairs space-map damage', () => {
  it('a leaked metadata block (bitmap, index and root all counting it)', () => {
    const free = blockWithCount(base, 'metadata', 0, 1000);
    const { output } = damageAndRepair('meta-leak', (f) => damage.leakMetadataBlock(f, free));
    expect(output.stderr).toContain(`metadata block ${free}: counted once in the space map but referenced by nothing (leaked)`);
  });

  it('a leaked metadata block marked in the bitmap only', () => {
    const free = blockWithCount(base, 'metadata', 0, 500);
    damageAndRepair('meta-bitmap-leak', (f) => damage.setMetadataCount(f, free, 1));
  });

  it('a leaked data block', () => {
    const free = blockWithCount(base, 'data', 0);
    const { damaged } = damageAndRepair('data-leak', (f) => damage.setDataCount(f, free, 1));
    expect(spaceMapCounts(damaged, 'data')[free]).toBe(1);
  });

  it('a data count too high', () => {
    const once = blockWithCount(base, 'data', 1);
    const { repaired } = damageAndRepair('data-high', (f) => damage.setDataCount(f, once, 2));
    expect(spaceMapCounts(repaired, 'data')[once]).toBe(1);
  });

  it('a data count too low (a mapped block the kernel would hand out again)', () => {
    const once = blockWithCount(base, 'data', 1);
    const { repaired } = damageAndRepair('data-low', (f) => damage.setDataCount(f, once, 0));
    expect(spaceMapCounts(repaired, 'data')[once]).toBe(1);
  });

  it('a shared data block (count 3 or more) marked as used once', () => {
    const shared = blockWithCount(base, 'data', 3);
    damageAndRepair('data-shared-low', (f) => damage.setDataCount(f, shared, 1));
  });

  it('metadata counts too low and too high', () => {
    damageAndRepair('meta-low', (f) => damage.setMetadataCount(f, nodes.leaves[2], 0));
    damageAndRepair('meta-high', (f) => damage.setMetadataCount(f, nodes.leaves[1], 2));
  });

  it('clears NEEDS_CHECK in the same superblock write', () => {
    const free = blockWithCount(base, 'data', 0);
    const { repaired, output } = damageAndRepair('needs-check', (f) => {
      damage.setDataCount(f, free, 1);
      damage.setNeedsCheck(f, true);
    });
    expect(damage.readBlock(repaired, 0).readUInt32LE(4) & NEEDS_CHECK_FLAG).toBe(0);
    expect(output.stderr).toContain('Cleared needs_check flag');
  });

  it('keeps a held metadata snapshot (kernel image): both checks and both dumps unchanged', () => {
    const img = path.join(dir, 'held.bin');
    unpackKernelImage('tmeta_with_metadata_snap', img);
    const dump = runReference('thin_dump', [img]).stdout;
    const snapDump = runReference('thin_dump', ['-m', img]).stdout;
    const free = blockWithCount(img, 'metadata', 0, 100);
    const { repaired } = damageAndRepair('held-leak', (f) => damage.leakMetadataBlock(f, free), img, dump);
    expect(runReference('thin_check', ['-m', repaired]).status).toBe(0);
    expect(runReference('thin_dump', ['-m', repaired]).stdout).toBe(snapDump);
  });

  it('a data bitmap saying 3 or more with no ref-count entry', () => {
    const once = blockWithCount(base, 'data', 1);
    const { damaged, repaired } = damageAndRepair('data-3-no-entry', (f) => damage.setDataCount(f, once, 3));
    expect(runOurs('thin_check', [damaged]).stderr).toContain(`data block ${once}: its bitmap`);
    expect(spaceMapCounts(repaired, 'data')[once]).toBe(1);
  });

  it("a wrong total: the data space map root's nr_allocated", () => {
    const { output } = damageAndRepair('data-total', (f) => {
      const sb = damage.readBlock(f, 0);
      writeU64(sb, 64 + 8, Number(readU64(sb, 64 + 8)) + 5);
      sealBlock(sb, SUPERBLOCK_CSUM_XOR);
      damage.writeBlock(f, 0, sb);
    });
    expect(output.stderr).toMatch(/, data blocks allocated (\d+) -> (\d+)/);
    const [, before, after] = /, data blocks allocated (\d+) -> (\d+)/.exec(output.stderr)!;
    expect(Number(before) - Number(after)).toBe(5);
  });

  it('a pool that ran out of metadata space, with the data block the kernel leaks then (8 free metadata blocks)', () => {
    // As dm-thin: writes go on until the commit that spares the metadata reserve, which comes
    // after the refused write's data block was allocated; that block stays counted (see pool.test).
    const f = path.join(dir, 'out-of-metadata.bin');
    fs.writeFileSync(f, '');
    fs.truncateSync(f, 80 * BLOCK_SIZE);
    const store = new BlockWriter(f);
    const pool = Pool.format(store, { dataBlockSize: 128, nrDataBlocks: 100000 });
    pool.createThin(1);
    try {
      for (let i = 0; ; i++) pool.insertMapping(1, i * 300, pool.allocDataBlock());
    } catch (e) {
      if (!(e instanceof PoolError)) throw e;
    }
    expect(pool.mode).toBe('out-of-metadata-space');
    store.close();
    const full = copyOf('out-of-metadata-full', f);
    const dump = runReference('thin_dump', [f]).stdout;
    const free = (file: string) => Number(/METADATA_FREE_BLOCKS=(\d+)/.exec(runOurs('thin_check', [file]).stdout)![1]);
    expect(free(full)).toBe(8);
    // Both space maps rewritten beside the old ones would need more blocks than are free (the
    // data space map alone has 7 bitmaps); copying what changes needs a handful.
    const { repaired, output } = damageAndRepair('out-of-metadata', () => {}, full, dump);
    expect(output.stderr).toMatch(/1 data blocks have leaked/);
    expect(output.stderr).toMatch(/0 metadata and 1 data block counts set right/);
    expect(free(repaired)).toBe(8);
  });

  it('-q repairs silently', () => {
    const f = copyOf('quiet');
    damage.leakMetadataBlock(f, blockWithCount(base, 'metadata', 0, 1000));
    expect(runOurs('thin_check', ['-q', '--auto-repair', f])).toMatchObject({ status: 0, stdout: '', stderr: '' });
    expect(runReference('thin_check', [f]).status).toBe(0);
  });
});

/** The metadata file, losing every block written after the first `limit` (a crash there). */
class CrashingStore extends ForwardingStore {
  written = 0;
  constructor(path: string, private readonly limit = Infinity) {
    super(new BlockWriter(path));
  }
  write(block: number, data: Buffer): void {
    for (let i = 0; i * BLOCK_SIZE < data.length; i++) {
      if (this.written === this.limit) throw new CrashError(`crash after ${this.limit} block writes`);
      this.inner.write(block + i, data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
      this.written++;
    }
  }
}

describe('a crash during the repair', () => {
  it('at every block write leaves the damaged metadata as it was, and the repair then goes through', () => {
    const damaged = copyOf('crash-damaged');
    damage.leakMetadataBlock(damaged, blockWithCount(base, 'metadata', 0, 1000));
    damage.setDataCount(damaged, blockWithCount(base, 'data', 1), 0);
    damage.setDataCount(damaged, blockWithCount(base, 'data', 0), 2);
    damage.setNeedsCheck(damaged, true);
    const findings = runOurs('thin_check', [damaged]);
    expect(findings.status).toBe(1);
    const dump = runReference('thin_dump', [damaged]).stdout;

    const whole = copyOf('crash-whole', damaged);
    const counting = new CrashingStore(whole);
    const r = repairSpaceMaps(whole, counting);
    counting.close();
    expect(r.recheck.ok).toBe(true);
    const writes = counting.written;
    // Copies of a bitmap of each space map, the data index and ref-count paths, the metadata
    // index, the superblock: a handful.
    expect(writes).toBeGreaterThan(3);
    expect(writes).toBeLessThan(20);

    for (let n = 0; n < writes; n++) {
      const f = copyOf(`crash-at-${n}`, damaged);
      const store = new CrashingStore(f, n);
      expect(() => repairSpaceMaps(f, store), `crash after ${n} writes`).toThrow(CrashError);
      store.close();
      expect(runOurs('thin_check', [f]).stderr, `crash after ${n} writes`).toBe(findings.stderr);
      expect(runReference('thin_dump', [f]).stdout).toBe(dump);
      expect(runOurs('thin_check', ['-q', '--auto-repair', f]).status).toBe(0);
      expect(runReference('thin_check', [f]).status).toBe(0);
      expect(runReference('thin_dump', [f]).stdout).toBe(dump.replace('flags="1"', 'flags="0"'));
    }
  });
});

describe('refuses', () => {
  it('a damaged tree (zeroed leaf): exit 1, not a byte written', () => {
    const f = copyOf('zeroed-leaf');
    damage.zeroBlock(f, nodes.leaves[2]);
    damage.leakMetadataBlock(f, blockWithCount(base, 'metadata', 0, 1000));
    const before = sha256(f);
    const r = runOurs('thin_check', ['--auto-repair', f]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`auto-repair refused.*thin device 0's mapping tree is damaged.*\\(block ${nodes.leaves[2]}\\)`));
    expect(sha256(f)).toBe(before);
  });

  it('mapped_blocks that disagree with the tree', () => {
    const f = copyOf('mapped-blocks');
    damage.setMappedBlocks(f, 0, 7);
    const before = sha256(f);
    const r = runOurs('thin_check', ['--auto-repair', f]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/auto-repair refused.*thin device 0 has \d+ mappings but its device details say mapped_blocks = 7/);
    expect(sha256(f)).toBe(before);
  });

  it('when every free metadata block has leaked, leaving no room for new space maps beside the old', () => {
    const f = copyOf('all-leaked');
    const io = new BlockReader(f);
    const index = readMetadataIndex(io, metadataSpaceMapRoot(readSuperblock(io)));
    const nrBlocks = Number(metadataSpaceMapRoot(readSuperblock(io)).nrBlocks);
    io.close();
    for (let bm = 0; bm < index.length; bm++) {
      const buf = damage.readBlock(f, index[bm].blocknr);
      const n = Math.min(ENTRIES_PER_BITMAP, nrBlocks - bm * ENTRIES_PER_BITMAP);
      // A count of 1 is the entry's low bit, the upper bit of its pair.
      for (let i = 0; i < n; i++) if (bitmapCount(buf, i) === 0) buf[BITMAP_HEADER_SIZE + (i >>> 2)] |= 2 << ((i & 3) << 1);
      sealBlock(buf, BITMAP_CSUM_XOR);
      damage.writeBlock(f, index[bm].blocknr, buf);
    }
    expect(spaceMapCounts(f, 'metadata').indexOf(0)).toBe(-1);
    const before = sha256(f);
    const r = runOurs('thin_check', ['--auto-repair', f]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/auto-repair refused.*not enough free metadata blocks/);
    expect(sha256(f)).toBe(before);
  });

  it('-m or a root override with --auto-repair', () => {
    for (const args of [['-m'], ['--override-mapping-root', '1']]) {
      const r = runOurs('thin_check', [...args, '--auto-repair', base]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/the argument '--auto-repair' cannot be used with '--(metadata-snap|override-mapping-root)'/);
    }
  });
});

describe('on sound metadata', () => {
  it('writes nothing but clears NEEDS_CHECK, as 1.x does', () => {
    const f = copyOf('sound');
    const before = sha256(f);
    expect(runOurs('thin_check', ['--auto-repair', f]).status).toBe(0);
    expect(sha256(f)).toBe(before);
    damage.setNeedsCheck(f, true);
    const r = runOurs('thin_check', ['--auto-repair', f]);
    expect(r.status, r.stderr).toBe(0);
    expect(damage.readBlock(f, 0).readUInt32LE(4) & NEEDS_CHECK_FLAG).toBe(0);
    expect(sha256(f)).toBe(before);
  });
});
