// thin_rmap against the reference thin_rmap 0.9.0: the same bytes and exit status for one and
// several (overlapping) regions, on generated pools, shared subtrees, the kernel's images and
// damaged metadata. Regions sharing a first data block come out in the reference's (unstable
// std::sort) order; that order is also checked against std::sort itself where g++ is at hand.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stdSort } from '../src/tools/rmap-order.js';
import { parseRegion, rmapPool } from '../src/tools/rmap.js';
import { rng } from './support/generate.js';
import { deviceNodes, flipBit } from './support/damage.js';
import { Pool, devIdsOf, generatedPools, kernelPools, keysPast2To53Pool } from './support/pools.js';
import { expectSameAsReference, runLibrary, runReference, sha256, tempDir } from './support/reference.js';

const dir = tempDir('thin-rmap-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let pools: Pool[] = [];
beforeAll(() => {
  pools = [...generatedPools(dir), ...kernelPools(dir)];
});

function ourRmap(img: string, regions: string[]): { status: number; stdout: string } {
  return runLibrary(path.join(dir, 'rmap.out'), (fd) => rmapPool(img, regions.map(parseRegion), fd));
}

function expectSameRmap(img: string, regions: string[]): { status: number; stdout: string } {
  const args = [...regions.flatMap((r) => ['--region', r]), img];
  const ref = runReference('thin_rmap', args);
  const ours = ourRmap(img, regions);
  expect(ours.status, `exit status of thin_rmap ${args.join(' ')}`).toBe(ref.status);
  expect(ours.stdout === ref.stdout, `stdout of thin_rmap ${args.join(' ')} differs`).toBe(true);
  return ref;
}

const REGION_SETS = [
  ['0..18446744073709551615'],
  ['5..45'],
  ['0..10', '5..300', '290..1200', '5000..5001'],
  ['100..101'],
  ['1000000..1100000'],
];

describe('thin_rmap matches the reference', () => {
  it('on every pool, for one, several and overlapping regions', () => {
    let lines = 0;
    for (const pool of pools) {
      const before = sha256(pool.path);
      for (const regions of REGION_SETS) lines += expectSameRmap(pool.path, regions).stdout.split('\n').length - 1;
      expect(sha256(pool.path)).toBe(before);
    }
    // Enough output, and ties among it, to exercise the reference's order.
    expect(lines).toBeGreaterThan(20000);
  });

  it('thin blocks across 2^53 and up to 2^64-1', () => {
    const img = keysPast2To53Pool(dir).path;
    for (const regions of [['0..18446744073709551615'], ['1100..1400', '5050..7100', '9007199254740993..9007199254741000']]) {
      expect(expectSameRmap(img, regions).stdout).toMatch(/thin\(2\) 9007199254740\d+\.\./);
    }
  });

  it('the command line: repeated --region, usage errors', () => {
    const img = pools.find((p) => p.name === 'tmeta')!.path;
    expectSameAsReference('thin_rmap', [
      ['--region', '0..100', '--region', '50..200', img],
      ['--region', '5..4', img],
      ['--region', '5-10', img],
      ['--region', 'a..b', img],
      [img],
      ['--region', '0..10'],
      ['--region', '0..10', path.join(dir, 'missing')],
    ]);
  });

  it('a reader that closes the pipe early ends thin_rmap and thin_delta as it ends the reference (SIGPIPE)', () => {
    const img = pools.find((p) => p.name === 'tmeta')!.path;
    const ROOT = path.resolve(__dirname, '..');
    for (const [tool, args] of [['thin_rmap', ['--region', '0..100000']], ['thin_delta', ['--verbose', '--snap1', '1', '--snap2', '2']]] as const) {
      const status = (command: string) =>
        spawnSync('bash', ['-c', `${command} ${[...args, img].join(' ')} | head -1 >/dev/null; echo \${PIPESTATUS[0]}`], { encoding: 'utf8' }).stdout.trim();
      expect(status(`'${process.execPath}' '${path.join(ROOT, 'bin', tool)}'`), tool).toBe(status(`/usr/sbin/${tool}`));
    }
  });

  it('damaged metadata: the same verdict, nothing printed', () => {
    const src = pools.find((p) => p.name === 'snapshot-chains')!.path;
    const img = path.join(dir, 'damaged.bin');
    fs.copyFileSync(src, img);
    flipBit(img, deviceNodes(img, devIdsOf(img)[1]).leaves[1]);
    expect(expectSameRmap(img, ['0..100000']).status).toBe(1);
    for (const name of ['corrupted_tmeta_with_metadata_snap', 'tmeta_device_id_reuse_with_corrupted_thins', 'tmeta_with_corrupted_metadata_snap']) {
      expectSameRmap(pools.find((p) => p.name === name)!.path, ['0..100000']);
    }
  });
});

describe("the reference's sort order", () => {
  const gpp = spawnSync('g++', ['--version']).status === 0;

  it.skipIf(!gpp)('stdSort leaves ties exactly where std::sort does (introsort, heapsort fallback, insertion sort)', () => {
    const src = path.join(dir, 'sort.cc');
    const bin = path.join(dir, 'sort');
    fs.writeFileSync(src, [
      '#include <algorithm>', '#include <cstdio>', '#include <vector>',
      'struct R { long key; int id; };',
      'int main() { int n; std::vector<R> v; while (scanf("%d", &n) == 1) {',
      '  v.clear(); for (int i = 0; i < n; i++) { long k; scanf("%ld", &k); v.push_back({k, i}); }',
      '  std::sort(v.begin(), v.end(), [](R const &a, R const &b) { return a.key < b.key; });',
      '  for (auto &r : v) printf("%d ", r.id); printf("\\n"); } }', ''].join('\n'));
    execFileSync('g++', ['-O2', '-o', bin, src]);
    const rand = rng(7);
    const cases: number[][] = [];
    for (const n of [0, 1, 2, 5, 16, 17, 33, 100, 1000, 5000]) {
      for (const distinct of [1, 3, 50, 1 << 30]) cases.push(Array.from({ length: n }, () => Math.floor(rand() * distinct)));
    }
    // A median-of-three killer drives introsort to its heapsort fallback.
    const killer = (n: number): number[] => {
      const a = new Array<number>(n);
      const k = n / 2;
      for (let i = 1; i <= k; i++) {
        a[i - 1] = i % 2 ? i : k + i - 1;
        a[k + i - 1] = 2 * i;
      }
      return a;
    };
    cases.push(killer(2048), killer(5000), killer(64).map((x) => x % 7));
    // Already in order: rising strictly (left as it is), with ties (sorted all the same).
    cases.push(Array.from({ length: 3000 }, (_, i) => 2 * i), Array.from({ length: 3000 }, (_, i) => i >> 2), [...Array.from({ length: 100 }, (_, i) => i), 99]);
    const input = cases.map((c) => `${c.length} ${c.join(' ')}\n`).join('');
    const expected = execFileSync(bin, { input, encoding: 'utf8', maxBuffer: 1 << 26 }).split('\n');
    cases.forEach((keys, i) => {
      // thin_rmap sorts int32 keys while the data blocks fit, doubles past 2^31.
      for (const typed of [Float64Array.from(keys), Int32Array.from(keys)]) {
        const order = new Int32Array(keys.length).map((_, j) => j);
        stdSort(order, typed);
        expect(Array.from(order).join(' ') + (keys.length ? ' ' : ''), `case ${i} (n=${keys.length}, ${typed.constructor.name})`).toBe(expected[i]);
      }
    });
  });
});
