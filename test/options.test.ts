// One definition of every option's value range: each bad value is the same one-line error in
// every tool that takes the option, exit 1, before any work (nothing written, at once). Values at
// the ends of the ranges work as the reference's do. Sizes the output cannot hold are refused at
// once, saying how many metadata blocks are needed; conflicting options are refused, and the ones
// --repair can honour are honoured.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RunResult, runOurs, runReference, runUpstream, sha256, tempDir } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const dir = tempDir('thin-options-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => path.join(dir, name);

const U64_MAX = '18446744073709551615';
/** Entries of one space-map bitmap block (FORMAT.md): a pool needs a bitmap per this many data blocks. */
const ENTRIES_PER_BITMAP = 16320;

let metadata: string;
let xml: string;
let output: string;
let seq = 0;

/** A sized output holding a valid pool, so a refused run that wrote anything shows. */
function pooledOutput(): string {
  const p = at(`out-${seq++}.bin`);
  fs.copyFileSync(metadata, p);
  return p;
}

beforeAll(() => {
  metadata = at('pool.bin');
  fs.writeFileSync(metadata, gunzipSync(fs.readFileSync(path.join(ROOT, 'testdata', 'small-pool.bin.gz'))));
  xml = at('pool.xml');
  fs.copyFileSync(path.join(ROOT, 'testdata', 'small-pool.xml'), xml);
  output = pooledOutput();
});

function oneLine(tool: string, r: RunResult): string {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0].startsWith(`${tool}: `), lines[0]).toBe(true);
  return lines[0].slice(tool.length + 2);
}

/** Runs one of ours and how long it took, in milliseconds. */
function timed(tool: string, args: string[]): RunResult & { ms: number } {
  const start = process.hrtime.bigint();
  const r = runOurs(tool, args);
  return { ...r, ms: Number(process.hrtime.bigint() - start) / 1e6 };
}

/** Refused before any work: within half a second of the time the tool takes to print its version. */
function expectAtOnce(tool: string, ms: number): void {
  const startup = timed(tool, ['-V']).ms;
  expect(ms - startup, `${ms} ms against ${startup} ms to start`).toBeLessThan(500);
}

/** Where an invocation's options go: the tools that take the superblock overrides. */
const OVERRIDE_TAKERS: { name: string; tool: string; args: (opts: string[]) => string[] }[] = [
  { name: 'thin_restore', tool: 'thin_restore', args: (o) => ['-i', xml, '-o', output, ...o] },
  { name: 'thin_repair', tool: 'thin_repair', args: (o) => ['-i', metadata, '-o', output, ...o] },
  { name: 'thin_dump', tool: 'thin_dump', args: (o) => [metadata, ...o] },
  { name: 'thin_dump --repair', tool: 'thin_dump', args: (o) => ['--repair', metadata, ...o] },
];

const BAD_VALUES: { option: string; values: string[] }[] = [
  { option: '--transaction-id', values: ['x', '-1', '0x10', '', '18446744073709551616'] },
  { option: '--data-block-size', values: ['0', '100', '2097280', '4194304', '18446744073709551616'] },
  { option: '--nr-data-blocks', values: ['1e6', '18446744073709551616'] },
];

describe.each(BAD_VALUES.flatMap(({ option, values }) => values.map((value) => ({ option, value }))))(
  '$option $value',
  ({ option, value }) => {
    it('is the same one-line error in every tool, before any work', () => {
      const messages = new Set<string>();
      for (const taker of OVERRIDE_TAKERS) {
        const before = sha256(output);
        const r = timed(taker.tool, taker.args([option, value]));
        const message = oneLine(taker.tool, r);
        expect(message.startsWith(`${option}: `), `${taker.name}: ${message}`).toBe(true);
        expect(r.status).toBe(1);
        expect(r.stdout).toBe('');
        expect(sha256(output)).toBe(before);
        messages.add(message);
      }
      expect([...messages]).toHaveLength(1);
    });
  },
);

describe('values of other options', () => {
  it.each([
    ['thin_dump', '--dev-id', ['x', '-1', '1.5', '18446744073709551616']],
    ['thin_dump', '--metadata-snap', ['x', '-1', '18446744073709551616']],
    ['thin_check', '--override-mapping-root', ['x', '-1', '18446744073709551616']],
    ['thin_check', '--override-details-root', ['x', '-1']],
  ] as const)('%s %s: a one-line error naming the option', (tool, option, values) => {
    for (const value of values) {
      const args = option === '--metadata-snap' ? [`${option}=${value}`, metadata] : [option, value, metadata];
      const r = runOurs(tool, args);
      expect(oneLine(tool, r).startsWith(`${option}: `), r.stderr).toBe(true);
      expect([r.status, r.stdout]).toEqual([1, '']);
    }
  });

  it('-m<block> is --metadata-snap=<block>', () => {
    expect(oneLine('thin_dump', runOurs('thin_dump', ['-m5x', metadata]))).toBe(
      oneLine('thin_dump', runOurs('thin_dump', ['--metadata-snap=5x', metadata])),
    );
  });
});

describe('values at the ends of the ranges work as the reference', () => {
  it.each([
    ['--transaction-id', U64_MAX],
    ['--transaction-id', '9007199254740993'],
    ['--nr-data-blocks', U64_MAX],
    ['--data-block-size', '2097152'],
    ['--dev-id', U64_MAX],
    ['--dev-id', '0'],
  ])('thin_dump %s %s', (option, value) => {
    const args = [metadata, option, value];
    const ours = runOurs('thin_dump', args);
    expect(ours.stderr).toBe('');
    expect(ours.stdout).toBe(runReference('thin_dump', args).stdout);
  });

  it.each([
    [['--transaction-id', U64_MAX]],
    [['--transaction-id', '9007199254740993', '--data-block-size', '2097152']],
    [['--data-block-size', '128', '--nr-data-blocks', '16320000']],
  ])('thin_restore and thin_repair %o', (overrides) => {
    for (const [tool, input] of [['thin_restore', xml], ['thin_repair', metadata]]) {
      const ours = pooledOutput();
      const r = runOurs(tool, ['-i', input, '-o', ours, ...overrides]);
      expect(r.status, r.stderr).toBe(0);
      const theirs = pooledOutput();
      expect(runReference(tool, ['-i', input, '-o', theirs, ...overrides]).status).toBe(0);
      expect(runReference('thin_check', [ours]).status).toBe(0);
      expect(runReference('thin_dump', [ours]).stdout).toBe(runReference('thin_dump', [theirs]).stdout);
    }
  });
});

describe('sizes the output cannot hold are refused at once, with the size needed', () => {
  const NEEDS = /(\d+) data blocks need at least (\d+) metadata blocks .*, the output has (\d+)/;

  /** The error's figures, checked against the format: a bitmap per 16320 data blocks at least. */
  function expectNeeds(message: string, nrDataBlocks: bigint, outputBlocks: number): void {
    const m = NEEDS.exec(message);
    expect(m, message).not.toBeNull();
    expect(BigInt(m![1])).toBe(nrDataBlocks);
    const bitmaps = (nrDataBlocks + BigInt(ENTRIES_PER_BITMAP - 1)) / BigInt(ENTRIES_PER_BITMAP);
    expect(BigInt(m![2]) >= bitmaps).toBe(true);
    expect(Number(m![3])).toBe(outputBlocks);
  }

  it.each([
    ['thin_repair', () => ['-i', metadata]],
    ['thin_restore', () => ['-i', xml]],
  ] as const)('%s --nr-data-blocks 99999999999999', (tool, input) => {
    const out = pooledOutput();
    const before = sha256(out);
    const r = timed(tool, [...input(), '-o', out, '--nr-data-blocks', '99999999999999']);
    expect(r.status).toBe(1);
    expectNeeds(oneLine(tool, r), 99999999999999n, 1024);
    expectAtOnce(tool, r.ms);
    expect(sha256(out)).toBe(before);
  });

  it('thin_restore of a dump whose nr_data_blocks is 2^40, into 4 MiB', () => {
    const huge = at('huge.xml');
    fs.writeFileSync(huge, fs.readFileSync(xml, 'utf8').replace(/nr_data_blocks="\d+"/, 'nr_data_blocks="1099511627776"'));
    const out = pooledOutput();
    const before = sha256(out);
    const r = timed('thin_restore', ['-i', huge, '-o', out]);
    expect(r.status).toBe(runReference('thin_restore', ['-i', huge, '-o', pooledOutput()]).status);
    expectNeeds(oneLine('thin_restore', r), 1n << 40n, 1024);
    expectAtOnce('thin_restore', r.ms);
    expect(sha256(out)).toBe(before);
  });

  it.each([0, 1, 100_000, 16_320_001])('nr_data_blocks %i without devices: the size named is the size needed', (n) => {
    const empty = at(`empty-${n}.xml`);
    fs.writeFileSync(empty, `<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="${n}">\n</superblock>\n`);
    const sized = (blocks: number) => {
      const p = at(`empty-${n}-${blocks}.bin`);
      fs.writeFileSync(p, '');
      fs.truncateSync(p, blocks * 4096);
      return p;
    };
    const refused = runOurs('thin_restore', ['-i', empty, '-o', sized(0)]);
    const needed = Number(NEEDS.exec(oneLine('thin_restore', refused))![2]);
    expect(runOurs('thin_restore', ['-i', empty, '-o', sized(needed - 1)]).status).toBe(1);
    const exact = sized(needed);
    const r = runOurs('thin_restore', ['-i', empty, '-o', exact]);
    expect(r.status, r.stderr).toBe(0);
    expect(runReference('thin_check', [exact]).status).toBe(0);
  });

  it.each([10_000_000, 16_320_000, 20_000_000, 100_000_000])(
    'nr_data_blocks %i into 4 MiB: the same verdict as the reference',
    (n) => {
      const sized = at(`sized-${n}.xml`);
      fs.writeFileSync(sized, fs.readFileSync(xml, 'utf8').replace(/nr_data_blocks="\d+"/, `nr_data_blocks="${n}"`));
      const ours = pooledOutput();
      const r = runOurs('thin_restore', ['-i', sized, '-o', ours]);
      const ref = runReference('thin_restore', ['-i', sized, '-o', pooledOutput()]);
      expect(r.status, r.stderr).toBe(ref.status);
      if (r.status === 0) expect(runReference('thin_check', [ours]).status).toBe(0);
      else expectNeeds(oneLine('thin_restore', r), BigInt(n), 1024);
    },
  );
});

describe('options that conflict are refused, not ignored, as the 1.x tools refuse them', () => {
  const CONFLICTS: [string, string, string, string[]][] = [
    ['thin_dump', '--repair', '--metadata-snap', ['--repair', '-m']],
    ['thin_dump', '--repair', '--metadata-snap', ['-r', '-m']],
    ['thin_dump', '--repair', '--metadata-snap', ['--repair', '-m5']],
    ['thin_dump', '--repair', '--metadata-snap', ['--repair', '--metadata-snap=5']],
    ['thin_check', '--auto-repair', '--metadata-snap', ['--auto-repair', '-m']],
    ['thin_check', '--auto-repair', '--super-block-only', ['--auto-repair', '--super-block-only']],
    ['thin_check', '--auto-repair', '--skip-mappings', ['--auto-repair', '--skip-mappings']],
    ['thin_check', '--auto-repair', '--ignore-non-fatal-errors', ['--auto-repair', '--ignore-non-fatal-errors']],
    ['thin_check', '--auto-repair', '--override-mapping-root', ['--auto-repair', '--override-mapping-root', '1']],
    ['thin_check', '--auto-repair', '--override-details-root', ['--auto-repair', '--override-details-root', '1']],
    ['thin_check', '--clear-needs-check-flag', '--metadata-snap', ['--clear-needs-check-flag', '-m']],
    ['thin_check', '--clear-needs-check-flag', '--override-mapping-root', ['--clear-needs-check-flag', '--override-mapping-root', '1']],
    ['thin_check', '--clear-needs-check-flag', '--override-details-root', ['--clear-needs-check-flag', '--override-details-root', '1']],
  ];
  it.each(CONFLICTS)('%s: %s with %s', (tool, a, b, flags) => {
    const before = sha256(metadata);
    const r = runOurs(tool, [...flags, metadata]);
    expect([r.status, r.stdout]).toEqual([1, '']);
    expect(oneLine(tool, r)).toBe(`the argument '${a}' cannot be used with '${b}'`);
    expect(sha256(metadata)).toBe(before);
    // 1.x refuses the same pair in these words (exiting 2, which lvm2 reads as "not installed");
    // it has no attached -m<block>.
    if (flags.includes('-m5')) return;
    const upstream = runUpstream(tool, [...flags, metadata]);
    expect(upstream.status).not.toBe(0);
    expect(upstream.stderr).toContain(`error: the argument '${a}' cannot be used with '${b}`);
  });
});

describe('thin_dump --repair honours the options it can', () => {
  it.each([
    [['--dev-id', '2']],
    [['--dev-id', '3', '--dev-id', '0']],
    [['--dev-id', '5']],
    [['--skip-mappings']],
    [['--skip-mappings', '--dev-id', '4']],
    [['--dev-id', '4', '-f', 'human_readable']],
  ])('%o: on sound metadata, what thin_dump prints', (flags) => {
    const ours = runOurs('thin_dump', ['--repair', metadata, ...flags]);
    expect(ours.status, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(runReference('thin_dump', [metadata, ...flags]).stdout);
  });

  it('--dev-id on damaged metadata: that device of the whole salvage', () => {
    const damaged = at('damaged.bin');
    fs.copyFileSync(metadata, damaged);
    const fd = fs.openSync(damaged, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, 0); // the superblock gone
    fs.closeSync(fd);
    const whole = runOurs('thin_dump', ['--repair', damaged, '--data-block-size', '128']);
    expect(whole.status, whole.stderr).toBe(0);
    const lines = whole.stdout.split('\n');
    const device = (id: number) => {
      const start = lines.findIndex((l) => l.startsWith(`  <device dev_id="${id}" `));
      const end = lines.indexOf('  </device>', start);
      return lines.slice(start, end + 1);
    };
    const only3 = runOurs('thin_dump', ['--repair', damaged, '--data-block-size', '128', '--dev-id', '3']);
    expect(only3.stdout).toBe([lines[0], ...device(3), '</superblock>', ''].join('\n'));
  });
});
