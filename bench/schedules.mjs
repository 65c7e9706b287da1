// Tens of thousands of seeded schedules of IO in flight (npm run schedules [-- TRACES SEEDS]):
// random parallel blocks of writes, discards, reads, snapshots and flushes on neighbouring
// blocks, each trace under SEEDS scheduler seeds, with a data file; the reference thin_check on
// every run's final metadata. Then the pre-fix discard ordering on the same traces: how many
// seeds deadlock, and the first. Results go in docs/engine-schedules.md by hand.
import { spawnSync } from 'node:child_process';
import { randomParallelTrace, runSchedules } from '../dist/engine/schedules.js';
import { referenceTools } from './references.mjs';

const traces = Number(process.argv[2] ?? 2000);
const seeds = Number(process.argv[3] ?? 10);
const thinCheck = referenceTools()('thin_check');
let referenceChecks = 0;
let referenceFailures = 0;
const started = Date.now();
const fixed = runSchedules({
  traces,
  seedsPerTrace: seeds,
  data: true,
  onRun: (run, files) => {
    const r = spawnSync(thinCheck, ['-q', files.metadata]);
    referenceChecks++;
    if (r.status !== 0) {
      referenceFailures++;
      console.log(`trace ${run.trace} seed ${run.seed}: the reference thin_check fails (exit ${r.status})`);
    }
    if (referenceChecks % 1000 === 0) console.log(`${referenceChecks} schedules...`);
  },
});
const fixedSeconds = (Date.now() - started) / 1000;
for (const f of fixed.failed.slice(0, 10)) console.log(`trace ${f.trace} seed ${f.seed}: ${f.problems[0]?.message}`);
if (fixed.failed.length > 0) console.log(`the first failing trace (replay it with --seed ${fixed.failed[0].seed}):\n${randomParallelTrace(fixed.failed[0].trace)}`);
console.log(`kernel ordering: ${fixed.runs} schedules (${traces} traces x ${seeds} seeds), ${fixed.bios} bios, ${fixed.waited} schedules with IO waiting for a cell or earlier IO; ${fixed.failed.length} failed, ${fixed.deadlocks} deadlocks; reference thin_check: ${referenceChecks - referenceFailures} of ${referenceChecks} passed; ${fixedSeconds.toFixed(0)} s`);

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
