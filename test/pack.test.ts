// thin_metadata_pack / thin_metadata_unpack in the upstream 1.x pack format, both ways with the
// upstream tools: whoever packs and whoever unpacks, the metadata that comes out is the same,
// block for block, as upstream's own round trip, and dumps (reference thin_dump) as the source
// does. Damaged packs and misused outputs are one-line errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE } from '../src/io/block-io.js';
import { packMetadata, unpackMetadata } from '../src/tools/pack.js';
import { Pool, generatedPools, kernelPools } from './support/pools.js';
import { runOurs, runReference, runUpstream, sha256, tempDir } from './support/reference.js';

const dir = tempDir('thin-pack-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let pools: Pool[] = [];
beforeAll(() => {
  pools = [...generatedPools(dir), ...kernelPools(dir), extremePool()];
});

/** Keys and mapping values near 2^64: the node packer's literal fallback and 64-bit deltas. */
function extremePool(): Pool {
  const xml = path.join(dir, 'extreme.xml');
  fs.writeFileSync(xml, [
    '<superblock uuid="" time="5" transaction="18446744073709551615" flags="0" version="2" data_block_size="128" nr_data_blocks="2000000">',
    '  <device dev_id="16777215" mapped_blocks="300" transaction="18446744073709551614" creation_time="1" snap_time="5">',
    ...Array.from({ length: 300 }, (_, i) => `    <single_mapping origin_block="${18446744073709551000n + BigInt(i * 2)}" data_block="${1999999 - i}" time="${i % 5}"/>`),
    '  </device>',
    '</superblock>', ''].join('\n'));
  const meta = path.join(dir, 'extreme.bin');
  fs.writeFileSync(meta, '');
  fs.truncateSync(meta, 8 << 20);
  const r = runOurs('thin_restore', ['-i', xml, '-o', meta]);
  if (r.status !== 0) throw new Error(r.stderr);
  return { name: 'extreme', path: meta };
}

function run(tool: 'ours' | 'upstream' | 'library', name: string, args: string[]): void {
  if (tool === 'library') {
    // Our tools in this process, for the bulk of the round trips (the CLI is run below).
    const [input, output] = [args[args.indexOf('-i') + 1], args[args.indexOf('-o') + 1]];
    (name === 'thin_metadata_pack' ? packMetadata : unpackMetadata)(input, output);
    return;
  }
  const r = tool === 'ours' ? runOurs(name, args) : runUpstream(name, args);
  expect(r.status, `${tool} ${name} ${args.join(' ')}: ${r.stderr}`).toBe(0);
}

function dumpOf(meta: string, snap: boolean): { status: number; stdout: string } {
  const r = runReference('thin_dump', [...(snap ? ['-m'] : []), meta]);
  return { status: r.status, stdout: r.stdout };
}

describe('packs move both ways between our tools and upstream 1.x', () => {
  it('every pool: the four pack/unpack pairings give upstream round trip, which dumps as the source', () => {
    for (const pool of pools) {
      const before = sha256(pool.path);
      const p = (s: string) => path.join(dir, `${pool.name}.${s}`);
      const ours = pool.name === 'tmeta' ? 'ours' : 'library';
      run(ours, 'thin_metadata_pack', ['-i', pool.path, '-o', p('ours.pack')]);
      run('upstream', 'thin_metadata_pack', ['-i', pool.path, '-o', p('up.pack')]);
      run('upstream', 'thin_metadata_unpack', ['-i', p('up.pack'), '-o', p('up-up.bin')]);
      run('upstream', 'thin_metadata_unpack', ['-i', p('ours.pack'), '-o', p('ours-up.bin')]);
      run(ours, 'thin_metadata_unpack', ['-i', p('up.pack'), '-o', p('up-ours.bin')]);
      run(ours, 'thin_metadata_unpack', ['-i', p('ours.pack'), '-o', p('ours-ours.bin')]);
      const expected = sha256(p('up-up.bin'));
      for (const s of ['ours-up.bin', 'up-ours.bin', 'ours-ours.bin']) expect(sha256(p(s)), `${pool.name} ${s}`).toBe(expected);
      expect(fs.statSync(p('ours-ours.bin')).size).toBe(Math.floor(fs.statSync(pool.path).size / BLOCK_SIZE) * BLOCK_SIZE);
      for (const snap of [false, true]) expect(dumpOf(p('ours-ours.bin'), snap), `${pool.name} dump`).toEqual(dumpOf(pool.path, snap));
      expect(sha256(pool.path)).toBe(before);
      for (const s of ['ours.pack', 'up.pack', 'up-up.bin', 'ours-up.bin', 'up-ours.bin', 'ours-ours.bin']) fs.rmSync(p(s));
    }
  });

  it('the blocks a pack holds come back identical, the others zero', () => {
    const src = pools.find((p) => p.name === 'tmeta')!.path;
    const packed = path.join(dir, 'blocks.pack');
    const out = path.join(dir, 'blocks.bin');
    run('ours', 'thin_metadata_pack', ['-i', src, '-o', packed]);
    run('ours', 'thin_metadata_unpack', ['-i', packed, '-o', out]);
    const a = fs.readFileSync(src);
    const b = fs.readFileSync(out);
    const zero = Buffer.alloc(BLOCK_SIZE);
    let held = 0;
    for (let off = 0; off < b.length; off += BLOCK_SIZE) {
      const got = b.subarray(off, off + BLOCK_SIZE);
      if (got.equals(zero)) continue;
      held++;
      expect(got.equals(a.subarray(off, off + BLOCK_SIZE)), `block ${off / BLOCK_SIZE}`).toBe(true);
    }
    expect(held).toBeGreaterThan(100);
  });
});

describe('errors', () => {
  it('not a pack, a truncated or corrupt pack, a missing input: one line, exit 1', () => {
    const src = pools.find((p) => p.name === 'snapshot-chains')!.path;
    const good = path.join(dir, 'good.pack');
    run('ours', 'thin_metadata_pack', ['-i', src, '-o', good]);
    const bytes = fs.readFileSync(good);
    const bad = (name: string, data: Buffer) => {
      const p = path.join(dir, name);
      fs.writeFileSync(p, data);
      return p;
    };
    const corrupt = Buffer.from(bytes);
    corrupt[60] ^= 0xff;
    for (const input of [src, bad('short.pack', bytes.subarray(0, bytes.length - 100)), bad('corrupt.pack', corrupt), path.join(dir, 'missing.pack')]) {
      const out = path.join(dir, 'out.bin');
      const r = runOurs('thin_metadata_unpack', ['-i', input, '-o', out]);
      expect(r.status, input).toBe(1);
      expect(r.stderr).toMatch(/^thin_metadata_unpack: [^\n]*\n$/);
      expect(fs.existsSync(out), 'no output left behind').toBe(false);
    }
  });

  it('refuses its input as output, and metadata as output unless -f', () => {
    const src = pools.find((p) => p.name === 'snapshot-chains')!.path;
    const copy = path.join(dir, 'victim.bin');
    fs.copyFileSync(src, copy);
    const before = sha256(copy);
    expect(runOurs('thin_metadata_pack', ['-i', copy, '-o', copy]).status).toBe(1);
    const packed = path.join(dir, 'v.pack');
    run('ours', 'thin_metadata_pack', ['-i', copy, '-o', packed]);
    expect(runOurs('thin_metadata_unpack', ['-i', packed, '-o', packed]).status).toBe(1);
    const refused = runOurs('thin_metadata_unpack', ['-i', packed, '-o', copy]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/-f/);
    expect(sha256(copy)).toBe(before);
    run('ours', 'thin_metadata_unpack', ['-f', '-i', packed, '-o', copy]);
    expect(dumpOf(copy, false)).toEqual(dumpOf(src, false));
  });
});
