// thin_ls against the reference thin_ls 0.9.0 (and 1.x for its HIGHEST_* fields): the same table,
// byte for byte, for every field, live and -m, with and without headers, on generated pools,
// shared subtrees, the kernel's images and the pools the kernel built from traces (whose
// reference thin_ls is recorded beside them); the same verdict on damaged metadata.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { lsPool, parseLsFields } from '../src/tools/ls.js';
import { deviceNodes, flipBit, setFirstMapping } from './support/damage.js';
import { Pool, devIdsOf, generatedPools, kernelPools } from './support/pools.js';
import { expectSameAsReference, runLibrary, runOurs, runReference, sha256, tempDir, upstreamTool } from './support/reference.js';

const dir = tempDir('thin-ls-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const ALL_090 = 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,' +
  'MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME';
const HIGHEST = 'DEV,HIGHEST_BLOCK,HIGHEST_SECTOR,HIGHEST_BYTE,HIGHEST_MAPPED,TRANSACTION';

let pools: Pool[] = [];
beforeAll(() => {
  pools = [...generatedPools(dir), ...kernelPools(dir)];
});

/** Our thin_ls in this process; the command line itself is tested below. */
function ourLs(img: string, fields: string | undefined, headers: boolean, snap: boolean): { status: number; stdout: string } {
  return runLibrary(path.join(dir, 'ls.out'), (fd) => lsPool(img, { fields: fields === undefined ? undefined : parseLsFields(fields).fields, headers, metadataSnap: snap || undefined, stdoutFd: fd }));
}

function expectSameLs(img: string, fields: string | undefined, headers = true, snap = false): number {
  const args = [...(snap ? ['-m'] : []), ...(headers ? [] : ['--no-headers']), ...(fields === undefined ? [] : ['-o', fields]), img];
  const ref = runReference('thin_ls', args);
  const ours = ourLs(img, fields, headers, snap);
  expect(ours.status, `exit status of thin_ls ${args.join(' ')}`).toBe(ref.status);
  expect(ours.stdout === ref.stdout, `stdout of thin_ls ${args.join(' ')}:\n${ours.stdout}\nreference:\n${ref.stdout}`).toBe(true);
  return ref.status;
}

describe('thin_ls matches the reference', () => {
  it('every field, default fields, no headers, live and -m, on every pool', () => {
    let listed = 0;
    for (const pool of pools) {
      const before = sha256(pool.path);
      for (const snap of [false, true]) {
        if (expectSameLs(pool.path, ALL_090, true, snap) === 0) listed++;
        expectSameLs(pool.path, undefined, true, snap);
        expectSameLs(pool.path, 'SHARED,DEV,EXCLUSIVE_BYTES', false, snap);
      }
      expect(sha256(pool.path)).toBe(before);
    }
    expect(listed).toBeGreaterThan(10);
  });

  it('field lists: repeated, a trailing comma, empty, unknown', () => {
    const img = pools.find((p) => p.name === 'snapshot-chains')!.path;
    for (const fields of ['DEV,DEV,MAPPED', 'DEV,', '', 'SNAP_TIME', 'DEV,,MAPPED', ',DEV', 'dev', 'HIGHEST']) expectSameLs(img, fields);
  });

  it('the pools the kernel built: the reference thin_ls recorded with them', () => {
    const scenarios = path.join(__dirname, '..', 'testdata', 'kernel-scenarios');
    const names = fs.readdirSync(scenarios).filter((n) => fs.existsSync(path.join(scenarios, n, 'thin_ls.txt')));
    expect(names.length).toBeGreaterThanOrEqual(3);
    for (const name of names) {
      const expected = fs.readFileSync(path.join(scenarios, name, 'thin_ls.txt'), 'latin1');
      const fields = expected.split('\n')[0].trim().split(/ +/).join(',');
      const img = path.join(dir, `${name}.img`);
      fs.writeFileSync(img, gunzipSync(fs.readFileSync(path.join(scenarios, name, 'metadata.img.gz'))));
      expect(ourLs(img, fields, true, false)).toEqual({ status: 0, stdout: expected });
    }
  });

  it('HIGHEST_* (1.x fields) as the 1.x thin_ls prints them', () => {
    for (const pool of pools.filter((p) => ['huge-offset', 'many-devices', 'shared', 'tmeta'].includes(p.name))) {
      const ref = spawnSync(upstreamTool('thin_ls'), ['-o', HIGHEST, pool.path], { encoding: 'utf8' });
      expect(ref.status).toBe(0);
      expect(ourLs(pool.path, HIGHEST, true, false)).toEqual({ status: 0, stdout: ref.stdout });
    }
  });

  it('the command line: options, -m<block>, usage errors', () => {
    const img = pools.find((p) => p.name === 'tmeta_with_metadata_snap')!.path;
    expectSameAsReference('thin_ls', [
      ['-o', 'DEV,EXCLUSIVE', '--no-headers', img],
      ['--format', 'MAPPED,SHARED', '-m', img],
      ['-m6', img],
      [],
      ['-o', 'NOPE', img],
      [path.join(dir, 'missing')],
    ]);
  });
});

describe('thin_ls on damaged metadata', () => {
  it('a damaged leaf fails the fields that read the trees, as the reference; the others still list', () => {
    const src = pools.find((p) => p.name === 'snapshot-chains')!.path;
    const img = path.join(dir, 'damaged.bin');
    fs.copyFileSync(src, img);
    const victim = devIdsOf(img)[2];
    const { leaves } = deviceNodes(img, victim);
    flipBit(img, leaves[0]);
    expect(expectSameLs(img, ALL_090)).toBe(1);
    expect(expectSameLs(img, 'DEV,EXCLUSIVE')).toBe(1);
    expect(expectSameLs(img, undefined)).toBe(0);
    const ours = runOurs('thin_ls', ['-o', 'EXCLUSIVE', img]);
    expect(ours.stderr).toMatch(/^thin_ls: metadata contains errors[^\n]*\n$/);
  });

  it('a data block past the end of the data device is damage (the reference counts it; far past the end, it never returns)', () => {
    const src = pools.find((p) => p.name === 'snapshot-chains')!.path;
    const img = path.join(dir, 'beyond.bin');
    fs.copyFileSync(src, img);
    const { leaves } = deviceNodes(img, devIdsOf(img)[0]);
    // Just past the end: far past it, the reference's block map grows forever.
    setFirstMapping(img, leaves[0], (1 << 16) + 5);
    expect(runReference('thin_ls', ['-o', 'DEV,EXCLUSIVE_BLOCKS', img]).status).toBe(0);
    expect(runOurs('thin_check', [img]).status).toBe(1);
    expect(ourLs(img, 'DEV,EXCLUSIVE_BLOCKS', true, false).status).toBe(1);
    expect(runOurs('thin_ls', ['-o', 'DEV,EXCLUSIVE_BLOCKS', img]).stderr).toMatch(/^thin_ls: metadata contains errors .*beyond the data device/);
  });
});
