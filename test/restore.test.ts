// thin_restore end to end, with the reference tools as the oracle: what we write must pass the
// reference thin_check and dump (reference thin_dump) to exactly the XML we restored.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, BlockReader, BlockWriter } from '../src/io/block-io.js';
import { decodeSpaceMapRoot } from '../src/pdata/space-map/root.js';
import { decodeSuperblock } from '../src/thin/superblock.js';
import { MetadataWriter } from '../src/thin/write-metadata.js';
import { generateXml } from './support/generate.js';
import { KERNEL_IMAGES, referenceRestore, runOurs, runReference, scratchFiles } from './support/reference.js';

const scratch = scratchFiles('thin-restore-');
afterAll(() => scratch.remove());
const { dir, writeXml } = scratch;
const emptyOutput = (sizeBytes: number) => scratch.emptyOutput(sizeBytes, 'out.bin');

/**
 * Our restore, then the reference's verdict and dump of what we wrote, and our thin_check's
 * verdict: stricter than 0.9.0's, it also catches leaked data blocks (counted, unreferenced).
 */
function restoreAndJudge(xmlPath: string, sizeBytes = 8 << 20, extra: string[] = []) {
  const out = emptyOutput(sizeBytes);
  const ours = runOurs('thin_restore', ['-i', xmlPath, '-o', out, ...extra]);
  const check = runReference('thin_check', [out]);
  const strictCheck = runOurs('thin_check', [out]);
  const dump = runReference('thin_dump', [out]);
  return { out, ours, check, strictCheck, dump };
}

/** The XML the reference tools make of `xml`: restored and dumped by them. */
function referenceXml(xml: string): string {
  const meta = emptyOutput(0);
  referenceRestore(writeXml(xml), meta);
  const r = runReference('thin_dump', [meta]);
  expect(r.status).toBe(0);
  return r.stdout;
}

function metadataAllocated(out: string): number {
  const io = new BlockReader(out);
  try {
    return Number(decodeSpaceMapRoot(decodeSuperblock(io.read(0)).metadataSpaceMapRoot).nrAllocated);
  } finally {
    io.close();
  }
}

describe('round trip through the reference tools', () => {
  const cases = [
    { seed: 1, dataBlockSize: 128 },
    { seed: 2, dataBlockSize: 1024, hugeOffset: true },
    { seed: 3, dataBlockSize: 2097152, origins: 2 },
    { seed: 4, dataBlockSize: 256, snapshotsPerOrigin: 6 },
  ];
  it.each(cases)('generated metadata %o', (c) => {
    const xml = referenceXml(
      generateXml({ mappingsPerOrigin: 3000, deleteSome: true, emptyDevices: 2, nrDataBlocks: 1 << 17, ...c }),
    );
    const { ours, check, strictCheck, dump } = restoreAndJudge(writeXml(xml));
    expect(ours.stderr).toBe('');
    expect(ours.status).toBe(0);
    expect(check.status, check.stderr).toBe(0);
    expect(strictCheck.status, strictCheck.stderr).toBe(0);
    expect(dump.stdout).toBe(xml);
  });

  const dumps = fs.readdirSync(KERNEL_IMAGES).filter((f) => /\.thin_dump\.out(\.gz)?$/.test(f));
  it.each(dumps)('kernel image dump %s', (name) => {
    const raw = fs.readFileSync(path.join(KERNEL_IMAGES, name));
    const xml = (name.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8');
    if (xml === '') return; // the reference printed nothing for this image
    const { ours, check, strictCheck, dump } = restoreAndJudge(writeXml(xml), 64 << 20);
    expect(ours.status, ours.stderr).toBe(0);
    expect(check.status, check.stderr).toBe(0);
    expect(strictCheck.status, strictCheck.stderr).toBe(0);
    expect(dump.stdout).toBe(xml);
  });
});

describe('shared subtrees (<def>/<ref>)', () => {
  // Mappings of thin blocks [from, from + n), in runs, starting at data block `data`.
  function mappings(from: number, n: number, data: number, time: number): string[] {
    const out: string[] = [];
    for (let i = 0; i < n; ) {
      const len = Math.min(n - i, [1, 3, 40, 1, 200][i % 5]);
      out.push(
        len === 1
          ? `<single_mapping origin_block="${from + i}" data_block="${data + i}" time="${time}"/>`
          : `<range_mapping origin_begin="${from + i}" data_begin="${data + i}" length="${len}" time="${time}"/>`,
      );
      i += len + (i % 7 === 0 ? 5 : 0);
    }
    return out;
  }
  const count = (lines: string[]) =>
    lines.reduce((n, l) => n + (l.includes('length=') ? Number(/length="(\d+)"/.exec(l)![1]) : 1), 0);

  const defs: Record<string, string[]> = {
    big: mappings(10_000, 3000, 0, 0),
    small: mappings(50_000, 20, 5000, 0),
    mid: mappings(60_000, 600, 6000, 1),
    // Never referenced: its leaves are written but must not count, nor the data they map.
    unused: mappings(90_000, 2000, 16_000, 0),
  };
  const devices: [number, (string | string[])[]][] = [
    [1, [mappings(0, 700, 10_000, 2), 'big', 'small', mappings(70_000, 500, 12_000, 2)]],
    [2, ['big']],
    [3, ['small']],
    [4, ['big', 'mid']],
    [5, [mappings(0, 300, 13_000, 2), 'mid', mappings(80_000, 10, 14_000, 2)]],
    [6, []],
  ];

  function xml(shared: boolean): string {
    const out = ['<superblock uuid="" time="2" transaction="7" flags="0" version="2" data_block_size="128" nr_data_blocks="20000">'];
    if (shared) for (const [name, body] of Object.entries(defs)) out.push(`<def name="${name}">`, ...body, '</def>');
    for (const [devId, parts] of devices) {
      const flat = parts.flatMap((p) => (typeof p === 'string' ? defs[p] : p));
      out.push(`<device dev_id="${devId}" mapped_blocks="${count(flat)}" transaction="1" creation_time="0" snap_time="1">`);
      out.push(...(shared ? parts.flatMap((p) => (typeof p === 'string' ? [`<ref name="${p}"/>`] : p)) : flat));
      out.push('</device>');
    }
    out.push('</superblock>');
    return out.join('\n') + '\n';
  }

  it('writes defs once, passes the reference check and dumps as the flat form', () => {
    const expected = referenceXml(xml(false));
    const shared = restoreAndJudge(writeXml(xml(true)));
    expect(shared.ours.status, shared.ours.stderr).toBe(0);
    expect(shared.check.status, shared.check.stderr).toBe(0);
    expect(shared.strictCheck.status, shared.strictCheck.stderr).toBe(0);
    expect(shared.dump.stdout).toBe(expected);
    // Shared leaves are written once: fewer blocks than the same pool written flat.
    const flat = restoreAndJudge(writeXml(xml(false)));
    expect(flat.check.status).toBe(0);
    expect(metadataAllocated(shared.out)).toBeLessThan(metadataAllocated(flat.out) - 10);
  });
});

describe('output size', () => {
  const xml = generateXml({ seed: 9, mappingsPerOrigin: 4000 });

  it('names the size the metadata needs, and that size is enough', () => {
    const small = restoreAndJudge(writeXml(xml), 16 * BLOCK_SIZE);
    expect(small.ours.status).toBe(1);
    const m = /output too small for the metadata: it needs at least (\d+) blocks/.exec(small.ours.stderr);
    expect(m, small.ours.stderr).not.toBeNull();
    expect(small.ours.stderr.trim().split('\n')).toHaveLength(1);
    const needed = Number(m![1]);

    const short = restoreAndJudge(writeXml(xml), (needed - 1) * BLOCK_SIZE);
    expect(short.ours.status).toBe(1);
    expect(short.ours.stderr).toContain(`needs at least ${needed} blocks`);
    const exact = restoreAndJudge(writeXml(xml), needed * BLOCK_SIZE);
    expect(exact.ours.status, exact.ours.stderr).toBe(0);
    expect(exact.check.status, exact.check.stderr).toBe(0);
  });

  it('fails on an empty output without writing it, at once (the data space map alone cannot fit)', () => {
    const r = restoreAndJudge(writeXml(xml), 0);
    expect(r.ours.status).toBe(1);
    expect(r.ours.stderr).toMatch(/need at least \d+ metadata blocks .*, the output has 0\n$/);
    expect(fs.statSync(r.out).size).toBe(0);
  });
});

describe('crash safety', () => {
  /** An output that held valid metadata before our restore. */
  function validOutput(): string {
    const out = emptyOutput(8 << 20);
    referenceRestore(writeXml(generateXml({ seed: 5, mappingsPerOrigin: 500 })), out);
    expect(runReference('thin_check', [out]).status).toBe(0);
    return out;
  }

  it('leaves no valid superblock when the input breaks off midway', () => {
    const out = validOutput();
    const xml = generateXml({ seed: 6, mappingsPerOrigin: 3000 });
    const cut = writeXml(xml.slice(0, Math.floor(xml.length * 0.7)));
    const r = runOurs('thin_restore', ['-i', cut, '-o', out]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    const block0 = fs.readFileSync(out).subarray(0, BLOCK_SIZE);
    expect(block0.equals(Buffer.alloc(BLOCK_SIZE))).toBe(true);
    expect(runReference('thin_check', [out]).status).not.toBe(0);
  });

  it('writes the superblock last, after syncing everything else', () => {
    const out = validOutput();
    const log: string[] = [];
    class RecordingWriter extends BlockWriter {
      write(b: number, data: Buffer): void {
        log.push(b === 0 ? (data.equals(Buffer.alloc(BLOCK_SIZE)) ? 'zero0' : 'super') : 'blocks');
        super.write(b, data);
      }
      sync(): void {
        log.push('sync');
        super.sync();
      }
    }
    const w = new RecordingWriter(out);
    const writer = new MetadataWriter(w);
    writer.superblockBegin({ uuid: '', time: 1, transaction: 3, flags: 0, version: 2, dataBlockSize: 128, nrDataBlocks: 100_000 });
    for (let dev = 0; dev < 3; dev++) {
      writer.deviceBegin({ devId: dev, mappedBlocks: 20_000, transaction: 0, creationTime: 0, snapTime: 0 });
      writer.mapRun(0, dev * 30_000, 20_000, 0);
      writer.deviceEnd();
    }
    writer.superblockEnd();
    w.close();
    const collapsed = log.filter((e, i) => e !== 'blocks' || log[i - 1] !== 'blocks');
    expect(collapsed).toEqual(['zero0', 'sync', 'blocks', 'sync', 'super', 'sync']);
    expect(runReference('thin_check', [out]).status).toBe(0);
    const dump = runReference('thin_dump', [out]).stdout;
    expect(dump).toContain('<range_mapping origin_begin="0" data_begin="60000" length="20000" time="0"/>');
  });
});

describe('command line, against the reference', () => {
  const xml = writeXml(generateXml({ seed: 7, mappingsPerOrigin: 300 }));

  it.each([
    ['no input', ['-o', '/dev/null'], 'No input file provided'],
    ['no output', ['-i', xml], 'No output file provided'],
    ['missing input', ['-i', path.join(dir, 'nope.xml'), '-o', '/dev/null'], 'nope.xml'],
    ['missing output', ['-i', xml, '-o', path.join(dir, 'nope.bin')], 'nope.bin'],
    ['unknown option', ['--bogus'], 'bogus'],
  ])('%s: same exit status as the reference, one line', (_, args, message) => {
    const ref = runReference('thin_restore', args);
    const ours = runOurs('thin_restore', args);
    expect(ours.status).toBe(ref.status);
    expect(ours.stderr).toContain(message);
    expect(ours.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('-h and -V exit 0 like the reference', () => {
    for (const flag of ['-h', '--help', '-V', '--version']) {
      expect(runOurs('thin_restore', [flag]).status).toBe(runReference('thin_restore', [flag]).status);
    }
    expect(runOurs('thin_restore', ['-h']).stdout).toMatch(/--nr-data-blocks/);
  });

  it('is silent on success, with or without -q', () => {
    for (const extra of [[], ['-q'], ['--quiet']]) {
      const out = emptyOutput(8 << 20);
      const r = runOurs('thin_restore', ['-i', xml, '-o', out, ...extra]);
      expect(r).toMatchObject({ status: 0, stdout: '', stderr: '' });
    }
  });

  it('overrides transaction id, data block size and nr data blocks as the reference does', () => {
    const overrides = ['--transaction-id', '2345', '--data-block-size', '8192', '--nr-data-blocks', '234500'];
    const ours = restoreAndJudge(xml, 8 << 20, overrides);
    expect(ours.ours.status, ours.ours.stderr).toBe(0);
    expect(ours.check.status).toBe(0);
    const refOut = emptyOutput(8 << 20);
    expect(runReference('thin_restore', ['-i', xml, '-o', refOut, ...overrides]).status).toBe(0);
    expect(ours.dump.stdout).toBe(runReference('thin_dump', [refOut]).stdout);
    expect(ours.dump.stdout).toContain('transaction="2345"');
  });

  it('overwrites an output that holds metadata, as the reference does (no prompt)', () => {
    const out = emptyOutput(8 << 20);
    referenceRestore(writeXml(generateXml({ seed: 8, mappingsPerOrigin: 100 })), out);
    const r = runOurs('thin_restore', ['-i', xml, '-o', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(runReference('thin_dump', [out]).stdout).toBe(referenceXml(fs.readFileSync(xml, 'utf8')));
  });
});
