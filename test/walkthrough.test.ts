// The incremental-backup walkthrough of the README, run end to end: a pool is written, a thin
// snapshot taken and backed up whole (thin_dump, thin_extract), more is written, a second snapshot
// taken, and thin_delta between the two says which blocks changed: exactly those the pool's model
// says changed. Copying those ranges alone into the backup makes it equal, block for block, to
// the new snapshot (per the model, and per thin_extract).
//
// The pool comes from a driver that takes trace lines (TRACE.md). Until the engine (thin_replay)
// is on main, XmlPool plays them on a model, writes the data file itself and the metadata with
// our thin_restore; it cannot hold a metadata snapshot, so the tools read the live metadata of
// the (inactive) pool. Swapping in thin_replay is a second driver with the same three members,
// whose pool also holds a metadata snapshot (the tools then run with -m).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rng } from './support/generate.js';
import { runOurs, tempDir } from './support/reference.js';

const dir = tempDir('thin-walkthrough-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const BLOCK_SECTORS = 128;
const BLOCK_BYTES = BLOCK_SECTORS * 512;
const NR_DATA_BLOCKS = 4096;
const VOLUME_BLOCKS = 1024;

interface BackupPool {
  readonly metadata: string;
  readonly data: string;
  /** Whether the pool holds a metadata snapshot (the tools then read it with -m). */
  readonly holdsMetadataSnap: boolean;
  /** Plays trace lines on the pool; `commit` makes them durable. */
  run(lines: string[]): void;
  /** What the model says a device's block holds, or null when it is unmapped. */
  content(devId: number, block: number): Buffer | null;
}

interface Mapping {
  data: number;
  time: number;
}

/** The pool as a model; the metadata written by our thin_restore at each commit. */
class XmlPool implements BackupPool {
  readonly holdsMetadataSnap = false;
  private readonly devices = new Map<number, { map: Map<number, Mapping>; creation: number; snap: number }>();
  private readonly contents = new Map<number, number>(); // data block -> write number
  private time = 0;
  private nextData = 0;
  private writes = 0;
  private readonly fd: number;

  constructor(readonly metadata: string, readonly data: string) {
    this.fd = fs.openSync(data, 'w+');
    fs.ftruncateSync(this.fd, NR_DATA_BLOCKS * BLOCK_BYTES);
  }

  run(lines: string[]): void {
    for (const line of lines) {
      const [op, ...args] = line.split(' ');
      const [a, b, c] = args.map(Number);
      switch (op) {
        case 'create_thin':
          this.devices.set(a, { map: new Map(), creation: this.time, snap: this.time });
          break;
        case 'create_snap': {
          this.time++;
          const origin = this.devices.get(b)!;
          origin.snap = this.time;
          this.devices.set(a, { map: new Map(origin.map), creation: this.time, snap: this.time });
          break;
        }
        case 'write':
          for (let i = 0; i < (c || 1); i++) this.write(a, b + i);
          break;
        case 'discard':
          for (let i = 0; i < (c || 1); i++) this.devices.get(a)!.map.delete(b + i);
          break;
        case 'commit':
          this.commit();
          break;
        default:
          throw new Error(`XmlPool: ${op} is not modelled`);
      }
    }
  }

  /** As the kernel: a block mapped before the device's last snapshot is copied, else overwritten. */
  private write(devId: number, block: number): void {
    const dev = this.devices.get(devId)!;
    const old = dev.map.get(block);
    const data = old && old.time >= dev.snap ? old.data : this.nextData++;
    if (data >= NR_DATA_BLOCKS) throw new Error('XmlPool: out of data space');
    dev.map.set(block, { data, time: this.time });
    this.contents.set(data, ++this.writes);
    fs.writeSync(this.fd, XmlPool.pattern(this.writes, block), 0, BLOCK_BYTES, data * BLOCK_BYTES);
  }

  private static pattern(write: number, block: number): Buffer {
    const buf = Buffer.alloc(BLOCK_BYTES);
    for (let off = 0; off < BLOCK_BYTES; off += 8) buf.writeUInt32LE(write, off), buf.writeUInt32LE(block ^ off, off + 4);
    return buf;
  }

  content(devId: number, block: number): Buffer | null {
    const m = this.devices.get(devId)!.map.get(block);
    return m ? XmlPool.pattern(this.contents.get(m.data)!, block) : null;
  }

  private commit(): void {
    const lines = [`<superblock uuid="" time="${this.time}" transaction="0" flags="0" version="2" data_block_size="${BLOCK_SECTORS}" nr_data_blocks="${NR_DATA_BLOCKS}">`];
    for (const [id, dev] of [...this.devices].sort((x, y) => x[0] - y[0])) {
      lines.push(`<device dev_id="${id}" mapped_blocks="${dev.map.size}" transaction="0" creation_time="${dev.creation}" snap_time="${dev.snap}">`);
      for (const [block, m] of [...dev.map].sort((x, y) => x[0] - y[0])) {
        lines.push(`<single_mapping origin_block="${block}" data_block="${m.data}" time="${m.time}"/>`);
      }
      lines.push('</device>');
    }
    lines.push('</superblock>');
    const xml = path.join(dir, 'commit.xml');
    fs.writeFileSync(xml, lines.join('\n') + '\n');
    fs.writeFileSync(this.metadata, '');
    fs.truncateSync(this.metadata, 16 << 20);
    const r = runOurs('thin_restore', ['-i', xml, '-o', this.metadata]);
    if (r.status !== 0) throw new Error(`commit: ${r.stderr}`);
  }
}

let pool: BackupPool;
beforeAll(() => {
  pool = new XmlPool(path.join(dir, 'tmeta.bin'), path.join(dir, 'tdata.bin'));
});

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
  const zero = Buffer.alloc(BLOCK_BYTES);
  try {
    for (let b = 0; b < VOLUME_BLOCKS; b++) {
      if (!readBlock(fd, b).equals(pool.content(devId, b) ?? zero)) expect.fail(`${path.basename(image)}: block ${b} differs from device ${devId}`);
    }
  } finally {
    fs.closeSync(fd);
  }
}

describe('the incremental backup walkthrough', () => {
  it('full backup, thin_delta between two snapshots, the backup brought up to date from the changed ranges alone', () => {
    const m = pool.holdsMetadataSnap ? ['-m'] : [];
    // The volume (device 1) written, then a snapshot of it (device 2) to back up.
    pool.run(['create_thin 1', ...[...blocks(1, 600)].map((b) => `write 1 ${b}`), 'write 1 100 40', 'commit']);
    pool.run(['create_snap 2 1', 'commit']);

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
    pool.run([...later, 'commit', 'create_snap 3 1', 'commit']);

    // The delta between the snapshots is exactly what the model says changed.
    const delta = runOurs('thin_delta', [...m, '--verbose', '--snap1', '2', '--snap2', '3', pool.metadata]);
    expect(delta.status, delta.stderr).toBe(0);
    const ranges = parseDelta(delta.stdout);
    const changed = new Set<number>();
    for (const r of ranges) if (r.kind !== 'same') for (let i = 0; i < r.length; i++) changed.add(r.begin + i);
    const expected = [...touched].filter((b) => pool.content(2, b) !== null || pool.content(3, b) !== null);
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
