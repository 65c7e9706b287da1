// Seeded schedules of IO in flight: random `parallel` blocks of writes, partial writes, discards,
// reads, snapshots and flushes on the same and neighbouring blocks, each replayed under many
// scheduler seeds. The replay itself is the oracle (no deadlock, every block as some serial
// order of its operations, the metadata as the model, our check after every commit); `onRun`
// lets a caller add the reference tools on the files each run leaves.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { seededRandom } from './io-path.js';
import { Problem, replay } from './replay.js';

/** Blocks the IO goes to: few, so operations meet on the same and neighbouring blocks. */
const BLOCKS = 4;

/**
 * A trace text of `blocks` parallel blocks on a small pool (two devices, one a snapshot, some
 * blocks mapped and shared), made from `seed`.
 */
export function randomParallelTrace(seed: number, blocks = 3): string {
  const random = seededRandom(seed);
  const pick = (n: number): number => Math.floor(random() * n);
  const spb = 128;
  const lines = [`pool data_block_size=${spb} nr_data_blocks=256`, 'create_thin 1', `write 1 0 ${1 + pick(BLOCKS)}`, 'create_snap 2 1', `write 2 ${pick(BLOCKS)}`, 'commit'];
  const devices = [1, 2];
  let nextDev = 3;
  for (let p = 0; p < blocks; p++) {
    lines.push('parallel');
    let snapped = false;
    for (let i = 0, n = 2 + pick(6); i < n; i++) {
      const dev = devices[pick(devices.length)];
      const block = pick(BLOCKS);
      const r = random();
      if (r < 0.3) lines.push(`write ${dev} ${block}`);
      else if (r < 0.45) {
        const sector = block * spb + pick(spb);
        lines.push(`write_sectors ${dev} ${sector} ${1 + pick(Math.min(2 * spb, BLOCKS * spb - sector))}`);
      } else if (r < 0.7) lines.push(`discard ${dev} ${block}${random() < 0.3 ? ` ${1 + pick(BLOCKS - block)}` : ''}`);
      else if (r < 0.88) lines.push(`read ${dev} ${block}`);
      else if (r < 0.94 && !snapped) {
        // A snapshot in flight; the new device gets IO only in later blocks.
        snapped = true;
        lines.push(`create_snap ${nextDev} ${dev}`);
      } else lines.push(`flush ${dev}`);
    }
    lines.push('end');
    if (snapped) devices.push(nextDev++);
    lines.push(...devices.map((d) => `read ${d} 0 ${BLOCKS}`));
    if (random() < 0.5) lines.push('commit');
  }
  return `${lines.join('\n')}\n`;
}

export interface ScheduleRun {
  trace: number;
  seed: number;
  problems: Problem[];
  ok: boolean;
}

export interface SchedulesSummary {
  runs: number;
  failed: ScheduleRun[];
  /** Runs whose IO waited for a cell or earlier IO at least once: interleavings that matter. */
  waited: number;
  deadlocks: number;
  bios: number;
}

export interface SchedulesOptions {
  traces: number;
  seedsPerTrace: number;
  /** The first trace's seed (traces are firstTrace, firstTrace + 1, ...). */
  firstTrace?: number;
  preFixDiscardOrdering?: boolean;
  /** With a data file: every read compared with the data read back. */
  data?: boolean;
  /** Each run's files, after it (metadata, data). */
  onRun?: (run: ScheduleRun, files: { metadata: string; data?: string }) => void;
  /** After every commit of every run, with the metadata file (the reference check, say). */
  afterCommit?: (metadata: string) => void;
  /** Stop at the first failed run. */
  stopAtFailure?: boolean;
}

/** Replays `traces` random traces under `seedsPerTrace` scheduler seeds each, in this process. */
export function runSchedules(opts: SchedulesOptions): SchedulesSummary {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-replay-schedules-'));
  const summary: SchedulesSummary = { runs: 0, failed: [], waited: 0, deadlocks: 0, bios: 0 };
  try {
    const trace = path.join(dir, 'trace');
    const metadata = path.join(dir, 'metadata');
    const data = opts.data ? path.join(dir, 'data') : undefined;
    const first = opts.firstTrace ?? 1;
    for (let t = first; t < first + opts.traces; t++) {
      fs.writeFileSync(trace, randomParallelTrace(t));
      for (let seed = 1; seed <= opts.seedsPerTrace; seed++) {
        for (const f of [metadata, data]) if (f) fs.rmSync(f, { force: true });
        const s = replay({ trace, metadata, data, seed, preFixDiscardOrdering: opts.preFixDiscardOrdering, verifyEveryCommit: true, keepGoing: true, sync: false, cacheBlocks: 256, afterCommit: opts.afterCommit && (() => opts.afterCommit!(metadata)) });
        const run: ScheduleRun = { trace: t, seed, problems: s.problems, ok: s.ok };
        summary.runs++;
        summary.bios += s.inFlight.bios;
        if (s.inFlight.waits > 0) summary.waited++;
        if (s.problems.some((p) => p.kind === 'deadlock')) summary.deadlocks++;
        opts.onRun?.(run, { metadata, data });
        if (!run.ok) {
          summary.failed.push(run);
          if (opts.stopAtFailure) return summary;
        }
      }
    }
    return summary;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
