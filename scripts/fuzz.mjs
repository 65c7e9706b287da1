#!/usr/bin/env node
// The fuzz campaign from the command line (docs/fuzz.md):
//
//   npm run fuzz -- --cases N [--seed S] [--first K] [--jobs J] [--families check,repair,...]
//                   [--timeout SECONDS] [--keep] [--json FILE]
//   npm run fuzz -- --replay S:C[,C...]     one or more cases, step by step, files kept
//
// Runs the built tools (npm run fuzz builds first). Prints cases by tool family x mutation and
// every finding with the case to replay; exits 1 if anything was found.
import * as fs from 'node:fs';
import { register } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
register('./ts-hooks.mjs', import.meta.url);
const { FAMILIES, runCampaign, formatReport, failed } = await import('../test/support/fuzz/campaign.ts');
const { default: cliProgress } = await import('cli-progress');

const usage = () => {
  process.stderr.write('usage: npm run fuzz -- --cases N [--seed S] [--first K] [--jobs J] [--families a,b] [--timeout SECONDS] [--keep] [--json FILE]\n' +
    '       npm run fuzz -- --replay SEED:CASE[,CASE...]\n');
  process.exit(1);
};

let args;
try {
  args = parseArgs({
    options: {
      cases: { type: 'string' },
      seed: { type: 'string', default: '1' },
      first: { type: 'string', default: '0' },
      jobs: { type: 'string' },
      families: { type: 'string' },
      timeout: { type: 'string', default: '60' },
      keep: { type: 'boolean', default: false },
      json: { type: 'string' },
      replay: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (e) {
  process.stderr.write(`fuzz: ${e.message}\n`);
  usage();
}
if (args.help) usage();
const natural = (v, what) => {
  if (!/^\d+$/.test(v)) {
    process.stderr.write(`fuzz: ${what} must be a non-negative integer, not '${v}'\n`);
    usage();
  }
  return Number(v);
};

let seed;
let cases;
const replay = args.replay !== undefined;
if (replay) {
  const m = /^(\d+):([\d,]+)$/.exec(args.replay);
  if (!m) usage();
  seed = Number(m[1]);
  cases = m[2].split(',').filter(Boolean).map(Number);
} else {
  if (args.cases === undefined) usage();
  seed = natural(args.seed, '--seed');
  const first = natural(args.first, '--first');
  cases = Array.from({ length: natural(args.cases, '--cases') }, (_, i) => first + i);
}
const families = args.families?.split(',');
for (const f of families ?? []) {
  if (!FAMILIES.includes(f)) {
    process.stderr.write(`fuzz: unknown family '${f}' (families: ${FAMILIES.join(', ')})\n`);
    process.exit(1);
  }
}

const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-fuzz-'));
const keep = args.keep || replay;
const bar = !replay && process.stderr.isTTY
  ? new cliProgress.SingleBar({ format: 'fuzzing [{bar}] {value}/{total} cases | findings {findings}', stream: process.stderr, clearOnComplete: true, fps: 5 },
    cliProgress.Presets.shades_classic)
  : undefined;
let found = 0;
bar?.start(cases.length, 0, { findings: 0 });
let done = 0;
const report = await runCampaign({
  root: ROOT,
  seed,
  cases,
  families,
  jobs: replay ? 1 : args.jobs === undefined ? undefined : natural(args.jobs, '--jobs'),
  timeoutMs: natural(args.timeout, '--timeout') * 1000,
  workDir,
  keep,
  verbose: replay ? (line) => process.stdout.write(`${line}\n`) : undefined,
  onCase: (r) => {
    found += r.findings.length;
    bar?.update(++done, { findings: found });
  },
});
bar?.stop();
if (args.json) fs.writeFileSync(args.json, JSON.stringify(report, null, 1));
process.stdout.write(`${formatReport(report)}\n`);
if (keep) process.stdout.write(`\nfiles kept in ${workDir}\n`);
else fs.rmSync(workDir, { recursive: true, force: true });
process.exitCode = failed(report) ? 1 : 0;
