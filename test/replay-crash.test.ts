// Crash sweeps: a trace replayed once per metadata write, losing every write after it; each time
// the pool reopened must hold exactly the last commit (devices, mappings, details, the held
// metadata snapshot), pass our full check, and its data blocks must hold what that commit's
// mappings say (nothing the lost transaction wrote may land on a committed block).
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crashSweep } from '../src/engine/crash-sweep.js';
import { runOurs, runReference } from './support/reference.js';
import { replayFiles } from './support/replay-files.js';
import { randomTrace } from './support/trace-gen.js';

const ROOT = path.resolve(__dirname, '..');
const { dir, files } = replayFiles('replay-crash-');

describe('crash sweep', () => {
  const random = path.join(dir, 'random.trace');
  fs.writeFileSync(random, randomTrace({ seed: 9, operations: 100, nrDataBlocks: 400, span: 120 }));
  // A metadata device so small that allocation wraps every few commits and ends in an aborted
  // commit: blocks freed in the open transaction (the last commit's) are what it must not reuse.
  const churn = path.join(dir, 'churn.trace');
  const lines = ['pool data_block_size=128 nr_data_blocks=1000 metadata_blocks=22 error_if_no_space=on', 'create_thin 1', 'write 1 0 200', 'commit'];
  for (let k = 0; k < 24; k++) {
    lines.push(`write 1 ${(k * 7) % 200} 1`);
    if (k % 3 === 0) lines.push(`create_snap ${k + 10} 1`);
    lines.push('commit');
  }
  fs.writeFileSync(churn, lines.join('\n') + '\n');
  const traces: Array<[string, string]> = [
    ['kernel scenario c_discard', path.join(ROOT, 'testdata', 'kernel-scenarios', 'c_discard', 'trace')],
    ['snapshots of snapshots', path.join(ROOT, 'testdata', 'traces', 'snapshots.trace')],
    ['a held metadata snapshot', path.join(ROOT, 'testdata', 'traces', 'metadata-snapshot.trace')],
    ['a random trace', random],
    ['a tiny metadata device, wrapping and finally aborting', churn],
    ['IO in flight', path.join(ROOT, 'testdata', 'traces', 'in-flight.trace')],
    ['a merge of a snapshot into its origin', path.join(ROOT, 'testdata', 'traces', 'merge.trace')],
  ];
  for (const [name, trace] of traces) {
    it(`${name}: every crash point recovers the last commit`, () => {
      const { metadata, data } = files();
      const sweep = crashSweep({ trace, metadata, data, keepGoing: true, sync: false });
      expect(sweep.failed).toEqual([]);
      expect(sweep.points).toBeGreaterThan(20);
      expect(sweep.full.verification).toBe('passed');
    });
  }

  it('--crash-at N from the command line: the reopened pool is the last commit, accepted by the reference', () => {
    const trace = path.join(ROOT, 'testdata', 'kernel-scenarios', 'b_snap_chain', 'trace');
    const full = files();
    const all = JSON.parse(runOurs('thin_replay', [trace, '--metadata', full.metadata, '--json']).stdout);
    const { metadata, data } = files();
    const at = Math.floor(all.metadataBlocks.writes / 2);
    const r = runOurs('thin_replay', [trace, '--metadata', metadata, '--data', data, '--crash-at', String(at), '--json']);
    expect(r.status).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.crash).toEqual({ at, happened: true, commitsBefore: expect.any(Number) });
    expect(summary.verification).toBe('passed');
    expect(summary.commits).toBeLessThan(all.commits);
    expect(runReference('thin_check', [metadata]).status).toBe(0);
  });

  it('--crash-sweep from the command line', () => {
    const { metadata } = files();
    const r = runOurs('thin_replay', [path.join(ROOT, 'testdata', 'traces', 'discards.trace'), '--metadata', metadata, '--crash-sweep']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/crash sweep: \d+ crash points, every one recovered the last commit/);
  });
});
