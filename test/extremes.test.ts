// Pools at the extremes of the format, through every tool, against the reference tools:
// transaction ids, times and thin-block keys at their maxima (u64 past 2^53 included), device ids
// at 0 and 2^24-1, runs across 2^53, and nr_data_blocks at bitmap boundaries. The reference
// thin_restore writes each pool; our check must pass it, our dumps must equal the reference's,
// and what our restore and repair write must dump identically with the reference and pass both
// reference checkers.
import * as fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { referenceRestore, runOurs, runReference, runUpstream, scratchFiles } from './support/reference.js';

const U64_MAX = '18446744073709551615';
const BITMAP = 16320;

interface Extreme {
  name: string;
  transaction: string;
  time: string;
  nrDataBlocks: number;
  devices: { id: number; transaction: string; creation: string; snap: string; mappings: string[] }[];
}

const single = (thin: string, data: number, time: number) =>
  `<single_mapping origin_block="${thin}" data_block="${data}" time="${time}"/>`;
const range = (thin: string, data: number, length: number, time: number) =>
  `<range_mapping origin_begin="${thin}" data_begin="${data}" length="${length}" time="${time}"/>`;

function xmlOf(e: Extreme): string {
  const lines = [
    `<superblock uuid="" time="${e.time}" transaction="${e.transaction}" flags="0" version="2" data_block_size="128" nr_data_blocks="${e.nrDataBlocks}">`,
  ];
  for (const d of e.devices) {
    const mapped = d.mappings.reduce((n, m) => n + Number(/length="(\d+)"/.exec(m)?.[1] ?? 1), 0);
    lines.push(`  <device dev_id="${d.id}" mapped_blocks="${mapped}" transaction="${d.transaction}" creation_time="${d.creation}" snap_time="${d.snap}">`);
    for (const m of d.mappings) lines.push(`    ${m}`);
    lines.push('  </device>');
  }
  lines.push('</superblock>');
  return `${lines.join('\n')}\n`;
}

const TIME_MAX = 0xffffff;
const extremes: Extreme[] = [
  {
    name: 'every u64 at 2^64-1, dev_id 2^24-1, times at their maxima',
    transaction: U64_MAX,
    time: '4294967295',
    nrDataBlocks: BITMAP + 1,
    devices: [
      { id: 0, transaction: '0', creation: '0', snap: '0', mappings: [single('0', 0, 0)] },
      {
        id: 2 ** 24 - 1, transaction: U64_MAX, creation: '4294967295', snap: '4294967295',
        mappings: [
          range('18446744073709551610', BITMAP - 5, 5, TIME_MAX),
          single(U64_MAX, BITMAP, TIME_MAX),
        ],
      },
    ],
  },
  {
    name: 'runs across 2^53 and keys just past it, nr_data_blocks one bitmap exactly',
    transaction: '9007199254740993',
    time: String(TIME_MAX),
    nrDataBlocks: BITMAP,
    devices: [
      {
        id: 1, transaction: '9007199254740992', creation: '3', snap: String(TIME_MAX),
        mappings: [
          range('9007199254740990', 100, 4, 7),
          single('9007199254740995', 200, TIME_MAX),
          // 300 mappings in scattered runs past 2^53: several leaves of keys beyond doubles.
          ...Array.from({ length: 100 }, (_, i) => range(String(9007199254741000n + BigInt(i) * 10n), 1000 + i * 3, 3, i)),
          single('18446744073709551000', BITMAP - 1, 1),
        ],
      },
      { id: 2, transaction: '0', creation: '0', snap: '0', mappings: [] },
    ],
  },
  {
    name: 'nr_data_blocks just below two bitmaps, the last data block mapped',
    transaction: '4294967296',
    time: '16777216',
    nrDataBlocks: 2 * BITMAP - 1,
    devices: [
      {
        id: 7, transaction: '4294967296', creation: '16777216', snap: '16777216',
        mappings: [range('4294967290', 2 * BITMAP - 11, 10, TIME_MAX)],
      },
    ],
  },
];

const files = scratchFiles('thin-extremes-');
afterAll(() => files.remove());

describe.each(extremes)('$name', (e) => {
  const xml = files.writeXml(xmlOf(e));
  const image = files.file('ref.bin');
  referenceRestore(xml, image, 4);
  const refDump = runReference('thin_dump', [image]);

  it('the reference takes it: both checkers pass, the dump carries every value', () => {
    expect(refDump.status).toBe(0);
    expect(refDump.stdout).toContain(`transaction="${e.transaction}"`);
    expect(runReference('thin_check', [image]).status).toBe(0);
    expect(runUpstream('thin_check', [image]).status).toBe(0);
  });

  it('thin_check passes it and reports the transaction id exactly', () => {
    const r = runOurs('thin_check', [image]);
    expect(r.status, r.stderr).toBe(0);
    // The first line only: 0.9.0's METADATA_FREE_BLOCKS is nr_blocks - 1, ours the real count.
    const firstLine = (out: string) => out.split('\n')[0];
    expect(firstLine(r.stdout)).toBe(firstLine(runReference('thin_check', [image]).stdout));
    expect(firstLine(r.stdout)).toBe(`TRANSACTION_ID=${e.transaction}`);
  });

  it('thin_dump prints the reference bytes, xml and human readable', () => {
    expect(runOurs('thin_dump', [image]).stdout).toBe(refDump.stdout);
    const hr = runOurs('thin_dump', ['-f', 'human_readable', image]);
    expect(hr.stdout).toBe(runReference('thin_dump', ['-f', 'human_readable', image]).stdout);
  });

  it('thin_restore writes what dumps identically and passes both reference checkers', () => {
    const input = files.writeXml(refDump.stdout);
    const out = files.emptyOutput(4 << 20);
    const r = runOurs('thin_restore', ['-i', input, '-o', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(runReference('thin_dump', [out]).stdout).toBe(refDump.stdout);
    expect(runReference('thin_check', [out]).status).toBe(0);
    expect(runUpstream('thin_check', [out]).status).toBe(0);
  });

  it('thin_repair and thin_dump --repair keep every value', () => {
    const out = files.emptyOutput(4 << 20);
    const r = runOurs('thin_repair', ['-i', image, '-o', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(runReference('thin_dump', [out]).stdout).toBe(refDump.stdout);
    expect(runReference('thin_check', [out]).status).toBe(0);
    expect(runOurs('thin_dump', ['--repair', image]).stdout).toBe(refDump.stdout);
  });

  it('the shared form round-trips through our restore', () => {
    const shared = runOurs('thin_dump', ['--shared-subtrees', image]);
    expect(shared.status, shared.stderr).toBe(0);
    const out = files.emptyOutput(4 << 20);
    expect(runOurs('thin_restore', ['-i', files.writeXml(shared.stdout), '-o', out]).status).toBe(0);
    expect(runReference('thin_dump', [out]).stdout).toBe(refDump.stdout);
  });
});

it('a copy of an extreme image is never changed by check or dump', () => {
  const xml = files.writeXml(xmlOf(extremes[0]));
  const image = files.file('ro.bin');
  referenceRestore(xml, image, 4);
  const before = fs.readFileSync(image);
  runOurs('thin_check', [image]);
  runOurs('thin_dump', [image]);
  runOurs('thin_dump', ['-r', image]);
  expect(fs.readFileSync(image).equals(before)).toBe(true);
});
