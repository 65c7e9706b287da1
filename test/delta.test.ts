// thin_delta against the reference thin_delta 0.9.0 (and 1.x for its --root options): the same
// bytes and exit status, plain and --verbose, live and -m, on generated pools (snapshot chains,
// huge offsets, many and deleted devices, shared subtrees), the kernel's images and damaged
// metadata. The input is never written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { deviceNodes, flipBit, superblockOf } from './support/damage.js';
import { Pool, devIdsOf, generatedPools, kernelPools, keysPast2To53Pool } from './support/pools.js';
import { runLibrary, runOurs, runReference, sha256, tempDir, upstreamTool } from './support/reference.js';
import { spawnSync } from 'node:child_process';
import { deltaDevices } from '../src/tools/delta.js';
import { openMetadataInput } from '../src/io/open.js';
import { lookupBTree } from '../src/pdata/btree/lookup.js';
import { diffDeviceTrees } from '../src/thin/delta.js';
import { TOP_LEVEL_VALUE_SIZE } from '../src/thin/mapping-tree.js';
import { readSuperblock } from '../src/thin/superblock.js';

const dir = tempDir('thin-delta-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let generated: Pool[] = [];
let kernel: Pool[] = [];
beforeAll(() => {
  generated = generatedPools(dir);
  kernel = kernelPools(dir);
});

/** Our thin_delta in this process (the bulk of the comparisons; spawning node for each is slow). */
function ourDelta(img: string, a: number, b: number, verbose: boolean, snap: boolean): { status: number; stdout: string } {
  return runLibrary(path.join(dir, 'delta.out'), (fd) => deltaDevices(img, { left: { devId: a }, right: { devId: b }, verbose, metadataSnap: snap || undefined, stdoutFd: fd }));
}

/** Library and reference agree on one pair. */
function expectSamePair(img: string, a: number, b: number, verbose: boolean, snap: boolean): number {
  const args = [...(snap ? ['-m'] : []), ...(verbose ? ['--verbose'] : []), '--snap1', String(a), '--snap2', String(b), img];
  const ref = runReference('thin_delta', args);
  const ours = ourDelta(img, a, b, verbose, snap);
  expect(ours.status, `exit status of thin_delta ${args.join(' ')}`).toBe(ref.status);
  expect(ours.stdout === ref.stdout, `stdout of thin_delta ${args.join(' ')} differs from the reference`).toBe(true);
  return ref.status;
}

function expectSame(args: string[]): { status: number; stdout: string } {
  const ref = runReference('thin_delta', args);
  const ours = runOurs('thin_delta', args);
  expect(ours.status, `exit status of thin_delta ${args.join(' ')} (ours: ${ours.stderr})`).toBe(ref.status);
  expect(ours.stdout === ref.stdout, `stdout of thin_delta ${args.join(' ')} differs from the reference`).toBe(true);
  if (ref.status !== 0) {
    expect(ours.stderr.trim().split('\n'), 'one line').toHaveLength(1);
    expect(ours.stderr).toMatch(/^thin_delta: /);
  }
  return ref;
}

/** Pairs of devices worth comparing: neighbours (snapshot and origin), ends, itself, one absent. */
function pairsOf(ids: number[]): [number, number][] {
  if (ids.length === 0) return [[0, 1]];
  const pairs: [number, number][] = [[ids[0], ids[0]], [ids[0], ids[ids.length - 1]], [ids[ids.length - 1], ids[0]]];
  for (let i = 1; i < ids.length && pairs.length < 8; i += Math.max(1, Math.floor(ids.length / 5))) pairs.push([ids[i - 1], ids[i]]);
  pairs.push([ids[0], 99999]);
  return pairs;
}

describe('thin_delta matches the reference', () => {
  it('on generated pools, plain and verbose', () => {
    for (const pool of generated) {
      const before = sha256(pool.path);
      const ids = devIdsOf(pool.path);
      let printed = 0;
      for (const [a, b] of pairsOf(ids)) {
        for (const verbose of [false, true]) if (expectSamePair(pool.path, a, b, verbose, false) === 0) printed++;
      }
      if (ids.length > 0) expect(printed, pool.name).toBeGreaterThan(0);
      expect(sha256(pool.path)).toBe(before);
    }
  });

  it('on the kernel images, live and with -m, plain and verbose', () => {
    let printed = 0;
    for (const pool of kernel) {
      const before = sha256(pool.path);
      for (const snap of [false, true]) {
        for (const [a, b] of pairsOf(devIdsOf(pool.path, snap)).slice(0, snap ? 3 : 6)) {
          for (const verbose of [false, true]) if (expectSamePair(pool.path, a, b, verbose, snap) === 0) printed++;
        }
      }
      expect(sha256(pool.path)).toBe(before);
    }
    expect(printed).toBeGreaterThan(60);
  });

  it('the command line: the same bytes and status as the library and the reference', () => {
    const img = kernel.find((p) => p.name === 'tmeta')!.path;
    expectSame(['--snap1', '1', '--snap2', '2', img]);
    expectSame(['--verbose', '--snap1', '3', '--snap2', '16', img]);
  });

  it('option spellings: --thin1/--thin2, -m<block>, --metadata-snap=<block>, a wrong block, no snapshot', () => {
    const img = kernel.find((p) => p.name === 'tmeta_with_metadata_snap')!.path;
    const plain = kernel.find((p) => p.name === 'tmeta')!.path;
    expectSame(['--thin1', '1', '--thin2', '2', img]);
    expectSame(['--thin1', '2', '--snap2', '3', '--verbose', img]);
    expectSame(['-m6', '--snap1', '1', '--snap2', '2', img]);
    expectSame(['--metadata-snap=6', '--snap1', '1', '--snap2', '16', img]);
    expectSame(['-m7', '--snap1', '1', '--snap2', '2', img]);
    expectSame(['-m', '--snap1', '1', '--snap2', '2', plain]);
  });

  it('usage errors: no input, no --snap1, no --snap2, a bad number, a missing file', () => {
    const img = generated[0].path;
    expectSame(['--snap1', '1', '--snap2', '2']);
    expectSame(['--snap2', '2', img]);
    expectSame(['--snap1', '1', img]);
    expectSame(['--snap1', 'x', '--snap2', '2', img]);
    expectSame(['--snap1', '0', '--snap2', '1', path.join(dir, 'missing.bin')]);
  });

  it('--root1/--root2 (1.x options): what the 1.x thin_delta prints (plus the final newline it omits)', () => {
    const img = kernel.find((p) => p.name === 'tmeta')!.path;
    const roots = [deviceNodes(img, 1).root, deviceNodes(img, 2).root];
    for (const args of [
      ['--root1', String(roots[0]), '--root2', String(roots[1])],
      ['--root1', String(roots[0]), '--thin2', '2'],
      ['--thin1', '2', '--root2', String(roots[1])],
    ]) {
      const ref = spawnSync(upstreamTool('thin_delta'), [...args, img], { encoding: 'utf8' });
      const ours = runOurs('thin_delta', [...args, img]);
      expect([ours.status, ref.status]).toEqual([0, 0]);
      expect(ours.stdout === `${ref.stdout}\n`, `thin_delta ${args.join(' ')}`).toBe(true);
    }
  });
});

describe('thin_delta reads a shared subtree once', () => {
  it('on the kernel images, no node is read twice, whatever depth the trees share it at', () => {
    let pairs = 0;
    for (const pool of kernel.filter((p) => p.name.startsWith('tmeta_with_shared') || p.name === 'tmeta')) {
      const ids = devIdsOf(pool.path);
      const io = openMetadataInput(pool.path);
      try {
        const top = readSuperblock(io).dataMappingRoot;
        const rootOf = (devId: number) => {
          const found = lookupBTree(io, top, TOP_LEVEL_VALUE_SIZE, devId)!;
          return found.node.valueBlock(found.index);
        };
        for (const [a, b] of pairsOf(ids).filter(([x, y]) => x !== y && ids.includes(y))) {
          const [left, right] = [rootOf(a), rootOf(b)];
          const reads = new Map<number, number>();
          const readInto = io.readInto.bind(io);
          io.readInto = (block, buf) => (reads.set(block, (reads.get(block) ?? 0) + 1), readInto(block, buf));
          const ignore = () => {};
          try {
            diffDeviceTrees(io, left, right, { begin: ignore, range: ignore, end: ignore }, false);
          } finally {
            io.readInto = readInto;
          }
          const twice = [...reads].filter(([, n]) => n > 1).map(([block]) => block);
          expect(twice, `${pool.name}: blocks read twice comparing devices ${a} and ${b}`).toEqual([]);
          pairs++;
        }
      } finally {
        io.close();
      }
    }
    expect(pairs).toBeGreaterThan(3);
  });
});

describe('thin_delta past 2^53', () => {
  it('thin blocks across 2^53 and up to 2^64-1: ranges cut and merged exactly, plain and verbose', () => {
    const img = keysPast2To53Pool(dir).path;
    for (const [a, b] of [[1, 2], [2, 1], [1, 1]]) for (const verbose of [false, true]) expect(expectSamePair(img, a, b, verbose, false)).toBe(0);
  });
});

describe('thin_delta on damaged metadata', () => {
  it('a damaged leaf in either device fails as the reference does, printing nothing, never crashing', () => {
    const src = generated.find((p) => p.name === 'snapshot-chains')!.path;
    const ids = devIdsOf(src);
    for (const [victim, other] of [[ids[0], ids[1]], [ids[1], ids[0]]]) {
      const img = path.join(dir, `damaged-${victim}.bin`);
      fs.copyFileSync(src, img);
      const { leaves, root } = deviceNodes(img, victim);
      flipBit(img, leaves[Math.floor(leaves.length / 2)]);
      for (const verbose of [false, true]) expect(expectSamePair(img, victim, other, verbose, false)).toBe(1);
      flipBit(img, root);
      expectSame(['--snap1', String(other), '--snap2', String(victim), img]);
    }
  });

  it('a damaged top level of the mapping tree, and the kernel image with a zeroed device root', () => {
    const src = generated.find((p) => p.name === 'many-devices')!.path;
    const img = path.join(dir, 'damaged-top.bin');
    fs.copyFileSync(src, img);
    const ids = devIdsOf(img);
    flipBit(img, superblockOf(img).dataMappingRoot);
    expect(expectSame(['--snap1', String(ids[0]), '--snap2', String(ids[1]), img]).status).toBe(1);
    const reuse = kernel.find((p) => p.name === 'tmeta_device_id_reuse_with_corrupted_thins')!.path;
    for (const m of [[], ['-m']]) {
      for (const [a, b] of [[1, 2], [2, 1], [2, 3]]) expectSame([...m, '--snap1', String(a), '--snap2', String(b), reuse]);
    }
  });
});
