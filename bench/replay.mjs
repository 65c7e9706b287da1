// Replay throughput of thin_replay: mapped blocks and commits per second, and peak RSS, for
// sequential and random write traces, metadata-only and with a data file.
//
//   node bench/replay.mjs [--smoke] [--blocks N] [--data-blocks N] [--commit-every N] [--no-sync]
//                         [--runs random,sequential,random-data,sequential-data] [--repeat N]
//                         [--dir DIR] [--keep] [--json FILE]
//
// The traces: one thin device; N single-block writes to distinct random virtual blocks (random),
// or writes of 1000 consecutive blocks (sequential); a commit every --commit-every writes (1000).
// With a data file each block writes its 64 KiB: a million of them would be 64 GiB, so the data
// runs default to 100k blocks. Peak RSS is GNU time's (ru_maxrss). --no-sync passes thin_replay's
// --no-sync (commits not synced: what the CPU costs, without the disk's flush latency). The CPU
// pressure Linux reports (/proc/pressure/cpu, "some" over the last 60 s) is printed per run: on a
// shared machine it says how much of the wall time was spent waiting for a CPU. --repeat N replays
// each trace N times and adds a line of medians (a loaded machine's times vary by half between
// runs). See docs/benchmarks.md.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPLAY = path.join(ROOT, 'bin', 'thin_replay');
const TIME = '/usr/bin/time';
const RUNS = ['random', 'sequential', 'random-data', 'sequential-data'];

function parseArgs(argv) {
  const o = { blocks: 1_000_000, dataBlocks: 100_000, commitEvery: 1000, runs: RUNS, dir: undefined, keep: false, json: undefined, sync: true, repeat: 1 };
  let smoke = false;
  const given = new Set();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    const count = (s) => {
      if (!/^\d+$/.test(s) || Number(s) < 1) throw new Error(`${a}: '${s}' is not a positive integer`);
      return Number(s);
    };
    if (a === '--smoke') smoke = true;
    else if (a === '--blocks') { o.blocks = count(value()); given.add('blocks'); }
    else if (a === '--data-blocks') { o.dataBlocks = count(value()); given.add('data'); }
    else if (a === '--commit-every') o.commitEvery = count(value());
    else if (a === '--no-sync') o.sync = false;
    else if (a === '--repeat') o.repeat = count(value());
    else if (a === '--runs') {
      o.runs = value().split(',');
      for (const r of o.runs) if (!RUNS.includes(r)) throw new Error(`--runs: unknown run '${r}'`);
    } else if (a === '--dir') o.dir = value();
    else if (a === '--keep') o.keep = true;
    else if (a === '--json') o.json = value();
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bench/replay.mjs [--smoke] [--blocks N] [--data-blocks N] [--commit-every N] [--no-sync] [--runs LIST] [--repeat N] [--dir DIR] [--keep] [--json FILE]');
      process.exit(0);
    } else throw new Error(`unknown option '${a}'`);
  }
  if (smoke) {
    if (!given.has('blocks')) o.blocks = 20_000;
    if (!given.has('data')) o.dataBlocks = 5_000;
  }
  return o;
}

/** Writes a trace of `blocks` writes, streamed, and returns its path. */
function writeTrace(file, kind, blocks, commitEvery) {
  const fd = fs.openSync(file, 'w');
  const lines = [];
  const flush = () => {
    fs.writeSync(fd, lines.join('\n') + '\n');
    lines.length = 0;
  };
  // Room for every block, and a metadata device the default sizing gives.
  lines.push(`pool data_block_size=128 nr_data_blocks=${blocks + 1024} error_if_no_space=on`, 'create_thin 0');
  if (kind === 'random') {
    // Distinct virtual blocks scattered over 2^24: i * odd mod 2^24 is a permutation.
    for (let i = 0; i < blocks; i++) {
      lines.push(`write 0 ${(Math.imul(i, 0x9e3779b1) >>> 0) & 0xffffff}`);
      if ((i + 1) % commitEvery === 0) lines.push('commit');
      if (lines.length >= 65536) flush();
    }
  } else {
    const run = Math.min(commitEvery, 1000);
    for (let i = 0; i < blocks; i += run) {
      lines.push(`write 0 ${i} ${Math.min(run, blocks - i)}`);
      if ((i + run) % commitEvery === 0 || i + run >= blocks) lines.push('commit');
      if (lines.length >= 65536) flush();
    }
  }
  flush();
  fs.closeSync(fd);
  return file;
}

/** Linux's CPU pressure, "some" averaged over 60 s: the share of time tasks waited for a CPU. */
function cpuPressure() {
  try {
    const m = /some avg10=\S+ avg60=(\S+)/.exec(fs.readFileSync('/proc/pressure/cpu', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function run(trace, metadata, data, sync) {
  for (const f of [metadata, data]) if (f) fs.rmSync(f, { force: true });
  const args = [trace, '--metadata', metadata, '--json'];
  if (data) args.push('--data', data);
  if (!sync) args.push('--no-sync');
  const haveTime = fs.existsSync(TIME);
  const cmd = haveTime ? TIME : REPLAY;
  const r = spawnSync(cmd, haveTime ? ['-f', 'TIME %e %U %S %M', REPLAY, ...args] : args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.error) throw r.error;
  const summary = JSON.parse(r.stdout);
  const m = /TIME (\S+) (\S+) (\S+) (\d+)/.exec(r.stderr);
  return {
    status: r.status,
    summary,
    wall: m ? Number(m[1]) : summary.seconds,
    user: m ? Number(m[2]) : undefined,
    system: m ? Number(m[3]) : undefined,
    peakMiB: m ? Math.round(Number(m[4]) / 1024) : undefined,
  };
}

function median(values) {
  const v = values.filter((x) => x !== undefined).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  return v.length % 2 ? v[v.length >> 1] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

function print(row, tag) {
  const cpu = row.cpu === undefined ? '?' : row.cpu.toFixed(1);
  console.log(`${(row.run + tag).padEnd(22)} ${String(row.blocks).padStart(8)} blocks  ${row.seconds.toFixed(1).padStart(6)} s ` +
    `(cpu ${cpu} s)  ${String(Math.round(row.blocksPerSecond)).padStart(7)} blocks/s  ${String(Math.round(row.commitsPerSecond)).padStart(5)} commits/s  ` +
    `peak ${row.peakMiB ?? '?'} MiB  ${row.verification}${row.status === 0 ? '' : ` (exit ${row.status})`}` +
    `${row.cpuPressure === undefined ? '' : `  cpu pressure ${Math.round(row.cpuPressure)}%`}`);
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'thin_replay.js'))) throw new Error('build first: npx tsc -p .');
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'thin-replay-bench-'));
  fs.mkdirSync(dir, { recursive: true });
  const results = [];
  try {
    for (const name of o.runs) {
      const withData = name.endsWith('-data');
      const kind = name.replace('-data', '');
      const blocks = withData ? o.dataBlocks : o.blocks;
      const trace = writeTrace(path.join(dir, `${kind}-${blocks}.trace`), kind, blocks, o.commitEvery);
      const rows = [];
      for (let rep = 0; rep < o.repeat; rep++) {
        const r = run(trace, path.join(dir, 'metadata'), withData ? path.join(dir, 'data') : undefined, o.sync);
        const s = r.summary;
        const row = {
          run: name,
          blocks,
          commits: s.commits,
          seconds: r.wall,
          cpu: r.user === undefined ? undefined : r.user + r.system,
          user: r.user,
          system: r.system,
          blocksPerSecond: Math.round(s.dataBlocks.allocated / r.wall),
          commitsPerSecond: Math.round(s.commits / r.wall),
          peakMiB: r.peakMiB,
          cpuPressure: cpuPressure(),
          verification: s.verification,
          status: r.status,
        };
        rows.push(row);
        results.push(row);
        print(row, '');
        for (const f of ['metadata', 'data']) fs.rmSync(path.join(dir, f), { force: true });
      }
      if (rows.length > 1) {
        const m = { ...rows[0] };
        for (const k of ['seconds', 'cpu', 'blocksPerSecond', 'commitsPerSecond', 'peakMiB', 'cpuPressure']) m[k] = median(rows.map((r) => r[k]));
        m.verification = rows.every((r) => r.verification === 'passed') ? 'passed' : 'failed';
        m.status = rows.find((r) => r.status !== 0)?.status ?? 0;
        print(m, ' median');
      }
    }
    console.log(`load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}, ${os.cpus().length} CPUs`);
    if (o.json) fs.writeFileSync(o.json, JSON.stringify({ options: o, results, loadavg: os.loadavg() }, null, 2));
    return results.every((r) => r.status === 0 && r.verification === 'passed') ? 0 : 1;
  } finally {
    if (!o.keep && !o.dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}

try {
  process.exitCode = main();
} catch (e) {
  console.error(`bench/replay: ${e.message}`);
  process.exitCode = 1;
}
