// The fuzz campaign's CI share (`npm run fuzz` runs as many cases as asked; docs/fuzz.md), and
// the mutation library it rests on, checked against the reference tools.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FAMILIES, formatReport, mutationsOf, runCampaign } from './support/fuzz/campaign.js';
import { BLOCK_ROLES, ImageMap, mapImage } from './support/fuzz/image-map.js';
import { BINARY_MUTATIONS, mutateImage } from './support/fuzz/mutate.js';
import { XML_MUTATIONS, mutateXml } from './support/fuzz/mutate-xml.js';
import { ProcessResult, crashOf } from './support/fuzz/processes.js';
import { Rand, caseSeed } from './support/fuzz/random.js';
import { countMappings, countTrueMappings, mappingsOf } from './support/dump-mappings.js';
import { runReference, tempDir, unpackKernelImage } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
/** Every (family, mutation) pair comes round once per this many cases. */
const ROUND = FAMILIES.length * BINARY_MUTATIONS.length;
// Two rounds: "a few hundred" cases, each pair twice with different draws.
const CI_CASES = Number(process.env.FUZZ_CI_CASES ?? 2 * ROUND);
const CI_SEED = Number(process.env.FUZZ_CI_SEED ?? 1);

let dir: string;
let image: string;
let map: ImageMap;
beforeAll(() => {
  dir = tempDir('thin-fuzz-test-');
  image = unpackKernelImage('tmeta_with_shared_internals_and_leaves', path.join(dir, 'source.bin'));
  map = mapImage(image);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function mutatedFile(kind: (typeof BINARY_MUTATIONS)[number], seed: number): { file: string; notes: string[] } {
  const m = mutateImage(fs.readFileSync(image), map, kind, new Rand(seed));
  const file = path.join(dir, `${kind}-${seed}.bin`);
  fs.writeFileSync(file, m.image);
  return { file, notes: m.notes };
}

describe('mutations', () => {
  test('the same seed gives the same bytes; another seed other bytes', () => {
    const source = fs.readFileSync(image);
    for (const kind of BINARY_MUTATIONS) {
      const a = mutateImage(source, map, kind, new Rand(caseSeed(7, 3)));
      const b = mutateImage(source, map, kind, new Rand(caseSeed(7, 3)));
      expect(a.image.equals(b.image), kind).toBe(true);
      expect(a.notes).toEqual(b.notes);
      const others = [4, 5, 6, 8].map((n) => mutateImage(source, map, kind, new Rand(caseSeed(7, n))).image);
      expect(others.some((o) => !o.equals(a.image)), kind).toBe(true);
    }
    const xml = fs.readFileSync(path.join(ROOT, 'testdata', 'small-pool.xml'));
    for (const kind of XML_MUTATIONS) {
      const a = mutateXml(xml, kind, new Rand(caseSeed(7, 3)));
      expect(a.xml.equals(mutateXml(xml, kind, new Rand(caseSeed(7, 3))).xml), kind).toBe(true);
      expect(a.xml.equals(xml), kind).toBe(false);
    }
  });

  test('the image map finds the blocks the pool lives in: zeroing any of them fails the reference thin_check', () => {
    // This image has no metadata snapshot: every other kind of block is there.
    for (const role of BLOCK_ROLES.filter((r) => r !== 'held-superblock')) {
      const blocks = map.byRole.get(role) ?? [];
      expect(blocks.length, role).toBeGreaterThan(0);
      const block = blocks[blocks.length >> 1];
      const bytes = fs.readFileSync(image);
      bytes.fill(0, block * 4096, (block + 1) * 4096);
      const file = path.join(dir, `zero-${role}.bin`);
      fs.writeFileSync(file, bytes);
      expect(runReference('thin_check', [file]).status, `${role} block ${block}`).not.toBe(0);
    }
  });

  test('a flip leaves a bad checksum the reference reports; a re-sealed one does not', () => {
    let unsealed = 0;
    let sealed = 0;
    for (let seed = 1; seed < 200 && (unsealed < 3 || sealed < 3); seed++) {
      for (const kind of ['flip', 'flip-resealed'] as const) {
        const m = mutatedFile(kind, seed);
        if (!/(device-leaf|details-node|superblock) block/.test(m.notes[0])) continue;
        const stderr = runReference('thin_check', [m.file]).stderr;
        if (kind === 'flip') {
          expect(stderr, m.notes[0]).toMatch(/checksum/);
          unsealed++;
        } else {
          expect(stderr, m.notes[0]).not.toMatch(/checksum/);
          sealed++;
        }
      }
    }
    expect(Math.min(unsealed, sealed)).toBeGreaterThanOrEqual(3);
  });

  test('truncation cuts the image; swaps move whole blocks', () => {
    const source = fs.readFileSync(image);
    for (let seed = 1; seed < 20; seed++) {
      expect(mutateImage(source, map, 'truncate', new Rand(seed)).image.length).toBeLessThan(source.length);
      const swapped = mutateImage(source, map, 'swap', new Rand(seed)).image;
      const changed = [];
      for (let b = 0; b < source.length / 4096; b++) {
        if (!swapped.subarray(b * 4096, (b + 1) * 4096).equals(source.subarray(b * 4096, (b + 1) * 4096))) changed.push(b);
      }
      expect(changed.length).toBe(2);
      expect(swapped.subarray(changed[0] * 4096, changed[0] * 4096 + 4096).equals(source.subarray(changed[1] * 4096, changed[1] * 4096 + 4096))).toBe(true);
    }
  });
});

describe('recovered mappings', () => {
  test('only mappings the source held count: one pointed elsewhere does not', () => {
    const dump = runReference('thin_dump', [image]).stdout;
    const truth = new Set(mappingsOf(dump));
    expect(truth.size).toBe(countMappings(dump));
    expect(countTrueMappings(dump, truth)).toBe(truth.size);
    // This pool's mappings are all ranges: the first moved one data block along.
    const first = /(<range_mapping origin_begin="\d+" data_begin=")(\d+)(" length=")(\d+)/.exec(dump)!;
    const wrong = dump.replace(first[0], `${first[1]}${Number(first[2]) + 1}${first[3]}${first[4]}`);
    expect(countMappings(wrong)).toBe(truth.size);
    expect(countTrueMappings(wrong, truth)).toBe(truth.size - Number(first[4]));
  });
});

describe('crash detection', () => {
  const result = (stderr: string, status: number | null = 1, signal: NodeJS.Signals | null = null): ProcessResult =>
    ({ command: 'x', status, signal, stdout: Buffer.alloc(0), stderr, timedOut: false, ms: 1 });

  test('an error meant for the user is not a crash', () => {
    expect(crashOf(result('Error: bad checksum in superblock\n    at readSuperblock (x.js:1:1)\nthin_check: bad checksum in superblock\n'))).toBeNull();
    expect(crashOf(result('examining superblock\n  superblock is corrupt\n'))).toBeNull();
  });

  test('a bug is: its error class, its text in a one-line message, an uncaught exception, a signal', () => {
    expect(crashOf(result("TypeError: Cannot read properties of undefined (reading 'x')\n    at f (x.js:1:1)\nthin_dump: Cannot read properties of undefined (reading 'x')\n"))).toMatch(/TypeError/);
    expect(crashOf(result('RangeError [ERR_OUT_OF_RANGE]: The value of "offset" is out of range.\n    at f (x.js:1:1)\n'))).toMatch(/RangeError/);
    expect(crashOf(result('thin_repair: block NaN is beyond the end\n'))).toMatch(/NaN/);
    expect(crashOf(result('file:///x.js:3\n  throw e;\n  ^\n\nError: boom\n    at f (x.js:1:1)\n\nNode.js v20.0.0\n'))).toMatch(/uncaught/);
    expect(crashOf(result('', null, 'SIGSEGV'))).toMatch(/SIGSEGV/);
  });
});

describe('campaign', () => {
  test(`${CI_CASES} seeded cases through every tool family: no crash, hang, changed input or looser verdict`, async () => {
    const report = await runCampaign({
      root: ROOT,
      seed: CI_SEED,
      cases: Array.from({ length: CI_CASES }, (_, i) => i),
      workDir: path.join(dir, 'campaign'),
    });
    const text = formatReport(report);
    console.log(text);
    for (const f of FAMILIES) {
      for (const m of mutationsOf(f)) expect(report.results.some((r) => r.family === f && r.mutation === m), `${f} x ${m}`).toBe(true);
    }
    expect(report.results.flatMap((r) => r.findings.map((f) => `[${r.id}] ${f.kind}: ${f.detail}`)), text).toEqual([]);
  }, 900_000);
});
