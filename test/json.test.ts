// --format json: valid JSON that carries exactly what the reference's XML (or table) carries,
// value for value, u64s past 2^53 with all their digits. Oracle: the reference 0.9.0 tools'
// output on the same pools, read element by element.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool, devIdsOf, generatedPools, kernelPools } from './support/pools.js';
import { referenceRestore, runOurs, runReference, tempDir } from './support/reference.js';

const dir = tempDir('thin-json-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let pools: Pool[] = [];
beforeAll(() => {
  const kernel = kernelPools(dir).filter((p) => ['tmeta', 'tmeta_with_metadata_snap', 'tmeta_device_id_reuse'].includes(p.name));
  pools = [...generatedPools(dir), ...kernel, extremePool()];
});

/** u64s at their limits: transaction ids 2^64-1, thin blocks near 2^64. */
function extremePool(): Pool {
  const xml = path.join(dir, 'extreme.xml');
  fs.writeFileSync(xml, [
    '<superblock uuid="" time="5" transaction="18446744073709551615" flags="0" version="2" data_block_size="128" nr_data_blocks="2000000">',
    '  <device dev_id="7" mapped_blocks="40" transaction="18446744073709551614" creation_time="1" snap_time="5">',
    ...Array.from({ length: 40 }, (_, i) => `    <single_mapping origin_block="${18446744073709551000n + BigInt(i < 20 ? i : i * 3)}" data_block="${1000 + i}" time="${i % 5}"/>`),
    '  </device>',
    '</superblock>', ''].join('\n'));
  const meta = path.join(dir, 'extreme.bin');
  // The reference's restore takes a mapped_blocks that disagrees with the mappings (ours refuses).
  referenceRestore(xml, meta, 8);
  return { name: 'extreme', path: meta };
}

/** Parses our JSON keeping every integer exact (as a decimal string); it must be valid JSON too. */
function parseExact(text: string): any {
  expect(() => JSON.parse(text)).not.toThrow();
  return JSON.parse(text.replace(/([:[,]\s*)(\d+)(?=\s*[,}\]])/g, '$1"$2"'));
}

/** The elements of one-element-a-line XML: name and attributes (strings), in order. */
function xmlElements(xml: string): { name: string; attrs: Record<string, string> }[] {
  const out: { name: string; attrs: Record<string, string> }[] = [];
  for (const line of xml.split('\n')) {
    const m = /^\s*<([a-z_]+)((?: [a-z_]+="[^"]*")*)\/?>$/.exec(line);
    if (!m) continue;
    out.push({ name: m[1], attrs: Object.fromEntries([...m[2].matchAll(/([a-z_]+)="([^"]*)"/g)].map((a) => [a[1], a[2]])) });
  }
  return out;
}

describe('thin_dump --format json', () => {
  it('carries what the reference XML carries, run for run, live and -m', () => {
    for (const pool of pools.filter((p) => p.name !== 'large-blocks' && p.name !== 'tmeta_device_id_reuse')) {
      for (const snap of [[], ['-m']]) {
        const ref = runReference('thin_dump', [...snap, pool.path]);
        const ours = runOurs('thin_dump', [...snap, '--format', 'json', pool.path]);
        expect(ours.status, `${pool.name} ${snap}`).toBe(ref.status);
        if (ref.status !== 0) continue;
        const doc = parseExact(ours.stdout);
        const elems = xmlElements(ref.stdout);
        const sb = elems.shift()!;
        expect(sb.name).toBe('superblock');
        const { devices, ...pool_ } = doc.superblock;
        expect(pool_).toEqual(sb.attrs);
        let dev: any;
        let mapping = 0;
        for (const e of elems) {
          if (e.name === 'device') {
            if (dev) expect(mapping, `device ${dev.dev_id} runs`).toBe(dev.mappings.length);
            dev = devices.shift();
            const { mappings: _, ...attrs } = dev;
            expect(attrs).toEqual(e.attrs);
            mapping = 0;
          } else {
            const a = e.attrs;
            const run = e.name === 'single_mapping'
              ? { origin_begin: a.origin_block, data_begin: a.data_block, length: '1', time: a.time }
              : a;
            expect(dev.mappings[mapping++]).toEqual(run);
          }
        }
        if (dev) expect(mapping).toBe(dev.mappings.length);
        expect(devices).toEqual([]);
      }
    }
  });

  it('keeps every digit of u64s past 2^53', () => {
    const ours = runOurs('thin_dump', ['--format', 'json', pools.find((p) => p.name === 'extreme')!.path]);
    expect(ours.stdout).toContain('"transaction": 18446744073709551615');
    expect(ours.stdout).toContain('"origin_begin": 18446744073709551000');
  });
});

describe('thin_delta --format json', () => {
  it('the reference XML ranges, plain and verbose', () => {
    for (const pool of pools.filter((p) => ['snapshot-chains', 'shared', 'tmeta', 'huge-offset'].includes(p.name))) {
      const ids = devIdsOf(pool.path);
      for (const [a, b] of [[ids[0], ids[1]], [ids[1], ids[ids.length - 1]]]) {
        for (const verbose of [[], ['--verbose']]) {
          const args = [...verbose, '--snap1', String(a), '--snap2', String(b), pool.path];
          const ref = runReference('thin_delta', args);
          const ours = runOurs('thin_delta', ['--format', 'json', ...args]);
          expect(ours.status).toBe(0);
          const doc = parseExact(ours.stdout);
          const elems = xmlElements(ref.stdout);
          expect(doc.superblock).toEqual(elems.shift()!.attrs);
          expect(doc.diff.left).toBe(String(a));
          expect(doc.diff.right).toBe(String(b));
          elems.shift(); // <diff>
          let kind = '';
          const expected = [];
          for (const e of elems) {
            if (e.name !== 'range') {
              if (verbose.length) kind = e.name;
              else expected.push({ type: e.name, ...e.attrs });
              continue;
            }
            const { data_begin, left_data_begin, right_data_begin, ...rest } = e.attrs;
            const data = kind === 'different' ? { left_data_begin, right_data_begin }
              : kind === 'left_only' ? { left_data_begin: data_begin }
              : kind === 'right_only' ? { right_data_begin: data_begin }
              : { left_data_begin: data_begin, right_data_begin: data_begin };
            expected.push({ type: kind, ...rest, ...data });
          }
          expect(doc.diff.ranges, `${pool.name} ${args.join(' ')}`).toEqual(expected);
        }
      }
    }
  });
});

describe('thin_ls --format json', () => {
  const ALL = 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,' +
    'MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME';

  it('the reference table, cell for cell; --format json alone gives the default fields', () => {
    for (const pool of pools) {
      for (const [fields, ours] of [[ALL, `json,${ALL}`], ['DEV,MAPPED,CREATE_TIME,SNAP_TIME', 'json']]) {
        const ref = runReference('thin_ls', ['-o', fields, pool.path]);
        const got = runOurs('thin_ls', ['--format', ours, pool.path]);
        expect(got.status).toBe(ref.status);
        if (ref.status !== 0) continue;
        const rows = ref.stdout.trimEnd().split('\n').map((l) => l.trim().split(/ +/));
        const header = rows.shift()!.map((h) => h.toLowerCase());
        const expected = rows.map((cells) => Object.fromEntries(cells.map((c, i) => [header[i], c])));
        expect(parseExact(got.stdout).devices, pool.name).toEqual(expected);
      }
    }
  });
});
