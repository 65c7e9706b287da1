// The pool's data device as a file: data block N at byte N * block size. Discards passed down
// punch holes (fallocate PUNCH_HOLE | KEEP_SIZE) so freed blocks give their space back. Node has
// no fallocate, so holes are punched by util-linux's `fallocate`, a process per hole run, a shell
// per batch (docs/decisions.md has the measurements). Holes are queued, and punched sorted and
// merged when many are waiting at a commit or at the end: nothing reads a freed block, and one
// handed out again has its queued hole cancelled first.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { InputError } from '../io/block-io.js';

/** Hole runs per shell (each a fallocate process). */
const PUNCHES_PER_BATCH = 2000;
/** Hole runs queued before a commit punches them. */
const PUNCHES_QUEUED = 4096;

export class DataFile {
  private readonly fd: number;
  /** Runs of data blocks to punch, [first, count]: freed by committed transactions, and by the open one. */
  private committed: Array<[number, number]> = [];
  private pending: Array<[number, number]> = [];
  punched = 0;

  constructor(readonly path: string, readonly blockBytes: number, nrBlocks: number) {
    try {
      this.fd = fs.openSync(path, fs.existsSync(path) ? 'r+' : 'w+');
    } catch (e) {
      throw new InputError(`${path}: ${(e as Error).message}`);
    }
    this.grow(nrBlocks);
  }

  /** Makes room for `nrBlocks` blocks (sparse): a data device never shrinks under a pool. */
  grow(nrBlocks: number): void {
    const st = fs.fstatSync(this.fd);
    if (!st.isFile()) return;
    const size = nrBlocks * this.blockBytes;
    if (st.size < size) fs.ftruncateSync(this.fd, size);
  }

  read(dataBlock: number, byteOffset: number, buf: Buffer, at: number, length: number): void {
    const n = fs.readSync(this.fd, buf, at, length, dataBlock * this.blockBytes + byteOffset);
    if (n < length) buf.fill(0, at + n, at + length);
  }

  write(dataBlock: number, byteOffset: number, buf: Buffer, at: number, length: number): void {
    fs.writeSync(this.fd, buf, at, length, dataBlock * this.blockBytes + byteOffset);
  }

  /** Queues a hole for `dataBlock` (merged with a neighbouring one). */
  punch(dataBlock: number): void {
    const last = this.pending[this.pending.length - 1];
    if (last && last[0] + last[1] === dataBlock) last[1]++;
    else this.pending.push([dataBlock, 1]);
    this.punched++;
  }

  /** Drops a queued hole: the block was handed out again before the holes were punched. */
  cancelPunch(dataBlock: number): void {
    for (const queue of [this.pending, this.committed]) {
      for (let i = 0; i < queue.length; i++) {
        const [first, count] = queue[i];
        if (dataBlock < first || dataBlock >= first + count) continue;
        const after: Array<[number, number]> = [];
        if (dataBlock > first) after.push([first, dataBlock - first]);
        if (dataBlock + 1 < first + count) after.push([dataBlock + 1, first + count - dataBlock - 1]);
        queue.splice(i, 1, ...after);
        this.punched--;
        return;
      }
    }
  }

  /** Forgets the holes of the open transaction: its discards were undone (an abort). */
  dropPunches(): void {
    for (const [, count] of this.pending) this.punched -= count;
    this.pending = [];
  }

  /** At a commit: the open transaction's holes are for good; punched once many are waiting. */
  commitPunches(): void {
    for (const run of this.pending) this.committed.push(run);
    this.pending = [];
    if (this.committed.length >= PUNCHES_QUEUED) this.flushPunches();
  }

  /** Punches every committed hole, in order, neighbouring runs merged. */
  flushPunches(): void {
    this.committed.sort((a, b) => a[0] - b[0]);
    const merged: Array<[number, number]> = [];
    for (const run of this.committed) {
      const last = merged[merged.length - 1];
      if (last && last[0] + last[1] === run[0]) last[1] += run[1];
      else merged.push([run[0], run[1]]);
    }
    this.committed = merged;
    while (this.committed.length > 0) {
      const batch = this.committed.splice(0, PUNCHES_PER_BATCH);
      const args: string[] = [];
      for (const [first, count] of batch) args.push(String(first * this.blockBytes), String(count * this.blockBytes));
      const script = 'f=$1; shift; while [ $# -gt 0 ]; do fallocate --punch-hole --keep-size --offset "$1" --length "$2" "$f" || exit 1; shift 2; done';
      const r = spawnSync('sh', ['-c', script, 'sh', this.path, ...args], { encoding: 'utf8' });
      if (r.error || r.status !== 0) {
        throw new InputError(`${this.path}: punching holes for discarded blocks failed: ${(r.stderr || r.error?.message || '').trim()}`);
      }
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
