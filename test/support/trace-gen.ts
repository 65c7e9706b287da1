// Seeded random traces mixing every operation the engine runs: devices and snapshots made and
// deleted, whole and partial writes, discards, reads, commits, flushes, status, sleeps, the
// metadata snapshot, transaction ids, growing the data device. Mostly valid; a few operations
// are meant to be refused (a second metadata snapshot, a wrong transaction id, IO to a deleted
// device), and the data device is small enough to run out now and then.
import { rng } from './generate.js';

export interface RandomTraceOptions {
  seed: number;
  operations: number;
  dataBlockSize?: number;
  nrDataBlocks?: number;
  /** Virtual blocks per device that IO touches (small, so snapshots share and writes collide). */
  span?: number;
}

export function randomTrace(o: RandomTraceOptions): string {
  const rand = rng(o.seed);
  const int = (n: number): number => Math.floor(rand() * n);
  const blockSize = o.dataBlockSize ?? 128;
  let nrData = o.nrDataBlocks ?? 3000;
  const span = o.span ?? 800;
  const zero = rand() < 0.5 ? 'on' : 'off';
  const out = [`pool data_block_size=${blockSize} nr_data_blocks=${nrData} metadata_blocks=4096 zero=${zero} error_if_no_space=on`];
  const devs: number[] = [];
  let nextId = 0;
  let held = false;
  let transaction = 0;
  const pick = (): number => devs[int(devs.length)];
  for (let i = 0; i < o.operations; i++) {
    const r = rand();
    if (devs.length === 0 || r < 0.02) {
      out.push(`create_thin ${nextId}`);
      devs.push(nextId++);
    } else if (r < 0.05 && devs.length < 16) {
      out.push(`create_snap ${nextId} ${pick()}`);
      devs.push(nextId++);
    } else if (r < 0.065 && devs.length > 2) {
      const at = int(devs.length);
      out.push(`delete ${devs[at]}`);
      devs.splice(at, 1);
    } else if (r < 0.072) {
      const right = rand() < 0.8;
      out.push(`set_transaction_id ${right ? transaction : transaction + 1} ${transaction + 1}`);
      if (right) transaction++;
    } else if (r < 0.082) {
      if (held && rand() < 0.3) out.push('reserve_metadata_snap');
      else {
        out.push(held ? 'release_metadata_snap' : 'reserve_metadata_snap');
        held = !held;
      }
    } else if (r < 0.4) {
      out.push(`write ${pick()} ${int(span)} ${1 + int(rand() < 0.7 ? 4 : 40)}`);
    } else if (r < 0.48) {
      out.push(`write_sectors ${pick()} ${int(span * blockSize)} ${1 + int(rand() < 0.7 ? blockSize : 3 * blockSize)}`);
    } else if (r < 0.58) {
      out.push(`discard ${pick()} ${int(span)} ${1 + int(rand() < 0.7 ? 8 : 100)}`);
    } else if (r < 0.62) {
      out.push(`discard_sectors ${pick()} ${int(span * blockSize)} ${1 + int(4 * blockSize)}`);
    } else if (r < 0.86) {
      // Mostly where writes went, so reads find data to compare.
      out.push(`read ${pick()} ${int(span)} ${1 + int(40)}`);
    } else if (r < 0.89) {
      out.push('commit');
    } else if (r < 0.91) {
      out.push(`flush ${pick()}`);
    } else if (r < 0.92) {
      out.push('status');
    } else if (r < 0.95) {
      out.push(`sleep ${(0.2 + rand() * 2).toFixed(2)}`);
    } else if (r < 0.958) {
      nrData += 50 + int(500);
      out.push(`resize_data ${nrData}`);
    } else if (r < 0.962) {
      out.push(`write ${nextId + 1000} 0`);
    } else {
      out.push(`write ${pick()} ${int(span)} 1`);
    }
  }
  return out.join('\n') + '\n';
}
