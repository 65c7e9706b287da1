// The pool's data device as a file: data block N at byte N * block size. Discards passed down
// punch holes (fallocate PUNCH_HOLE | KEEP_SIZE, through io/discard.ts) so freed blocks give their
// space back. Holes are queued and punched at the commit that frees the blocks for good, sorted and
// neighbours merged: until then an abort or a crash brings the blocks back, data included. A block
// handed out again has its queued hole cancelled first.
import * as fs from 'node:fs';
import { InputError } from '../io/block-io.js';
import { punchHole } from '../io/discard.js';

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

  /** At a commit: the open transaction's holes are for good, and punched. */
  commitPunches(): void {
    for (const run of this.pending) this.committed.push(run);
    this.pending = [];
    this.flushPunches();
  }

  /** Punches every committed hole, in order, neighbouring runs merged. */
  flushPunches(): void {
    if (this.committed.length === 0) return;
    this.committed.sort((a, b) => a[0] - b[0]);
    let [first, count] = this.committed[0];
    for (let i = 1; i <= this.committed.length; i++) {
      const run = this.committed[i];
      if (run && first + count === run[0]) {
        count += run[1];
        continue;
      }
      punchHole(this.fd, this.path, first * this.blockBytes, count * this.blockBytes);
      if (run) [first, count] = run;
    }
    this.committed = [];
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
