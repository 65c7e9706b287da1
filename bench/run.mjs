// Benchmarks our tools against both reference tool sets side by side, on the same generated pool
// in one run: the 0.9.0 C++ tools (/usr/sbin) and the upstream 1.x Rust tools (.references/1x/bin,
// installed by `node scripts/ensure-references.mjs`). Prints each tool's wall time and peak RSS,
// the ratios ours/0.9.0 and ours/1.x, and checks every output in passing (dump, delta, ls, rmap:
// equal to 0.9.0's; restore, repair: the metadata they wrote dumps, by the 0.9.0 thin_dump, as the
// source does).
//
//   node bench/run.mjs [--smoke | --large] [--sizes 1000000,5000000] [--snapshots 4] [--repeat 1]
//                      [--tools check,dump,restore,repair,delta,ls,rmap] [--impls 0.9.0,1.x,ours]
//                      [--upstream DIR] [--dir DIR] [--keep] [--json FILE] [--markdown] [--profile DIR]
//
// Exit status: 0 when every tool of ours ran and its output checked out, however slow; 1 when a
// tool of ours failed or wrote something wrong, or the harness itself broke (a reference tool
// failing or missing where it is needed). See docs/benchmarks.md.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HarnessError, freshFile, lastLine, makeFixture } from './fixture.mjs';
import { summarize } from './profile-summary.mjs';
import { ROOT, UPSTREAM_DIR, referenceTools, upstreamTools } from './references.mjs';

/**
 * One entry per tool. `args(fixture, out)` gives its arguments on the generated pool (`fixture`:
 * image, xml, devIds, nrDataBlocks, metaBytes; `out`: the fresh metadata file a writer writes
 * into); `output` says what it produces and so how it is checked:
 *   'status'   the exit status only;
 *   'stdout'   its standard output, which must equal the 0.9.0 tool's byte for byte
 *              (`upstream` normalises the 1.x tool's output where it differs by design);
 *   'metadata' a metadata file, which the 0.9.0 thin_dump must dump as it dumps the source.
 */
const CASES = [
  { name: 'check', tool: 'thin_check', output: 'status', args: (f) => [f.image] },
  {
    name: 'dump', tool: 'thin_dump', output: 'stdout', args: (f) => [f.image],
    upstream: {
      note: '1.x thin_dump omits flags="0" and the final newline',
      normalize: (first) => first.replace(' flags="0"', ''),
    },
  },
  { name: 'restore', tool: 'thin_restore', output: 'metadata', args: (f, out) => ['-i', f.xml, '-o', out] },
  { name: 'repair', tool: 'thin_repair', output: 'metadata', args: (f, out) => ['-i', f.image, '-o', out] },
  {
    // The origin against its first snapshot.
    name: 'delta', tool: 'thin_delta', output: 'stdout', args: (f) => ['--snap1', String(f.devIds[0]), '--snap2', String(f.devIds[1]), f.image],
    upstream: { note: '1.x thin_delta omits the final newline', normalize: (first) => first },
  },
  { name: 'ls', tool: 'thin_ls', output: 'stdout', args: (f) => ['-o', LS_ALL_FIELDS, f.image] },
  // The whole data device: the largest reverse map (1.x orders ties and shared leaves unlike 0.9.0).
  { name: 'rmap', tool: 'thin_rmap', output: 'stdout', args: (f) => ['--region', `0..${f.nrDataBlocks}`, f.image] },
];

const IMPLS = ['0.9.0', '1.x', 'ours'];
const LS_ALL_FIELDS = 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,' +
  'MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME';
const TIME = '/usr/bin/time';

// --- options ---------------------------------------------------------------------------------

function parseArgs(argv) {
  const o = { sizes: [1_000_000, 5_000_000], snapshots: 4, repeat: 1, tools: CASES.map((c) => c.name), impls: IMPLS,
    upstream: UPSTREAM_DIR, dir: undefined, keep: false, json: undefined, markdown: false, profile: undefined };
  let mode;
  let sizesGiven = false;
  const list = (s, allowed, what) => {
    const items = s.split(',');
    for (const x of items) if (!allowed.includes(x)) throw new HarnessError(`${what}: unknown '${x}' (one of ${allowed.join(', ')})`);
    return items;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new HarnessError(`${a} needs a value`);
      return argv[++i];
    };
    const count = (s, what) => {
      if (!/^\d+$/.test(s) || Number(s) < 1) throw new HarnessError(`${what}: '${s}' is not a positive integer`);
      return Number(s);
    };
    if (a === '--smoke' || a === '--large') mode = a;
    else if (a === '--sizes') { o.sizes = value().split(',').map((s) => count(s, '--sizes')); sizesGiven = true; }
    else if (a === '--snapshots') o.snapshots = count(value(), '--snapshots');
    else if (a === '--repeat') o.repeat = count(value(), '--repeat');
    else if (a === '--tools') o.tools = list(value(), CASES.map((c) => c.name), '--tools');
    else if (a === '--impls') o.impls = list(value(), IMPLS, '--impls');
    else if (a === '--upstream') o.upstream = value();
    else if (a === '--dir') o.dir = value();
    else if (a === '--keep') o.keep = true;
    else if (a === '--json') o.json = value();
    else if (a === '--markdown') o.markdown = true;
    else if (a === '--profile') o.profile = path.resolve(value());
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bench/run.mjs [--smoke | --large] [--sizes 1000000,5000000] [--snapshots N] [--repeat N]\n' +
        '                        [--tools check,dump,restore,repair,delta,ls,rmap] [--impls 0.9.0,1.x,ours]\n' +
        '                        [--upstream DIR] [--dir DIR] [--keep] [--json FILE] [--markdown] [--profile DIR]');
      process.exit(0);
    } else throw new HarnessError(`unknown option '${a}'`);
  }
  if (!sizesGiven && mode === '--smoke') o.sizes = [20_000];
  if (!sizesGiven && mode === '--large') o.sizes = [1_000_000, 20_000_000];
  return o;
}

// --- running a tool, timed, with its peak RSS ----------------------------------------------------

/**
 * Peak RSS comes from GNU time (the kernel's rusage ru_maxrss, exact) where /usr/bin/time exists;
 * it is not installed on a fresh Debian (package `time`, priority optional), so otherwise we poll
 * the child's /proc/<pid>/status VmHWM (its high-water mark) every few milliseconds, which can
 * miss growth in the last few milliseconds of a run.
 */
const RSS_METHOD = (() => {
  if (process.env.BENCH_RSS === 'proc') return 'proc-poll'; // to compare the two methods
  try {
    fs.accessSync(TIME, fs.constants.X_OK);
    return spawnSync(TIME, ['-f', '%M', 'true'], { encoding: 'utf8' }).status === 0 ? 'gnu-time' : 'proc-poll';
  } catch {
    return 'proc-poll';
  }
})();

function readHighWaterKiB(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0; // already gone
  }
}

/**
 * Runs `cmd args`, stdout to `stdoutFile` (or discarded); resolves with status, wall seconds, CPU
 * seconds (user + system, all threads; GNU time only) and peak KiB. On a busy machine the CPU time
 * grows much less than the wall time, so it tells a slow run from a starved one.
 */
function timedRun([cmd, ...args], { stdoutFile, workDir }) {
  return new Promise((resolve, reject) => {
    const out = stdoutFile ? fs.openSync(stdoutFile, 'w') : 'ignore';
    const rssFile = path.join(workDir, 'rss.txt');
    const [file, argv] = RSS_METHOD === 'gnu-time' ? [TIME, ['-f', '%M %U %S', '-o', rssFile, cmd, ...args]] : [cmd, args];
    const start = process.hrtime.bigint();
    const child = spawn(file, argv, { stdio: ['ignore', out, 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { if (stderr.length < 4096) stderr += d; });
    let peakKiB = 0;
    let cpuSeconds;
    let poll;
    if (RSS_METHOD === 'proc-poll') {
      const sample = () => { peakKiB = Math.max(peakKiB, readHighWaterKiB(child.pid)); };
      child.once('spawn', sample);
      poll = setInterval(sample, 5);
    }
    child.on('error', (e) => {
      clearInterval(poll);
      if (typeof out === 'number') fs.closeSync(out);
      reject(e);
    });
    child.on('close', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      clearInterval(poll);
      if (typeof out === 'number') fs.closeSync(out);
      if (RSS_METHOD === 'gnu-time') {
        // GNU time may write "Command exited with non-zero status N" before the number.
        const lines = fs.readFileSync(rssFile, 'utf8').trim().split('\n');
        const [kib, user, sys] = lines[lines.length - 1].split(' ').map(Number);
        peakKiB = kib || 0;
        cpuSeconds = user + sys;
      }
      resolve({ status: signal ? `signal ${signal}` : code, seconds, cpuSeconds, peakKiB, stderr });
    });
  });
}

/** Runs `cmd args` to completion with its stdout in `file`. */
function spawnTo(file, cmd, args) {
  const fd = fs.openSync(file, 'w');
  try {
    return spawnSync(cmd, args, { stdio: ['ignore', fd, 'pipe'], encoding: 'utf8' });
  } finally {
    fs.closeSync(fd);
  }
}

// --- checking outputs ------------------------------------------------------------------------

/**
 * sha256 of a file, optionally normalised: `firstLine` rewrites the first line and the text is
 * taken to end in a newline (for the 1.x dump's small, deliberate differences). Streams.
 */
function sha256(file, firstLine) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let head = firstLine ? '' : undefined; // the first line, until it is complete
    let last = 0x0a;
    fs.createReadStream(file)
      .on('data', (d) => {
        if (d.length) last = d[d.length - 1];
        if (head === undefined) return h.update(d);
        const nl = d.indexOf(0x0a);
        if (nl < 0) return void (head += d.toString('latin1'));
        h.update(firstLine(head + d.subarray(0, nl).toString('latin1')), 'latin1');
        head = undefined;
        h.update(d.subarray(nl));
      })
      .on('end', () => {
        if (head !== undefined) h.update(firstLine(head), 'latin1');
        if (firstLine && last !== 0x0a) h.update('\n');
        resolve(h.digest('hex'));
      })
      .on('error', reject);
  });
}


// --- the benchmark ---------------------------------------------------------------------------

/** The command line of `tool` for each implementation that is here. */
function implementations(o) {
  const v090 = referenceTools();
  const v1x = upstreamTools(o.upstream);
  const impls = {};
  if (o.impls.includes('0.9.0')) impls['0.9.0'] = (tool) => [v090(tool)];
  if (o.impls.includes('1.x')) {
    if (!v1x) throw new HarnessError(`the 1.x tools are not in ${o.upstream}: run \`node scripts/ensure-references.mjs\` (or pass --impls without 1.x)`);
    impls['1.x'] = (tool) => [v1x(tool)];
  }
  if (o.impls.includes('ours')) {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'cli'))) throw new HarnessError('our tools are not built: run `npm run build`');
    impls.ours = (tool) => [process.execPath, path.join(ROOT, 'bin', tool)];
  }
  return { impls, v090 };
}

async function benchSize(mappings, o, { impls, v090 }) {
  const dir = fs.mkdtempSync(path.join(o.dir ?? os.tmpdir(), `thin-bench-${mappings}-`));
  const rows = [];
  const problems = [];
  try {
    const fixture = makeFixture(dir, mappings, o.snapshots, v090);
    const { image, metaBytes } = fixture;

    // What the 0.9.0 thin_dump prints for the source: what restore and repair must reproduce.
    let sourceDump;
    const dumpHash = async (meta) => {
      const file = path.join(dir, 'verify.xml');
      const r = spawnTo(file, v090('thin_dump'), [meta]);
      const h = r.status === 0 ? await sha256(file) : undefined;
      fs.rmSync(file, { force: true });
      return h;
    };

    for (const c of CASES.filter((c) => o.tools.includes(c.name))) {
      const runs = {};
      const outputs = {};
      // Interleaved repeats, so a busy moment of the machine does not fall on one side only.
      for (let r = 0; r < o.repeat; r++) {
        for (const [impl, command] of Object.entries(impls)) {
          if (runs[impl] && runs[impl].status !== 0) continue;
          const out = path.join(dir, `${c.name}.${impl}.out`);
          if (c.output === 'metadata') freshFile(out, metaBytes);
          const run = await timedRun([...command(c.tool), ...c.args(fixture, out)],
            { stdoutFile: c.output === 'stdout' ? out : undefined, workDir: dir });
          outputs[impl] = out;
          if (!runs[impl] || run.status !== 0 || run.seconds < runs[impl].seconds) runs[impl] = run;
        }
      }

      const verdicts = {};
      if (c.output === 'metadata') sourceDump ??= await dumpHash(image);
      const reference = c.output === 'stdout' && runs['0.9.0']?.status === 0 ? await sha256(outputs['0.9.0']) : undefined;
      for (const [impl, run] of Object.entries(runs)) {
        let verdict;
        if (run.status !== 0) verdict = `failed (${run.status}): ${lastLine(run.stderr)}`;
        else if (c.output === 'status') verdict = 'ok';
        else if (c.output === 'metadata') {
          const h = await dumpHash(outputs[impl]);
          verdict = h === undefined ? 'UNREADABLE by the 0.9.0 thin_dump' : h === sourceDump ? 'ok' : 'DIFFERS: dumps unlike the source';
        } else if (impl === '0.9.0') verdict = 'ok';
        else if (reference === undefined) verdict = 'unchecked (no 0.9.0 output)';
        else if (impl === '1.x' && c.upstream) {
          const [a, b] = [await sha256(outputs[impl], c.upstream.normalize), await sha256(outputs['0.9.0'], c.upstream.normalize)];
          verdict = a === b ? 'ok*' : 'DIFFERS from 0.9.0';
        } else verdict = (await sha256(outputs[impl])) === reference ? 'ok' : 'DIFFERS from 0.9.0';
        verdicts[impl] = verdict;
        if (verdict !== 'ok' && verdict !== 'ok*') {
          const line = `${impl} ${c.tool} at ${fixture.mappings}: ${verdict}`;
          // Only ours and the 0.9.0 oracle must be right; without 0.9.0 in the run there is nothing to compare with.
          problems.push({ line, fatal: impl !== '1.x' && !verdict.startsWith('unchecked') });
        }
      }
      if (o.profile && impls.ours) profileOurs(c, fixture, dir, o.profile);
      for (const f of Object.values(outputs)) fs.rmSync(f, { force: true });
      rows.push({ tool: c.tool, mappings: fixture.mappings, runs, verdicts, note: verdicts['1.x'] === 'ok*' ? c.upstream.note : undefined });
    }
  } finally {
    if (o.keep) console.log(`kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  return { rows, problems };
}

/**
 * One more run of our tool under the V8 profiler (the compiled modules, so the profile names each
 * source module), its profile kept in DIR/<tool>-<mappings>/ and summarised on the console.
 */
function profileOurs(c, fixture, dir, profileDir) {
  const into = path.join(profileDir, `${c.tool}-${fixture.mappings}`);
  fs.rmSync(into, { recursive: true, force: true });
  const out = path.join(dir, `${c.name}.profile.out`);
  if (c.output === 'metadata') freshFile(out, fixture.metaBytes);
  const r = spawnTo(c.output === 'stdout' ? out : '/dev/null', process.execPath,
    ['--cpu-prof', `--cpu-prof-dir=${into}`, path.join(ROOT, 'dist', 'cli', `${c.tool}.js`), ...c.args(fixture, out)]);
  fs.rmSync(out, { force: true });
  const profile = fs.existsSync(into) && fs.readdirSync(into).find((f) => f.endsWith('.cpuprofile'));
  if (r.status !== 0 || !profile) throw new HarnessError(`profiling our ${c.tool} failed (${r.status}): ${lastLine(r.stderr ?? '')}`);
  console.log(`\nprofile of our ${c.tool} at ${sizeLabel(fixture.mappings)} (${path.join(into, profile)}):\n${summarize(path.join(into, profile), 12)}`);
}

// --- report ----------------------------------------------------------------------------------

const mib = (run) => (run?.status === 0 && run.peakKiB ? (run.peakKiB / 1024).toFixed(1) : '-');
const secs = (run) => (!run ? '-' : run.status === 0 ? run.seconds.toFixed(2) : 'failed');
const ratio = (a, b) => (a?.status === 0 && b?.status === 0 ? (a.seconds / b.seconds).toFixed(2) : '-');
const sizeLabel = (n) => (n % 1_000_000 === 0 ? `${n / 1_000_000}M` : n % 1000 === 0 ? `${n / 1000}k` : String(n));

function cells(row, impls) {
  const r = row.runs;
  const checks = impls.map((i) => (row.verdicts[i] && row.verdicts[i] !== 'ok' ? `${i}: ${row.verdicts[i].split(':')[0]}` : undefined))
    .filter(Boolean);
  return [
    row.tool, sizeLabel(row.mappings),
    ...impls.map((i) => secs(r[i])),
    ...(r.ours ? impls.filter((i) => i !== 'ours').map((i) => ratio(r.ours, r[i])) : []),
    ...impls.map((i) => mib(r[i])),
    checks.length ? checks.join(', ') : 'all ok',
  ];
}

function header(impls) {
  return ['tool', 'mappings', ...impls.map((i) => `${i} s`),
    ...(impls.includes('ours') ? impls.filter((i) => i !== 'ours').map((i) => `ours/${i}`) : []),
    ...impls.map((i) => `${i} MiB`), 'outputs'];
}

function table(rows, impls) {
  const head = header(impls);
  const body = rows.map((row) => cells(row, impls));
  const widths = head.map((h, c) => Math.max(h.length, ...body.map((r) => r[c].length)));
  const last = head.length - 1;
  const line = (cs) => cs.map((s, c) => (c === 0 || c === last ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

/** CPU seconds (user + system) of each run, beside its wall time: how much of it was waiting. */
function cpuTable(rows, impls) {
  const head = ['tool', 'mappings', ...impls.map((i) => `${i} cpu s`)];
  const body = rows.map((r) => [r.tool, sizeLabel(r.mappings),
    ...impls.map((i) => (r.runs[i]?.status === 0 && r.runs[i].cpuSeconds !== undefined ? r.runs[i].cpuSeconds.toFixed(2) : '-'))]);
  const widths = head.map((h, c) => Math.max(h.length, ...body.map((b) => b[c].length)));
  const line = (cs) => cs.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

function markdown(rows, impls) {
  const head = header(impls);
  const line = (cs) => `| ${cs.join(' | ')} |`;
  return [line(head), line(head.map((_, c) => (c === 0 || c === head.length - 1 ? '---' : '---:'))),
    ...rows.map((row) => line(cells(row, impls)))].join('\n');
}

/** Time per million mappings and peak RSS at each size: is time linear and memory flat? */
function scaling(rows, impls) {
  const out = [];
  for (const tool of [...new Set(rows.map((r) => r.tool))]) {
    for (const impl of impls) {
      const at = rows.filter((r) => r.tool === tool && r.runs[impl]?.status === 0);
      if (at.length < 2) continue;
      out.push(`${tool} ${impl}: ` + at.map((r) => `${sizeLabel(r.mappings)} ${(r.runs[impl].seconds / (r.mappings / 1e6)).toFixed(3)} s/M, ` +
        `${mib(r.runs[impl])} MiB`).join('; '));
    }
  }
  return out.join('\n');
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const found = implementations(o);
  const impls = Object.keys(found.impls);
  try {
    for (const t of ['thin_restore', 'thin_dump', ...CASES.filter((c) => o.tools.includes(c.name)).map((c) => c.tool)]) found.v090(t);
  } catch (e) {
    throw new HarnessError(e.message);
  }

  const cpus = os.cpus();
  console.log(`node ${process.version}, ${cpus.length} x ${cpus[0]?.model ?? 'cpu'}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; ` +
    `peak RSS via ${RSS_METHOD === 'gnu-time' ? '/usr/bin/time %M' : '/proc/<pid>/status VmHWM polling'}; ` +
    `best of ${o.repeat} run${o.repeat > 1 ? 's' : ''}; comparing ${impls.join(', ')}`);

  const rows = [];
  const problems = [];
  for (const size of o.sizes) {
    const r = await benchSize(size, o, found);
    rows.push(...r.rows);
    problems.push(...r.problems);
    console.log(table(r.rows, impls));
  }
  if (o.sizes.length > 1) console.log(`\nall sizes:\n${table(rows, impls)}\n\nper million mappings:\n${scaling(rows, impls)}`);
  if (RSS_METHOD === 'gnu-time') console.log(`\nCPU time of the same runs:\n${cpuTable(rows, impls)}`);
  for (const note of new Set(rows.map((r) => r.note).filter(Boolean))) console.log(`ok*: same after normalising: ${note}`);
  if (o.markdown) console.log(`\n${markdown(rows, impls)}`);
  console.log(`load average at the end ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (o.json) {
    fs.writeFileSync(o.json, JSON.stringify({ node: process.version, cpus: cpus.length, rssMethod: RSS_METHOD, loadavg: os.loadavg(),
      rows: rows.map((r) => ({ ...r, runs: Object.fromEntries(Object.entries(r.runs).map(([k, v]) => [k,
        { status: v.status, seconds: v.seconds, cpuSeconds: v.cpuSeconds, peakKiB: v.peakKiB }])) })) }, null, 2));
  }
  for (const p of problems) console.log(`${p.fatal ? 'PROBLEM' : 'note'}: ${p.line}`);
  return problems.some((p) => p.fatal) ? 1 : 0;
}

main().then(
  (status) => { process.exitCode = status; },
  (e) => {
    console.error(`bench: ${e instanceof HarnessError ? e.message : e.stack ?? e}`);
    process.exitCode = 1;
  },
);
