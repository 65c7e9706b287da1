// thin_replay end to end, as a user runs it: the kernel's own scenarios replayed into fresh files
// must dump (reference thin_dump) byte for byte as the kernel's metadata did, and list the same
// (reference thin_ls); the bundled example traces end as their comments say, accepted by both
// reference checkers, their refusals named by trace line.
import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockReader } from '../src/io/block-io.js';
import { NEEDS_CHECK_FLAG, dataSpaceMapRoot, readSuperblock } from '../src/thin/superblock.js';
import { runOurs, runReference } from './support/reference.js';
import { expectAccepted, replayFiles } from './support/replay-files.js';

const ROOT = path.resolve(__dirname, '..');
const SCENARIOS = path.join(ROOT, 'testdata', 'kernel-scenarios');
const TRACES = path.join(ROOT, 'testdata', 'traces');
const { dir, files } = replayFiles('replay-traces-');

describe('kernel scenarios replayed', () => {
  for (const name of fs.readdirSync(SCENARIOS).filter((n) => fs.existsSync(path.join(SCENARIOS, n, 'trace')))) {
    it(`${name}: the reference dump equals the kernel's, byte for byte`, () => {
      const { metadata, data } = files();
      const r = runOurs('thin_replay', [path.join(SCENARIOS, name, 'trace'), '--metadata', metadata, '--data', data]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toContain('verification: passed');
      const dump = runReference('thin_dump', [metadata]);
      expect(dump.stdout).toBe(fs.readFileSync(path.join(SCENARIOS, name, 'thin_dump.xml'), 'utf8'));
      const ls = runReference('thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,CREATE_TIME,SNAP_TIME,TRANSACTION', metadata]);
      expect(ls.stdout).toBe(fs.readFileSync(path.join(SCENARIOS, name, 'thin_ls.txt'), 'utf8'));
      expectAccepted(metadata);
    });
  }
});

describe('example traces', () => {
  for (const name of ['snapshots', 'discards', 'delete-shared', 'metadata-snapshot', 'thousands-of-devices']) {
    it(`${name}: replays cleanly and the pool is accepted`, () => {
      const { metadata, data } = files();
      const args = [path.join(TRACES, `${name}.trace`), '--metadata', metadata, '--data', data, '--json'];
      if (name === 'thousands-of-devices') args.push('--no-sync');
      const r = runOurs('thin_replay', args);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const summary = JSON.parse(r.stdout);
      expect(summary.verification).toBe('passed');
      expect(summary.problems).toEqual([]);
      expectAccepted(metadata);
      if (name === 'discards') {
        // Every block a discard freed was punched out: the data file holds no more than the
        // blocks the pool still has allocated. (Blocks freed otherwise keep their data, as in
        // the kernel: a delete, or releasing a metadata snapshot that held discarded blocks,
        // passes no discard down.)
        expect(summary.dataBlocks.punched).toBeGreaterThan(0);
        const io = new BlockReader(metadata);
        const allocated = Number(dataSpaceMapRoot(readSuperblock(io)).nrAllocated);
        io.close();
        const blockBytes = 128 * 512;
        expect(fs.statSync(data).blocks * 512).toBeLessThanOrEqual(allocated * blockBytes);
        expect(summary.dataBlocks.freed).toBeGreaterThan(0);
      }
    });
  }

  it('metadata-snapshot: the discarded blocks stay allocated while the snapshot is held', () => {
    const { metadata, data } = files();
    const trace = fs.readFileSync(path.join(TRACES, 'metadata-snapshot.trace'), 'utf8').split('\n');
    const upTo = trace.findIndex((l) => l.startsWith('release_metadata_snap'));
    const partial = path.join(dir, 'held.trace');
    fs.writeFileSync(partial, trace.slice(0, upTo).join('\n') + '\n');
    expect(runOurs('thin_replay', [partial, '--metadata', metadata, '--data', data]).status).toBe(0);
    const held = runReference('thin_dump', ['-m', metadata]);
    expect(held.status).toBe(0);
    // The snapshot's view: device 0 as reserved, blocks 0..399 mapped to data blocks 0..399.
    expect(held.stdout).toContain('<range_mapping origin_begin="0" data_begin="0" length="400" time="0"/>');
    expect(held.stdout).not.toContain('dev_id="1"');
    // Its blocks are counted as used: the live pool maps 300 of them (0..199 and 1000..1099)...
    const live = runReference('thin_dump', [metadata]).stdout;
    expect(live).toContain('<range_mapping origin_begin="0" data_begin="0" length="200" time="0"/>');
    // ...and the checkers agree the held ones are still allocated (no leak, no free block mapped).
    expectAccepted(metadata);
  });

  it('out-of-data-space: the refused writes are named by line, everything else replays, and the pool is accepted', () => {
    const { metadata, data } = files();
    const r = runOurs('thin_replay', [path.join(TRACES, 'out-of-data-space.trace'), '--metadata', metadata, '--data', data, '--keep-going']);
    expect(r.status).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toEqual([
      expect.stringMatching(/out-of-data-space\.trace:11: write 1 100 1: out of data space$/),
      expect.stringMatching(/out-of-data-space\.trace:13: write 2 0 1: the pool is out of data space$/),
      expect.stringMatching(/out-of-data-space\.trace:14: write 2 1 1: the pool is out of data space$/),
    ]);
    expect(r.stdout).toContain('verification: passed');
    expectAccepted(metadata);
    // Without --keep-going the replay stops at the first refusal, the metadata at its last commit.
    const stop = files();
    const s = runOurs('thin_replay', [path.join(TRACES, 'out-of-data-space.trace'), '--metadata', stop.metadata, '--json']);
    expect(s.status).toBe(1);
    const summary = JSON.parse(s.stdout);
    expect(summary.operations).toBe(6);
    expect(summary.verification).toBe('passed');
    expect(summary.problems).toEqual([{ line: 11, kind: 'refused', message: 'write 1 100 1: out of data space' }]);
    expectAccepted(stop.metadata);
  });

  it('out-of-metadata-space: the transaction is aborted to the last commit with needs_check set, which thin_check then clears', () => {
    const { metadata, data } = files();
    const r = runOurs('thin_replay', [path.join(TRACES, 'out-of-metadata-space.trace'), '--metadata', metadata, '--data', data, '--keep-going', '--json']);
    expect(r.status).toBe(1);
    const summary = JSON.parse(r.stdout);
    expect(summary.mode).toBe('read-only');
    expect(summary.verification).toBe('passed');
    expect(summary.problems).toHaveLength(1);
    expect(summary.problems[0].message).toMatch(/^discard \d \d+ 1: out of metadata space: the transaction was aborted, needs_check set and the pool is read-only$/);
    // The discards after the abort succeed without doing anything (a read-only pool's discards do).
    const io = new BlockReader(metadata);
    expect(readSuperblock(io).flags & NEEDS_CHECK_FLAG).toBe(NEEDS_CHECK_FLAG);
    io.close();
    // The last commit: device 1 with all 6000 blocks, four snapshots sharing them.
    const dump = runReference('thin_dump', [metadata]).stdout;
    expect(dump).toContain('flags="1"');
    expect(dump.match(/<device dev_id/g)).toHaveLength(5);
    expect(dump.match(/length="6000"/g)).toHaveLength(5);
    const before = fs.readFileSync(metadata);
    expect(runOurs('thin_check', ['--clear-needs-check-flag', metadata]).status).toBe(0);
    expect(runReference('thin_dump', [metadata]).stdout).toBe(dump.replace('flags="1"', 'flags="0"'));
    // A commit of the superblock alone: every other block as it was, and in the superblock only
    // the flags and the checksum.
    const after = fs.readFileSync(metadata);
    expect(after.subarray(4096).equals(before.subarray(4096))).toBe(true);
    const differing = [...Array(4096).keys()].filter((i) => after[i] !== before[i]);
    expect(differing.every((i) => i < 8)).toBe(true);
    expect(after.readUInt32LE(4)).toBe(before.readUInt32LE(4) & ~NEEDS_CHECK_FLAG);
    expectAccepted(metadata);
  });
});

describe('thin_replay as a command', () => {
  it('names a bad trace line and exits 1 without a stack trace', () => {
    const trace = path.join(dir, 'bad.trace');
    fs.writeFileSync(trace, 'pool data_block_size=128 nr_data_blocks=10\ncreate_thin 1\nwrite 1 x\n');
    const { metadata } = files();
    const r = runOurs('thin_replay', [trace, '--metadata', metadata]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`thin_replay: ${trace}:3: block 'x' is not a non-negative decimal number\n`);
  });

  it('refuses what cannot be in flight by line, and a pool line anywhere but first', () => {
    const trace = path.join(dir, 'in-flight.trace');
    fs.writeFileSync(trace, 'pool data_block_size=128 nr_data_blocks=10 error_if_no_space=on\ncreate_thin 1\nparallel\nwrite 1 0\ncreate_thin 2\nend\n');
    const { metadata } = files();
    const r = runOurs('thin_replay', [trace, '--metadata', metadata, '--keep-going']);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`thin_replay: ${trace}:5: create_thin cannot be in flight: between parallel and end go only write, write_sectors, read, discard, discard_sectors, flush, commit, status, create_snap\n`);
    const again = path.join(dir, 'pool-twice.trace');
    fs.writeFileSync(again, 'pool data_block_size=128 nr_data_blocks=10\ncreate_thin 1\npool data_block_size=128 nr_data_blocks=10\n');
    const p = runOurs('thin_replay', [again, '--metadata', files().metadata]);
    expect(p.stderr).toBe(`thin_replay: ${again}:3: pool must be the first operation\n`);
  });

  it('continues a pool the kernel wrote, and refuses a trace without a pool line on an empty file', () => {
    const { metadata, data } = files();
    fs.writeFileSync(metadata, require('node:zlib').gunzipSync(fs.readFileSync(path.join(SCENARIOS, 'b_snap_chain', 'metadata.img.gz'))));
    const trace = path.join(dir, 'continue.trace');
    fs.writeFileSync(trace, 'create_snap 8 6\nwrite 8 0 20\nwrite 6 0 3\ndiscard 1 0 100\ndelete 3\nread 8 0 30\ncommit\n');
    const r = runOurs('thin_replay', [trace, '--metadata', metadata, '--data', data]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expectAccepted(metadata);
    const dump = runReference('thin_dump', [metadata]).stdout;
    expect(dump).toContain('<device dev_id="8" mapped_blocks="210" transaction="0" creation_time="7" snap_time="7">');
    expect(dump).not.toContain('dev_id="3"');
    const empty = files();
    const e = runOurs('thin_replay', [trace, '--metadata', empty.metadata]);
    expect(e.status).toBe(1);
    expect(e.stderr).toBe(`thin_replay: ${empty.metadata}: no pool metadata there, and ${trace} has no pool line to format one\n`);
  });
});
