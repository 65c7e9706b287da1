// thin_replay: replays a trace of pool operations and IO on a pool (metadata file, optional data
// file), checking it against the model at every step.
import { crashSweep } from '../engine/crash-sweep.js';
import { Problem, ReplaySummary, replay } from '../engine/replay.js';
import { UsageError, newProgram, progressBar, runTool } from './common.js';
import { countValue } from './options.js';

const NAME = 'thin_replay';

interface Flags {
  metadata?: string;
  data?: string;
  seed?: string;
  preFixDiscardOrdering?: boolean;
  externalOrigin?: string[];
  verifyEveryCommit?: boolean;
  crashAt?: string;
  crashSweep?: boolean;
  keepGoing?: boolean;
  sync?: boolean;
  quiet?: boolean;
  json?: boolean;
}

void runTool(NAME, (argv) => {
  const program = newProgram(NAME, 'Replays a trace of thin-pool operations and IO on a pool, checking it against a model at every step.')
    .argument('<trace>', 'the trace file (format: docs/TRACE.md)')
    .option('--metadata <file>', 'the pool\'s metadata: formatted from the trace\'s pool line if empty or missing, else opened')
    .option('--data <file>', 'the pool\'s data file (made if missing); without it no data is written or read')
    .option('--seed <n>', 'seed for interleaving parallel IO')
    .option('--pre-fix-discard-ordering', 'count IO as in flight before locking its cell, as dm-thin did before its discard deadlock fix (parallel IO can then deadlock)')
    .option('--external-origin <D=FILE>', 'FILE is the external origin of device D (the trace\'s external_origin D line); repeatable', (v: string, all: string[] = []) => [...all, v])
    .option('--verify-every-commit', 'run thin_check on the metadata after every commit')
    .option('--crash-at <n>', 'lose every metadata write after the Nth, reopen, and require the last commit')
    .option('--crash-sweep', 'crash after every metadata write in turn, each time requiring the last commit')
    .option('--keep-going', 'go on after a refusal or mismatch')
    .option('--no-sync', 'do not sync the metadata at each commit (faster; for scratch pools)')
    .option('-q, --quiet', 'no summary, no progress: exit status only')
    .option('--json', 'print the summary as JSON');
  program.parse(argv, { from: 'user' });
  const flags = program.opts<Flags>();
  const trace = program.args[0];
  if (!flags.metadata) throw new UsageError('--metadata <file> is required');
  if (flags.crashAt !== undefined && flags.crashSweep) throw new UsageError('--crash-at and --crash-sweep go separately');
  const quiet = !!flags.quiet;
  const opts = {
    trace,
    metadata: flags.metadata,
    data: flags.data,
    seed: flags.seed === undefined ? undefined : countValue('--seed', flags.seed),
    preFixDiscardOrdering: !!flags.preFixDiscardOrdering,
    externalOrigins: externalOrigins(flags.externalOrigin ?? []),
    verifyEveryCommit: !!flags.verifyEveryCommit,
    crashAt: flags.crashAt === undefined ? undefined : countValue('--crash-at', flags.crashAt),
    keepGoing: !!flags.keepGoing,
    sync: flags.sync !== false,
  };

  const print = (text: string): void => {
    if (!quiet) process.stdout.write(text);
  };
  const problemLines = (problems: Problem[]): void => {
    if (quiet || flags.json) return;
    for (const p of problems) process.stderr.write(`${NAME}: ${p.line > 0 ? `${trace}:${p.line}: ` : ''}${p.message}\n`);
  };

  if (flags.crashSweep) {
    const bar = progressBar('crash points', 1, quiet);
    let started = false;
    let sweepBar = bar;
    const sweep = crashSweep(opts, (done, total) => {
      if (!started) {
        sweepBar.stop();
        sweepBar = progressBar('crash points', total, quiet);
        started = true;
      }
      sweepBar.update(done);
    });
    sweepBar.stop();
    problemLines(sweep.full.problems);
    for (const f of sweep.failed) problemLines(f.problems.map((p) => ({ ...p, message: `crash after metadata write ${f.at}: ${p.message}` })));
    if (flags.json) print(`${JSON.stringify({ ...sweep.full, crashSweep: { points: sweep.points, failed: sweep.failed } }, null, 2)}\n`);
    else {
      print(describe(sweep.full));
      print(`crash sweep: ${sweep.points} crash points, ${sweep.failed.length === 0 ? 'every one recovered the last commit' : `${sweep.failed.length} did not recover the last commit (first: after write ${sweep.failed[0].at})`}\n`);
    }
    return sweep.ok ? 0 : 1;
  }

  const bar = progressBar('replaying', 1, quiet);
  let progress = bar;
  let total = 0;
  const summary = replay({
    ...opts,
    onProgress: (done, size) => {
      if (size !== total) {
        progress.stop();
        progress = progressBar('replaying', size, quiet);
        total = size;
      }
      progress.update(done);
    },
  });
  progress.stop();
  problemLines(summary.problems);
  print(flags.json ? `${JSON.stringify(summary, null, 2)}\n` : describe(summary));
  return summary.ok ? 0 : 1;
});

/** `--external-origin D=FILE` values, by device id. */
function externalOrigins(values: string[]): Map<number, string> {
  const out = new Map<number, string>();
  for (const v of values) {
    const m = /^(\d+)=(.+)$/.exec(v);
    if (!m) throw new UsageError(`--external-origin ${v}: expected D=FILE (a device id, then the origin file)`);
    const dev = countValue('--external-origin', m[1]);
    if (out.has(dev)) throw new UsageError(`--external-origin: device ${dev} given twice`);
    out.set(dev, m[2]);
  }
  return out;
}

function describe(s: ReplaySummary): string {
  const d = s.dataBlocks;
  const m = s.metadataBlocks;
  const lines = [
    `${s.trace}: ${s.operations} operations, ${s.commits} commits${s.mode === 'write' ? '' : `, pool ${s.mode}`}`,
    `  data blocks: ${d.allocated} allocated (${d.copied} copied on write), ${d.shared} shared, ${d.freed} freed (${d.punched} punched out of the data file)`,
    `  metadata blocks: ${m.used} of ${m.total} in use, ${m.writes} written`,
  ];
  if (s.inFlight.blocks > 0) lines.push(`  IO in flight: ${s.inFlight.blocks} parallel blocks, ${s.inFlight.bios} bios, ${s.inFlight.waits} waited for a cell or earlier IO (seed ${s.inFlight.seed})`);
  for (const c of s.modes) lines.push(`  ${c.line > 0 ? `line ${c.line}` : 'at open'}: pool ${c.mode} (${c.cause})`);
  if (s.crash) lines.push(`  crash after metadata write ${s.crash.at}: ${s.crash.happened ? `happened after ${s.crash.commitsBefore} commits` : 'never reached'}`);
  const problems = s.problems.length === 0 ? '' : `; ${s.problems.length} problem${s.problems.length === 1 ? '' : 's'} (above)`;
  const v = s.verification === 'passed' ? 'passed: the metadata equals the model and thin_check accepts it' : 'FAILED (above)';
  lines.push(`  verification: ${v}${problems}`);
  return `${lines.join('\n')}\n`;
}
