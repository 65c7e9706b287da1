// The crash sweep: the trace replayed once to count its metadata writes, then once per write N,
// losing every write after the Nth; each time the pool reopened must be the last commit's.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Problem, ReplayOptions, ReplaySummary, replay } from './replay.js';

export interface CrashPoint {
  at: number;
  problems: Problem[];
}

export interface SweepSummary {
  /** The run without a crash, on the files given. */
  full: ReplaySummary;
  /** Crash points tried: after each metadata write but the last. */
  points: number;
  failed: CrashPoint[];
  ok: boolean;
}

/** Problems that mean the pool is wrong (refusals the trace itself provokes are not). */
const wrongness = (p: Problem): boolean => p.kind === 'mismatch' || p.kind === 'check';

export function crashSweep(opts: ReplayOptions, onPoint?: (done: number, total: number) => void): SweepSummary {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-replay-sweep-'));
  try {
    // Each run starts from what the files held before (a pool to continue, or nothing).
    const originals: Array<[string, string]> = [];
    for (const [name, file] of [['metadata', opts.metadata], ['data', opts.data]] as const) {
      if (file && fs.existsSync(file)) {
        const copy = path.join(dir, `original-${name}`);
        fs.copyFileSync(file, copy);
        originals.push([file, copy]);
      }
    }
    const scratch = { metadata: path.join(dir, 'metadata'), data: opts.data ? path.join(dir, 'data') : undefined };
    const fresh = (): void => {
      for (const f of [scratch.metadata, scratch.data]) if (f) fs.rmSync(f, { force: true });
      for (const [file, copy] of originals) fs.copyFileSync(copy, file === opts.metadata ? scratch.metadata : scratch.data!);
    };
    const full = replay({ ...opts, onProgress: undefined });
    const points = full.metadataBlocks.writes;
    const failed: CrashPoint[] = [];
    for (let at = 0; at < points; at++) {
      fresh();
      const r = replay({ ...opts, ...scratch, crashAt: at, keepGoing: true, onProgress: undefined });
      const problems = r.problems.filter(wrongness);
      if (r.verification === 'failed' || problems.length > 0) failed.push({ at, problems });
      onPoint?.(at + 1, points);
    }
    return { full, points, failed, ok: full.ok && failed.length === 0 };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
