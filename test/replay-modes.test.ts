// External origins, failure modes, the virtual clock and rollback (issue 10), end to end: reads
// checked against a real origin file byte for byte, mode transitions at the lines the kernel's
// rules give, the last commit intact for the reference tools, and a merge that leaves the
// origin's id naming exactly what the snapshot held (the reference dump before and after).
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockReader } from '../src/io/block-io.js';
import { replay } from '../src/engine/replay.js';
import { NEEDS_CHECK_FLAG, readSuperblock } from '../src/thin/superblock.js';
import { runOurs, runReference } from './support/reference.js';
import { deviceMappings } from './support/dump-mappings.js';
import { expectAccepted, replayFiles } from './support/replay-files.js';

const ROOT = path.resolve(__dirname, '..');
const TRACES = path.join(ROOT, 'testdata', 'traces');
const { dir, files, writeTrace } = replayFiles('replay-modes-');

/** The first `n` lines of an example trace, as a trace of its own. */
function prefix(name: string, n: number): string {
  return writeTrace(`${name}-${n}.trace`, fs.readFileSync(path.join(TRACES, `${name}.trace`), 'utf8').split('\n').slice(0, n));
}

function dump(metadata: string): string {
  const r = runReference('thin_dump', [metadata]);
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}


function needsCheck(metadata: string): boolean {
  const io = new BlockReader(metadata);
  try {
    return (readSuperblock(io).flags & NEEDS_CHECK_FLAG) !== 0;
  } finally {
    io.close();
  }
}

describe('external origins', () => {
  const BLOCK = 128 * 512;

  it('a file as the origin: reads verified against it, partial writes keep its sectors around them', () => {
    // 3.5 blocks of origin: block 3 is half origin, half past its end.
    const origin = path.join(dir, 'origin.bin');
    let x = 12345;
    const bytes = Buffer.alloc(3 * BLOCK + BLOCK / 2);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
    fs.writeFileSync(origin, bytes);
    const trace = writeTrace('origin.trace', ['pool data_block_size=128 nr_data_blocks=16', 'create_thin 1', 'external_origin 1 4', 'read 1 0 5', 'write_sectors 1 130 10', 'write_sectors 1 400 50', 'read 1 0 5', 'commit']);
    const { metadata, data } = files();
    const r = runOurs('thin_replay', [trace, '--metadata', metadata, '--data', data, '--external-origin', `1=${origin}`, '--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).dataBlocks.verified).toBeGreaterThanOrEqual(2);
    expectAccepted(metadata);
    const m = deviceMappings(dump(metadata), 1);
    expect([...m.keys()].sort()).toEqual([1, 3]);
    const file = fs.readFileSync(data);
    const sector = (dataBlock: number, s: number): Buffer => file.subarray(dataBlock * BLOCK + s * 512, dataBlock * BLOCK + (s + 1) * 512);
    const originSector = (block: number, s: number): Buffer => bytes.subarray(block * BLOCK + s * 512, block * BLOCK + (s + 1) * 512);
    // Block 1: sectors 2..11 written, the rest the origin's.
    for (let s = 0; s < 128; s++) expect(sector(m.get(1)!, s).equals(originSector(1, s)), `block 1 sector ${s}`).toBe(s < 2 || s >= 12);
    // Block 3: sectors 16..65 written; 0..15 the origin's; 66.. past the origin's end, zeroes.
    for (let s = 0; s < 128; s++) {
      const got = sector(m.get(3)!, s);
      if (s < 16) expect(got.equals(originSector(3, s)), `block 3 sector ${s}`).toBe(true);
      else if (s >= 66) expect(got.equals(Buffer.alloc(512)), `block 3 sector ${s}`).toBe(true);
      else expect(got.equals(Buffer.alloc(512)) || (s < 64 && got.equals(originSector(3, s))), `block 3 sector ${s}`).toBe(false);
    }
  });

  it('generated origins: the example trace under several seeds', () => {
    for (let seed = 1; seed <= 10; seed++) {
      const { metadata, data } = files();
      const s = replay({ trace: path.join(TRACES, 'external-origin.trace'), metadata, data, seed, sync: false });
      expect(s.problems, `seed ${seed}`).toEqual([]);
      expect(s.ok).toBe(true);
    }
  });

  it('refuses an origin file the trace never attaches, and a missing one', () => {
    const trace = writeTrace('no-origin.trace', ['pool data_block_size=128 nr_data_blocks=16', 'create_thin 1', 'write 1 0']);
    const r = runOurs('thin_replay', [trace, '--metadata', files().metadata, '--external-origin', `2=${trace}`]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`thin_replay: --external-origin 2=${trace}: the trace has no external_origin 2 line\n`);
    const missing = writeTrace('missing-origin.trace', ['pool data_block_size=128 nr_data_blocks=16', 'create_thin 1', 'external_origin 1 4']);
    const m = runOurs('thin_replay', [missing, '--metadata', files().metadata, '--external-origin', `1=${path.join(dir, 'nope')}`]);
    expect(m.status).toBe(1);
    expect(m.stderr).toContain('nope: No such file or directory');
    expect(m.stderr).not.toContain('    at ');
    // The pool's own data file as its origin: refused before anything is written.
    const own = files();
    fs.writeFileSync(own.data, Buffer.alloc(4 * BLOCK));
    const self = runOurs('thin_replay', [missing, '--metadata', own.metadata, '--data', own.data, '--external-origin', `1=${own.data}`]);
    expect(self.status).toBe(1);
    expect(self.stderr).toBe(`thin_replay: ${own.data}: this output is the input ${own.data}; nothing was written\n`);
    expect(fs.existsSync(own.metadata)).toBe(false);
    const bad = runOurs('thin_replay', [missing, '--metadata', files().metadata, '--external-origin', 'x']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('--external-origin x: expected D=FILE');
  });
});

describe('failure modes', () => {
  it('failing metadata writes: read-only at the failed commit, fail at the next, the last commit intact', () => {
    const { metadata, data } = files();
    const r = runOurs('thin_replay', [path.join(TRACES, 'failing-metadata.trace'), '--metadata', metadata, '--data', data, '--keep-going', '--json']);
    expect(r.status).toBe(1);
    const s = JSON.parse(r.stdout);
    expect(s.modes.map((c: { line: number; mode: string }) => [c.line, c.mode])).toEqual([[13, 'read-only'], [18, 'fail']]);
    expect(s.problems.map((p: { line: number }) => p.line)).toEqual([13, 16, 18, 19]);
    expect(s.problems[2].message).toContain('the pool has failed');
    expect(s.verification).toBe('passed');
    // What is on disk is the commit of line 10, as a replay of the trace up to there leaves it.
    const last = files();
    expect(runOurs('thin_replay', [prefix('failing-metadata', 10), '--metadata', last.metadata, '-q']).status).toBe(0);
    expect(dump(metadata)).toBe(dump(last.metadata));
    expectAccepted(metadata);
  });

  it('healed writes: the read-only pool writes needs_check at its next commit point', () => {
    const lines = fs.readFileSync(path.join(TRACES, 'failing-metadata.trace'), 'utf8').split('\n');
    const at = lines.findIndex((l) => l.startsWith('status'));
    const trace = writeTrace('healed.trace', [...lines.slice(0, at), 'heal_metadata_writes', ...lines.slice(at)]);
    const { metadata } = files();
    const r = runOurs('thin_replay', [trace, '--metadata', metadata, '--keep-going', '--json']);
    const s = JSON.parse(r.stdout);
    expect(s.modes.map((c: { mode: string }) => c.mode)).toEqual(['read-only']);
    expect(s.mode).toBe('read-only');
    expect(needsCheck(metadata)).toBe(true);
    expect(dump(metadata)).toContain('flags="1"');
    // Reopened, the pool is read-only until thin_check clears the flag.
    const more = writeTrace('after.trace', ['read 1 0 4', 'write 1 20']);
    const again = runOurs('thin_replay', [more, '--metadata', metadata, '--json', '--keep-going']);
    expect(JSON.parse(again.stdout).modes[0]).toMatchObject({ line: 0, mode: 'read-only' });
    expect(JSON.parse(again.stdout).problems.map((p: { line: number }) => p.line)).toEqual([2]);
  });

  it('out of data space, queueing (error_if_no_space=off): writes wait for a resize or the 60 s timeout', () => {
    const { metadata, data } = files();
    const r = runOurs('thin_replay', [path.join(TRACES, 'no-space-queue.trace'), '--metadata', metadata, '--data', data, '--keep-going', '--json']);
    expect(r.status).toBe(1);
    const s = JSON.parse(r.stdout);
    expect(s.modes.map((c: { line: number; mode: string }) => [c.line, c.mode])).toEqual([[9, 'out-of-data-space'], [12, 'write'], [15, 'out-of-data-space'], [18, 'out-of-data-space'], [20, 'write']]);
    expect(s.modes[3].cause).toContain('no_space_timeout');
    expect(s.problems.map((p: { line: number }) => p.line)).toEqual([15, 17, 19]);
    // The write of line 9 waited and landed; 15, 17 and 19 never did.
    expect([...deviceMappings(dump(metadata), 1).keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 11]);
    expectAccepted(metadata);
  });

  it('out of data space, failing (error_if_no_space=on): the same writes fail at once', () => {
    const lines = fs.readFileSync(path.join(TRACES, 'no-space-queue.trace'), 'utf8').split('\n').map((l) => l.replace('error_if_no_space=off', 'error_if_no_space=on'));
    const trace = writeTrace('no-space-fail.trace', lines);
    const { metadata } = files();
    const s = JSON.parse(runOurs('thin_replay', [trace, '--metadata', metadata, '--keep-going', '--json']).stdout);
    // Line 9 fails, so after the resize line 13 takes blocks 4..6 and line 15 the last one.
    expect(s.problems.map((p: { line: number }) => p.line)).toEqual([9, 17, 19]);
    expect(s.problems[0].message).toContain('out of data space');
    expect(s.modes[0]).toMatchObject({ line: 9, mode: 'out-of-data-space' });
    expect([...deviceMappings(dump(metadata), 1).keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 5, 6, 7, 8, 11]);
    expectAccepted(metadata);
  });
});

describe('time', () => {
  it('the worker commits a second after its last commit when something changed; status commits what changed', () => {
    const commits: number[] = [];
    const s = replay({ trace: path.join(TRACES, 'clock.trace'), metadata: files().metadata, afterCommit: (line) => commits.push(line) });
    expect(s.ok).toBe(true);
    // KERNEL.md: messages commit; the worker at the first tick a second after its last commit; status when changed.
    expect(commits).toEqual([5, 9, 11]);
  });

  it('what a crash loses is what the clock had not committed yet', () => {
    const { metadata } = files();
    // Crash after the last metadata write of the worker's commit at line 9: line 10's write is lost.
    const full = replay({ trace: prefix('clock', 9), metadata: files().metadata });
    const r = replay({ trace: prefix('clock', 10), metadata, crashAt: full.metadataBlocks.writes });
    expect(r.ok).toBe(true);
    expect([...deviceMappings(dump(metadata), 1).keys()]).toEqual([0, 1, 2, 3]);
  });
});

describe('rollback', () => {
  it('merge 2 1: device 1 is what snapshot 2 was, block by block, in one commit', () => {
    const before = files();
    const at = fs.readFileSync(path.join(TRACES, 'merge.trace'), 'utf8').split('\n').findIndex((l) => l.startsWith('merge'));
    expect(runOurs('thin_replay', [prefix('merge', at), '--metadata', before.metadata, '-q']).status).toBe(0);
    const { metadata, data } = files();
    const commits: number[] = [];
    const s = replay({ trace: path.join(TRACES, 'merge.trace'), metadata, data, afterCommit: (line) => commits.push(line) });
    expect(s.problems).toEqual([]);
    expect(s.ok).toBe(true);
    expect(commits.filter((l) => l === at + 1)).toHaveLength(1);
    // Every read of device 1 after the merge was checked against the data file.
    expect(s.dataBlocks.verified).toBe(6);
    const was = dump(before.metadata);
    const now = dump(metadata);
    expect(deviceMappings(now, 1)).toEqual(deviceMappings(was, 2));
    expect(now).not.toContain('dev_id="2"');
    const details = (xml: string, dev: number): string => new RegExp(`<device dev_id="${dev}" ([^>]*)>`).exec(xml)![1];
    expect(details(now, 1)).toBe(details(was, 2));
    expectAccepted(metadata);
  });

  it('refuses a merge of a missing device or into itself, by line', () => {
    const trace = writeTrace('bad-merge.trace', ['pool data_block_size=128 nr_data_blocks=16', 'create_thin 1', 'merge 1 1', 'merge 2 1', 'merge 1 3']);
    const r = runOurs('thin_replay', [trace, '--metadata', files().metadata, '--keep-going']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(':3: merge 1 1:');
    expect(r.stderr).toContain(':4: merge 2 1:');
    expect(r.stderr).toContain(':5: merge 1 3:');
  });
});
