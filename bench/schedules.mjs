// Tens of thousands of seeded schedules of IO in flight (npm run schedules [-- TRACES SEEDS
// [every-commit]]): random parallel blocks of writes, discards, reads, snapshots and flushes on
// neighbouring blocks, each trace under SEEDS scheduler seeds, with a data file; the reference
// thin_check on every run's final metadata, or with `every-commit` after every commit. Then the
// pre-fix discard ordering on the same traces: how many seeds deadlock, and the first. Results
// go in docs/engine-schedules.md by hand.
import { spawnSync } from 'node:child_process';
import { randomParallelTrace, runSchedules } from '../dist/engine/schedules.js';
import { referenceTools } from './references.mjs';

const traces = Number(process.argv[2] ?? 2000);
const seeds = Number(process.argv[3] ?? 10);
const everyCommit = process.argv[4] === 'every-commit';
const thinCheck = referenceTools()('thin_check');
let referenceChecks = 0;
let referenceFailures = 0;
let failedBefore = 0;
let done = 0;
function referenceCheck(metadata) {
  const r = spawnSync(thinCheck, ['-q', metadata]);
  referenceChecks++;
  if (r.status !== 0) referenceFailures++;
}
const started = Date.now();
const fixed = runSchedules({
  traces,
  seedsPerTrace: seeds,
  data: true,
  afterCommit: everyCommit ? (metadata) => referenceCheck(metadata) : undefined,
  onRun: (run, files) => {
    if (!everyCommit) referenceCheck(files.metadata);
    if (++done % 1000 === 0) console.log(`${done} schedules...`);
    if (failedBefore < referenceFailures) console.log(`trace ${run.trace} seed ${run.seed}: the reference thin_check fails`);
    failedBefore = referenceFailures;
  },
});
const fixedSeconds = (Date.now() - started) / 1000;
for (const f of fixed.failed.slice(0, 10)) console.log(`trace ${f.trace} seed ${f.seed}: ${f.problems[0]?.message}`);
if (fixed.failed.length > 0) console.log(`the first failing trace (replay it with --seed ${fixed.failed[0].seed}):\n${randomParallelTrace(fixed.failed[0].trace)}`);
console.log(`kernel ordering: ${fixed.runs} schedules (${traces} traces x ${seeds} seeds), ${fixed.bios} bios, ${fixed.waited} schedules with IO waiting for a cell or earlier IO; ${fixed.failed.length} failed, ${fixed.deadlocks} deadlocks; reference thin_check${everyCommit ? ' at every commit' : ' on each final metadata'}: ${referenceChecks - referenceFailures} of ${referenceChecks} passed; ${fixedSeconds.toFixed(0)} s`);

let firstDeadlock;
const preFix = runSchedules({
  traces,
  seedsPerTrace: seeds,
  preFixDiscardOrdering: true,
  onRun: (run) => {
    if (!firstDeadlock && run.problems.some((p) => p.kind === 'deadlock')) firstDeadlock = run;
  },
});
console.log(`pre-fix ordering: ${preFix.deadlocks} of ${preFix.runs} schedules deadlock${firstDeadlock ? `; the first at trace ${firstDeadlock.trace} seed ${firstDeadlock.seed}` : ''}`);
process.exitCode = fixed.failed.length === 0 && referenceFailures === 0 && preFix.deadlocks > 0 ? 0 : 1;
