// Start-up time: what lvm2 pays at every pool activation, when it runs thin_check on a small
// pool. Runs bare Node (`node -e 0`), our thin_check and thin_dump on the bundled small pool
// (testdata/small-pool.bin.gz, 4 MiB of metadata) and the two references' on the same file,
// interleaved (one run of each in turn, so a busy moment hits them all alike), many times, and
// prints the median, p90 and minimum wall time of each, and ours minus bare Node.
//
//   node bench/startup.mjs [--runs 50] [--json FILE]
//
// Exit status 0 when it ran; 1 if a command failed (wrong exit status) or the harness broke.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ROOT, referenceTools, upstreamTools } from './references.mjs';

function parseArgs(argv) {
  const o = { runs: 50, json: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--runs') {
      const v = value();
      if (!/^\d+$/.test(v) || Number(v) < 1) throw new Error(`--runs: '${v}' is not a positive integer`);
      o.runs = Number(v);
    } else if (a === '--json') o.json = value();
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bench/startup.mjs [--runs 50] [--json FILE]');
      process.exit(0);
    } else throw new Error(`unknown option '${a}'`);
  }
  return o;
}

/** One run's wall time in milliseconds, from spawn to exit (fork and exec included, alike for all). */
function timeOnce(cmd, args) {
  const start = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${String(r.stderr).trim().split('\n').pop()}`);
  return ms;
}

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'thin_check.js'))) throw new Error('dist/ is not built: run `npm run build`');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-startup-'));
  try {
    const image = path.join(dir, 'small-pool.bin');
    fs.writeFileSync(image, gunzipSync(fs.readFileSync(path.join(ROOT, 'testdata', 'small-pool.bin.gz'))));
    const ours = (tool) => [process.execPath, [path.join(ROOT, 'bin', tool), image]];
    const v090 = referenceTools();
    const v1x = upstreamTools();
    const cases = [
      { name: 'node -e 0', run: [process.execPath, ['-e', '0']] },
      { name: 'ours thin_check', run: ours('thin_check'), bare: true },
      { name: 'ours thin_dump', run: ours('thin_dump'), bare: true },
      { name: '0.9.0 thin_check', run: [v090('thin_check'), [image]] },
      { name: '0.9.0 thin_dump', run: [v090('thin_dump'), [image]] },
      { name: '1.x thin_check', run: v1x && [v1x('thin_check'), [image]] },
      { name: '1.x thin_dump', run: v1x && [v1x('thin_dump'), [image]] },
    ].filter((c) => c.run);

    for (const c of cases) timeOnce(...c.run); // warm the page cache and fail early
    const times = cases.map(() => []);
    for (let r = 0; r < o.runs; r++) cases.forEach((c, i) => times[i].push(timeOnce(...c.run)));

    const stats = cases.map((c, i) => {
      const t = times[i].sort((a, b) => a - b);
      return { name: c.name, median: quantile(t, 0.5), p90: quantile(t, 0.9), min: t[0], bare: c.bare };
    });
    const node = stats[0];
    console.log(`node ${process.version}, ${os.cpus().length} cores, ${o.runs} runs each, interleaved; ` +
      `load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    // On a busy machine every run waits for a core and the medians swell; the minimum, the run
    // that waited least, is then the figure to compare.
    const head = ['command', 'median ms', 'p90 ms', 'min ms', 'median - node', 'min - node'];
    const above = (a, b) => `${a >= b ? '+' : ''}${(a - b).toFixed(1)}`;
    const rows = stats.map((s) => [s.name, s.median.toFixed(1), s.p90.toFixed(1), s.min.toFixed(1),
      s.bare ? above(s.median, node.median) : '', s.bare ? above(s.min, node.min) : '']);
    const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
    const line = (cells) => cells.map((s, c) => (c === 0 ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join('  ');
    console.log([line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n'));
    if (!v1x) console.log('(the 1.x tools are not installed: node scripts/ensure-references.mjs)');
    if (o.json) fs.writeFileSync(o.json, JSON.stringify({ node: process.version, runs: o.runs, stats }, null, 2));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

try {
  main();
} catch (e) {
  console.error(`startup: ${e.message}`);
  process.exitCode = 1;
}
