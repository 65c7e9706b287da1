// The incremental-backup walkthrough of the README, run end to end on a pool thin_replay writes:
// a volume written, a snapshot of it taken and a metadata snapshot reserved, the snapshot backed
// up whole (thin_dump -m, thin_extract -m), more writes, a second snapshot and a new metadata
// snapshot, and thin_delta -m between the two says which blocks changed: exactly those the
// traces touched. Copying those ranges alone into the backup makes it equal, block for block, to
// the new snapshot: per the test's own model of the traces (which line last wrote each block,
// and TRACE.md's content for it), and per thin_extract.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fillContent } from '../src/engine/content.js';
import { rng } from './support/generate.js';
import { runOurs, tempDir } from './support/reference.js';

const dir = tempDir('thin-walkthrough-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const BLOCK_SECTORS = 128;
const BLOCK_BYTES = BLOCK_SECTORS * 512;
const NR_DATA_BLOCKS = 4096;
const VOLUME_BLOCKS = 1024;

/**
 * The pool: each step is a trace file replayed by thin_replay on the same metadata and data
 * files (the first formats them). The model is the test's own: per device and block, the line of
 * the step's trace that last wrote it (a write's content is TRACE.md's stamp of line and block).
 */
class ReplayedPool {
  readonly metadata = path.join(dir, 'tmeta.bin');
  readonly data = path.join(dir, 'tdata.bin');
  private readonly devices = new Map<number, Map<number, number>>();
  private step = 0;

  run(lines: string[]): void {
    const trace = path.join(dir, `step-${++this.step}.trace`);
    fs.writeFileSync(trace, lines.join('\n') + '\n');
    const r = runOurs('thin_replay', [trace, '--metadata', this.metadata, '--data', this.data, '--no-sync']);
    if (r.status !== 0) throw new Error(`thin_replay ${path.basename(trace)}: ${r.stderr}${r.stdout}`);
    lines.forEach((text, i) => this.model(text, i + 1));
  }

  private model(text: string, line: number): void {
    const [op, ...args] = text.split(' ');
    const [a, b, c] = args.map(Number);
    if (op === 'create_thin') this.devices.set(a, new Map());
    else if (op === 'create_snap') this.devices.set(a, new Map(this.devices.get(b)));
    else if (op === 'write') for (let i = 0; i < (c || 1); i++) this.devices.get(a)!.set(b + i, line);
    else if (op === 'discard') for (let i = 0; i < (c || 1); i++) this.devices.get(a)!.delete(b + i);
  }

  /** The write (step and line) a device's block holds, or undefined when it is unmapped. */
  writer(devId: number, block: number): number | undefined {
    return this.devices.get(devId)!.get(block);
  }

  /** What the model says a device's block holds: zeroes when unmapped. */
  content(devId: number, block: number): Buffer {
    const buf = Buffer.alloc(BLOCK_BYTES);
    const line = this.writer(devId, block);
    if (line !== undefined) fillContent(buf, 0, line, block, 0, BLOCK_SECTORS);
    return buf;
  }
}

const pool = new ReplayedPool();

/** Deterministic pseudo-random block numbers. */
function* blocks(seed: number, n: number): Generator<number> {
  const rand = rng(seed);
  for (let i = 0; i < n; i++) yield Math.floor(rand() * VOLUME_BLOCKS);
}

interface DeltaRange {
  kind: string;
  begin: number;
  length: number;
  data: number;
}

/** thin_delta --verbose's ranges, read line by line as a backup tool would. */
function parseDelta(xml: string): DeltaRange[] {
  const ranges: DeltaRange[] = [];
  let kind = '';
  for (const line of xml.split('\n')) {
    const open = /^ {4}<(left_only|right_only|different|same)>$/.exec(line);
    if (open) kind = open[1];
    const r = /^ {6}<range begin="(\d+)" (?:data_begin="(\d+)"|left_data_begin="\d+" right_data_begin="(\d+)") length="(\d+)"\/>$/.exec(line);
    if (r) ranges.push({ kind, begin: Number(r[1]), length: Number(r[4]), data: Number(r[2] ?? r[3]) });
  }
  return ranges;
}

function readBlock(fd: number, block: number): Buffer {
  const buf = Buffer.alloc(BLOCK_BYTES);
  fs.readSync(fd, buf, 0, BLOCK_BYTES, block * BLOCK_BYTES);
  return buf;
}

/** The image equals what the model says the device holds, block for block. */
function expectVolume(image: string, devId: number): void {
  const fd = fs.openSync(image, 'r');
  try {
    for (let b = 0; b < VOLUME_BLOCKS; b++) {
      if (!readBlock(fd, b).equals(pool.content(devId, b))) expect.fail(`${path.basename(image)}: block ${b} differs from device ${devId}`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

describe('the incremental backup walkthrough', () => {
  it('full backup, thin_delta between two snapshots, the backup brought up to date from the changed ranges alone', () => {
    // The backup tools read the held metadata snapshot, as backup software does on a live pool.
    const m = ['-m'];
    // The volume (device 1) written, then a snapshot of it (device 2) to back up.
    pool.run([
      `pool data_block_size=${BLOCK_SECTORS} nr_data_blocks=${NR_DATA_BLOCKS} zero=on`,
      'create_thin 1', ...[...blocks(1, 600)].map((b) => `write 1 ${b}`), 'write 1 100 40',
      'create_snap 2 1', 'reserve_metadata_snap',
    ]);

    // Full backup: the metadata (for the record) and the snapshot's content.
    const dump = runOurs('thin_dump', [...m, '-o', path.join(dir, 'backup-1.xml'), pool.metadata]);
    expect(dump.status, dump.stderr).toBe(0);
    const backup = path.join(dir, 'backup.img');
    const full = runOurs('thin_extract', [...m, '--metadata', pool.metadata, '--data', pool.data, '--dev-id', '2', '-o', backup, '--size', String(VOLUME_BLOCKS * BLOCK_BYTES)]);
    expect(full.status, full.stderr).toBe(0);
    expectVolume(backup, 2);

    // More writes (new blocks and overwrites) and discards on the volume, then the next snapshot.
    const touched = new Set<number>();
    const later: string[] = [];
    for (const b of blocks(2, 150)) later.push(`write 1 ${b}`), touched.add(b);
    for (const b of blocks(3, 30)) later.push(`discard 1 ${b}`), touched.add(b);
    for (const b of blocks(4, 20)) later.push(`write 1 ${b}`), touched.add(b);
    pool.run(['release_metadata_snap', ...later, 'create_snap 3 1', 'reserve_metadata_snap']);

    // The delta between the snapshots is exactly what the model says changed.
    const delta = runOurs('thin_delta', [...m, '--verbose', '--snap1', '2', '--snap2', '3', pool.metadata]);
    expect(delta.status, delta.stderr).toBe(0);
    const ranges = parseDelta(delta.stdout);
    const changed = new Set<number>();
    for (const r of ranges) if (r.kind !== 'same') for (let i = 0; i < r.length; i++) changed.add(r.begin + i);
    const expected = [...touched].filter((b) => pool.writer(2, b) !== undefined || pool.writer(3, b) !== undefined);
    expect([...changed].sort((a, b) => a - b)).toEqual(expected.sort((a, b) => a - b));
    expect(changed.size).toBeGreaterThan(100);

    // Incremental update: copy the new snapshot's changed ranges, drop the ones it no longer maps.
    const out = fs.openSync(backup, 'r+');
    const data = fs.openSync(pool.data, 'r');
    try {
      for (const r of ranges) {
        if (r.kind === 'same') continue;
        for (let i = 0; i < r.length; i++) {
          const block = r.kind === 'left_only' ? Buffer.alloc(BLOCK_BYTES) : readBlock(data, r.data + i);
          fs.writeSync(out, block, 0, BLOCK_BYTES, (r.begin + i) * BLOCK_BYTES);
        }
      }
    } finally {
      fs.closeSync(out);
      fs.closeSync(data);
    }
    expectVolume(backup, 3);
    const fresh = path.join(dir, 'fresh.img');
    expect(runOurs('thin_extract', [...m, '--metadata', pool.metadata, '--data', pool.data, '--dev-id', '3', '-o', fresh, '--size', String(VOLUME_BLOCKS * BLOCK_BYTES)]).status).toBe(0);
    expect(fs.readFileSync(backup).equals(fs.readFileSync(fresh))).toBe(true);
  });
});
