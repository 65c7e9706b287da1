// IO in flight and block sizes (issue 10): parallel blocks under thousands of seeded schedules
// (no deadlock, every block as a serial order would leave it, every commit accepted), the
// pre-fix discard ordering deadlocking within a bounded number of seeds, the serial-order oracle
// refusing what no order gives, and block sizes that are not powers of two against the
// reference tools.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { replay } from '../src/engine/replay.js';
import { runSchedules } from '../src/engine/schedules.js';
import { serialOrder } from '../src/engine/serial-order.js';
import { ZEROES } from '../src/engine/model.js';
import { runOurs, runReference, upstreamTool } from './support/reference.js';
import { deviceMappings } from './support/dump-mappings.js';
import { expectAccepted, replayFiles } from './support/replay-files.js';

const ROOT = path.resolve(__dirname, '..');
const TRACES = path.join(ROOT, 'testdata', 'traces');
const { dir, files, writeTrace } = replayFiles('replay-in-flight-');

/** Device `dev`'s mappings as the reference thin_dump gives them: thin block -> data block. */
function referenceMappings(metadata: string, dev: number): Map<number, number> {
  return deviceMappings(runReference('thin_dump', [metadata]).stdout, dev);
}

describe('IO in flight', () => {
  it('thousands of seeded schedules: no deadlock, every block a serial order, every commit checked', () => {
    const s = runSchedules({ traces: 100, seedsPerTrace: 12, data: true });
    expect(s.failed.map((f) => `trace ${f.trace} seed ${f.seed}: ${f.problems[0]?.message}`)).toEqual([]);
    expect(s.runs).toBe(1200);
    expect(s.deadlocks).toBe(0);
    // The scheduler reaches the interleavings that matter: most runs had IO waiting on a lock.
    expect(s.waited).toBeGreaterThan(s.runs / 2);
  }, 180_000);

  it('the reference thin_check accepts every commit of a sample of schedules', () => {
    let checks = 0;
    const s = runSchedules({
      traces: 3,
      seedsPerTrace: 3,
      firstTrace: 1000,
      afterCommit: (metadata) => {
        checks++;
        const r = runReference('thin_check', [metadata]);
        expect(r.status, r.stderr).toBe(0);
      },
    });
    expect(s.failed).toEqual([]);
    expect(checks).toBeGreaterThan(9 * 3);
  }, 120_000);

  it('the example trace replays under every seed, with its data verified', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const { metadata, data } = files();
      const s = replay({ trace: path.join(TRACES, 'in-flight.trace'), metadata, data, seed, sync: false });
      expect(s.problems, `seed ${seed}`).toEqual([]);
      expect(s.ok).toBe(true);
      expect(s.inFlight.blocks).toBe(2);
    }
  });

  it('the pre-fix discard ordering deadlocks a write racing a discard within 50 seeds, and the fix never does', () => {
    const trace = writeTrace('race.trace', ['pool data_block_size=128 nr_data_blocks=16', 'create_thin 1', 'write 1 0', 'commit', 'parallel', 'write 1 0', 'discard 1 0', 'end', 'read 1 0']);
    let deadlocked: number | undefined;
    for (let seed = 1; seed <= 50; seed++) {
      const fixed = replay({ trace, metadata: files().metadata, seed, sync: false });
      expect(fixed.problems, `seed ${seed}`).toEqual([]);
      const preFix = replay({ trace, metadata: files().metadata, seed, preFixDiscardOrdering: true, sync: false });
      if (preFix.problems.some((p) => p.kind === 'deadlock')) deadlocked ??= seed;
    }
    expect(deadlocked).toBeDefined();
    // From the command line: exit 1, the deadlock named at the parallel line with both operations.
    const r = runOurs('thin_replay', [trace, '--metadata', files().metadata, '--seed', String(deadlocked), '--pre-fix-discard-ordering']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^thin_replay: ${trace.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:5: deadlock: nothing can run, 2 IO in flight wait for each other: `));
    expect(r.stderr).toContain('write of device 1 block 0 (line 6) waits for the virtual cell of device 1 block 0, held by discard of device 1 block 0 (line 7)');
    expect(r.stderr).toContain('discard of device 1 block 0 (line 7) waits for 1 earlier IO to finish before unmapping');
  });

  it('the serial-order oracle refuses what no order of the operations gives', () => {
    const spb = 8;
    const initial = new Map([[1, { mapped: true, content: 3 }]]);
    const unmapped = new Map([[1, { read: ZEROES, provision: ZEROES }]]);
    const ops = [
      { kind: 'write' as const, line: 10, dev: 1, begin: 0, end: 8 },
      { kind: 'discard' as const, line: 11, dev: 1, begin: 0, end: 8 },
      { kind: 'read' as const, line: 12, dev: 1, begin: 0, end: 8, result: 10 },
    ];
    // Write, read, discard.
    expect(serialOrder(spb, initial, unmapped, ops, new Map([[1, { mapped: false, content: ZEROES }]]))?.map((o) => o.line)).toEqual([10, 12, 11]);
    // Discard, then write: but the read saw line 10's data, so it comes after the write.
    expect(serialOrder(spb, initial, unmapped, ops, new Map([[1, { mapped: true, content: 10 }]]))?.map((o) => o.line)).toEqual([11, 10, 12]);
    // The old data left mapped: no order of a whole-block write and a discard leaves it.
    expect(serialOrder(spb, initial, unmapped, ops, new Map([[1, { mapped: true, content: 3 }]]))).toBeNull();
    // A read that saw zeroes on a block mapped until the discard, with the write after: fine; one that saw data never written: not.
    expect(serialOrder(spb, initial, unmapped, [ops[0], ops[1], { ...ops[2], result: 7 }], new Map([[1, { mapped: false, content: ZEROES }]]))).toBeNull();
  });

  it('refuses what cannot be in flight, by line', () => {
    const trace = writeTrace('bad-parallel.trace', ['pool data_block_size=128 nr_data_blocks=16', 'create_thin 1', 'parallel', 'write 1 0', 'merge 1 2', 'end']);
    const r = runOurs('thin_replay', [trace, '--metadata', files().metadata]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/:5: merge cannot be in flight: between parallel and end go only write, /);
  });
});

describe('block sizes', () => {
  it('takes exactly the sizes the kernel takes, as the upstream thin_restore does', () => {
    for (const size of [64, 128, 192, 384, 640, 1536, 2097152, 2097280]) {
      const trace = writeTrace(`size-${size}.trace`, [`pool data_block_size=${size} nr_data_blocks=16`, 'create_thin 1', 'write 1 0']);
      const ours = runOurs('thin_replay', [trace, '--metadata', files().metadata, '-q']);
      const xml = path.join(dir, `size-${size}.xml`);
      fs.writeFileSync(xml, `<superblock uuid="" time="0" transaction="0" flags="0" version="2" data_block_size="${size}" nr_data_blocks="16">\n</superblock>\n`);
      const out = files().metadata;
      fs.writeFileSync(out, Buffer.alloc(4 << 20));
      const upstream = spawnSync(upstreamTool('thin_restore'), ['-i', xml, '-o', out], { encoding: 'utf8' });
      expect(ours.status === 0, `size ${size}: ${ours.stderr}`).toBe(upstream.status === 0);
      if (ours.status !== 0) expect(ours.stderr).toBe(`thin_replay: ${trace}:1: data block size ${size} sectors is not a multiple of 128 between 128 and 2097152\n`);
    }
  });

  for (const size of [384, 640, 1536]) {
    it(`${size} sectors: unaligned discards unmap the whole blocks inside, the reference tools agree`, () => {
      const blocks = 24;
      const lines = [`pool data_block_size=${size} nr_data_blocks=64`, 'create_thin 1', `write 1 0 ${blocks}`, 'commit'];
      // The blocks wholly inside some discard: computed here from the ranges alone.
      const unmapped = new Set<number>();
      let x = size * 7 + 13;
      const next = (n: number): number => (x = (x * 1103515245 + 12345) % 2147483648) % n;
      for (let i = 0; i < 12; i++) {
        const sector = next(blocks * size);
        const count = 1 + next(3 * size);
        lines.push(`discard_sectors 1 ${sector} ${count}`);
        for (let b = 0; b < blocks; b++) if (b * size >= sector && (b + 1) * size <= sector + count) unmapped.add(b);
      }
      lines.push(`read 1 0 ${blocks}`, 'commit');
      const trace = writeTrace(`discards-${size}.trace`, lines);
      const { metadata, data } = files();
      const r = runOurs('thin_replay', [trace, '--metadata', metadata, '--data', data, '--json']);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stdout).dataBlocks.verified).toBe(blocks - unmapped.size);
      expect(unmapped.size).toBeGreaterThan(0);
      const mapped = referenceMappings(metadata, 1);
      for (let b = 0; b < blocks; b++) expect(mapped.has(b), `block ${b}`).toBe(!unmapped.has(b));
      expect(runReference('thin_dump', [metadata]).stdout).toContain(`data_block_size="${size}"`);
      expectAccepted(metadata);
    });
  }

  it('the example trace with 640-sector blocks leaves exactly the partial ends mapped', () => {
    const { metadata, data } = files();
    const r = runOurs('thin_replay', [path.join(TRACES, 'block-size-640.trace'), '--metadata', metadata, '--data', data]);
    expect(r.status, r.stderr).toBe(0);
    expect([...referenceMappings(metadata, 1).keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 5, 6, 7]);
    expectAccepted(metadata);
  });
});
