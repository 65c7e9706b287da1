// thin_metadata_size must print the same stdout and exit with the same status as the reference
// 0.9.0 tool for every argument combination: scripts parse its output. The reference runs here,
// once per combination; ours runs in-process for the big table and through bin/ for a sample.
import { describe, expect, it } from 'vitest';
import { rng } from './support/generate.js';
import { runOurs, runReference } from './support/reference.js';
import {
  MetadataSizeError,
  estimateMetadataSize,
  formatEstimate,
  helpText,
  parseMetadataSizeArgs,
} from '../src/tools/metadata-size.js';

/** What the CLI does, minus the process: stdout and exit status. */
function oursInProcess(argv: string[]): { stdout: string; status: number } {
  try {
    const cmd = parseMetadataSizeArgs(argv);
    if (cmd.kind === 'help') return { stdout: helpText('thin_metadata_size'), status: 0 };
    if (cmd.kind === 'version') return { stdout: 'version\n', status: 0 };
    return { stdout: formatEstimate('thin_metadata_size', cmd.request, estimateMetadataSize(cmd.request)), status: 0 };
  } catch (e) {
    if (e instanceof MetadataSizeError) return { stdout: '', status: 1 };
    throw e;
  }
}

const BLOCK_SIZES = [
  '64k', '128k', '256k', '512k', '1m', '2m', '4m', '8m', '16m', '32m', '64m', '128m', '256m', '512m', '1g',
  '128', '256s', '65536b', '64kib', '64kibibytes', '1gibi', '2097152', '1k', '8', '1', '4096b',
];
const POOL_SIZES = [
  '1g', '10g', '100g', '1t', '16t', '1p', '1P', '5T', '1000G', '123456789', '999999999999', '3e', '1E',
  '2097153', '7m', '1000000000000b', '16e', '1z', '1Y', '99999999999999999999999',
];
const MAX_THINS = ['1', '2', '1000', '1k', '1K', '1M', '1m', '65535', '1000000', '17', '1g', '1e', '18446744073709551615'];
const UNITS = [...'bskKmMgGtTpPeEzZyY', '', 'sectors', 'meg', 'giga', 'by', 'sector', 'kibibyte'];
const NUMERIC = [[], ['-n'], ['-nshort'], ['-nlong'], ['-ns'], ['-nl'], ['--numeric-only'], ['--numeric-only=short'],
  ['--numeric-only=lo'], ['-n', 'long']];

function combo(block: string, pool: string, thins: string, unit: string | undefined, numeric: string[]): string[] {
  return ['-b', block, '-s', pool, '-m', thins, ...(unit === undefined ? [] : ['-u', unit]), ...numeric];
}

function generatedCombinations(): string[][] {
  const out: string[][] = [];
  // Each dimension swept with the others at typical values.
  for (const b of BLOCK_SIZES) out.push(combo(b, '1t', '1000', undefined, []));
  for (const s of POOL_SIZES) out.push(combo('64k', s, '1000', 'm', []), combo('1m', s, '10', undefined, ['-n']));
  for (const m of MAX_THINS) out.push(combo('64k', '1t', m, undefined, []), combo('256k', '10t', m, 'G', ['-nlong']));
  for (const u of UNITS) {
    out.push(combo('64k', '1t', '1000', u, []), combo('512k', '100g', '5', u, ['-nshort']));
  }
  for (const n of NUMERIC) out.push(combo('64k', '1t', '1000', 'g', n));
  // And a seeded random sample of the whole cross product.
  const rand = rng(20260101);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  for (let i = 0; i < 300; i++) {
    out.push(combo(pick(BLOCK_SIZES), pick(POOL_SIZES), pick(MAX_THINS), pick([undefined, ...UNITS]), pick(NUMERIC)));
  }
  return out;
}

const SPELLINGS: string[][] = [
  ['-b64k', '-s1t', '-m1000'],
  ['--block-size=1g', '--pool-size=1P', '--max-thins=1M', '--unit=G', '--numeric-only'],
  ['--block-size=1gibi', '--pool-size=1petabytes', '--max-thins=1mega', '--unit=G', '--numeric-only=short'],
  ['--block', '64k', '--pool', '1t', '--max', '1M', '--u', 'm'],
  ['-u', 'g', '-b', '128', '-s', '1t', '-m', '1k'], // unit-less sizes echoed with the output unit
  ['-b', '0', '-b', '64k', '-s', '1t', '-m', '1'],
  ['-b', '64k', 'stray', '-s', '1t', '-m', '1'],
  ['-b', '64k', '-s', '1t', '-m', '1', '--', '-x'],
  ['-u', '', '-b', '64k', '-s', '1t', '-m', '1'],
  ['-b', '64k', '-s', '1t', '-m', '1', '-u', 'm', '-u', 'k'],
  ['-h'], ['--help'], ['--he'], ['-b', '64k', '-h'], ['-hx'],
];

const BAD_INPUT: string[][] = [
  [],
  ['-s', '1t', '-m', '1000'], // no block size
  ['-b', '64k', '-m', '1000'], // no pool size
  ['-b', '64k', '-s', '1t'], // no max thins
  ['-b', '96k', '-s', '1t', '-m', '1'], // not a power of two
  ['-b', '3', '-s', '1t', '-m', '1'],
  ['-b', '192k', '-s', '1t', '-m', '1'],
  ['-b', '2g', '-s', '1g', '-m', '1'], // pool not larger than block
  ['-b', '64k', '-s', '64k', '-m', '1'],
  ['-b', '64q', '-s', '1t', '-m', '1'], // unknown units
  ['-b', '64k', '-s', '1x', '-m', '1'],
  ['-b', '64k', '-s', '1t', '-m', '1q'],
  ['-b', '64k', '-s', '1t', '-m', '1', '-u', 'x'],
  ['-b', '64k', '-s', '1t', '-m', '1', '-u', 'bogus'],
  ['-b', '64k', '-s', '1t', '-m', '1', '-u', 'bytesx'],
  ['-b', '6k4', '-s', '1t', '-m', '1'],
  ['-b', '-5', '-s', '1t', '-m', '1'],
  ['-b', '+5', '-s', '1t', '-m', '1'],
  ['-b', '', '-s', '1t', '-m', '1'],
  ['-b', 'k', '-s', '1t', '-m', '1'],
  ['-b', '64k', '-b', '64k', '-s', '1t', '-m', '1'], // given twice
  ['-b', '64k', '-s', '1t', '-m', '1', '-n', '-n'],
  ['-b', '64k', '-s', '1t', '-m', '1', '-nx'],
  ['-b', '64k', '-s', '1t', '-m', '1', '--numeric-only='],
  ['-b', '64k', '-s', '1t', '-m', '1', '-x'],
  ['-b', '64k', '-s', '1t', '-m', '1', '--bogus'],
  ['-b', '64k', '-s', '1t', '-m', '1', '--help=1'],
  ['-b'],
  ['-b', '64k', '-s', '1t', '--max-thins'],
  ['-x', '-h'],
  ['-b', '64q', '-h'],
];

describe('thin_metadata_size against the reference', () => {
  const cases = [...generatedCombinations(), ...SPELLINGS, ...BAD_INPUT];

  it(`matches stdout and exit status on ${cases.length} argument combinations`, () => {
    const mismatches: string[] = [];
    for (const argv of cases) {
      const ref = runReference('thin_metadata_size', argv);
      const ours = oursInProcess(argv);
      if (ours.stdout !== ref.stdout || ours.status !== ref.status) {
        mismatches.push(`${JSON.stringify(argv)}: ours ${ours.status} ${JSON.stringify(ours.stdout)}, ` +
          `reference ${ref.status} ${JSON.stringify(ref.stdout)}`);
      }
    }
    expect(mismatches).toEqual([]);
  });

  it('covers successes and failures in the table', () => {
    const statuses = new Set(cases.map((argv) => runReference('thin_metadata_size', argv).status));
    expect(statuses).toEqual(new Set([0, 1]));
  });

  it('behaves the same through bin/, with one-line errors on stderr', () => {
    const sample = [
      ['-b', '64k', '-s', '1t', '-m', '1000'],
      ['-b', '128', '-s', '1t', '-m', '1', '-u', 'm', '-n', 'short'],
      ['--block-size=1g', '--pool-size=1P', '--max-thins=1M', '--unit=G', '-nlong'],
      ['-h'],
      ['-b', '96k', '-s', '1t', '-m', '1'],
      ['-b', '64k', '-s', '1t', '-m', '1', '-u', 'x'],
      ['-b', '64k', '-s', '1t', '-m', '1', '-x'],
      ['-s', '1t'],
    ];
    for (const argv of sample) {
      const ref = runReference('thin_metadata_size', argv);
      const ours = runOurs('thin_metadata_size', argv);
      expect({ argv, stdout: ours.stdout, status: ours.status }).toEqual({ argv, stdout: ref.stdout, status: ref.status });
      if (ours.status !== 0) {
        expect(ours.stderr.trimEnd().split('\n')).toHaveLength(1);
        expect(ours.stderr).toMatch(/^thin_metadata_size: /);
      }
    }
  });

  it('prints a version and exits 0', () => {
    const ours = runOurs('thin_metadata_size', ['-V']);
    expect(ours.status).toBe(0);
    expect(ours.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });

  it('accepts the 1.x unit spellings the 0.9 tool rejects, with the same numbers', () => {
    const pairs: [string, string][] = [['KiB', 'k'], ['MiB', 'm'], ['GiB', 'g'], ['TiB', 't'], ['kB', 'K'],
      ['MB', 'M'], ['GB', 'G'], ['TB', 'T'], ['PB', 'P'], ['EiB', 'e'], ['exbibyte', 'e']];
    for (const [spelling, letter] of pairs) {
      const ours = oursInProcess(['-b', '64KiB', '-s', `1${spelling}`, '-m', '10', '-u', spelling]);
      const ref = runReference('thin_metadata_size', ['-b', '64k', '-s', `1${letter}`, '-m', '10', '-u', letter]);
      expect({ spelling, ...ours }).toEqual({ spelling, stdout: ref.stdout, status: ref.status });
    }
  });
});
