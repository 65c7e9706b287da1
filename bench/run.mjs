// Benchmarks our tools against the reference tools on the same large metadata, side by side:
// wall time and peak RSS of thin_check, thin_dump, thin_restore, thin_repair, thin_delta, thin_ls
// and thin_rmap, plus a correctness check in passing (our dump, delta, ls and rmap output must
// equal the reference's).
//
//   node bench/run.mjs [--smoke] [--sizes 1000000,5000000] [--snapshots 4] [--repeat 1]
//                      [--tools check,dump,restore,repair,delta,ls,rmap] [--dir DIR] [--keep] [--json FILE]
//
// Exit status: 0 when the harness ran, whatever the speed and even if a tool of ours is missing
// or fails (the table says so); 1 if the harness itself broke or our dump differs from the
// reference's. See docs/benchmarks.md.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateMetadataXml } from './generate.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REFERENCE_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/usr/local/sbin'];
const TOOLS = ['check', 'dump', 'restore', 'repair', 'delta', 'ls', 'rmap'];
/** Tools whose output must equal the reference's byte for byte. */
const SAME_OUTPUT = new Set(['dump', 'delta', 'ls', 'rmap']);
const LS_ALL_FIELDS = 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,EXCLUSIVE_SECTORS,SHARED_SECTORS,' +
  'MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME';
const TIME = '/usr/bin/time';

// --- options ---------------------------------------------------------------------------------

function parseArgs(argv) {
  const o = { smoke: false, sizes: [1_000_000, 5_000_000], snapshots: 4, repeat: 1, tools: TOOLS, dir: undefined,
    keep: false, json: undefined };
  let sizesGiven = false;
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
    if (a === '--smoke') o.smoke = true;
    else if (a === '--sizes') { o.sizes = value().split(',').map((s) => count(s, '--sizes')); sizesGiven = true; }
    else if (a === '--snapshots') o.snapshots = count(value(), '--snapshots');
    else if (a === '--repeat') o.repeat = count(value(), '--repeat');
    else if (a === '--tools') {
      o.tools = value().split(',');
      for (const t of o.tools) if (!TOOLS.includes(t)) throw new HarnessError(`--tools: unknown tool '${t}'`);
    } else if (a === '--dir') o.dir = value();
    else if (a === '--keep') o.keep = true;
    else if (a === '--json') o.json = value();
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bench/run.mjs [--smoke] [--sizes 1000000,5000000] [--snapshots N] [--repeat N]\n' +
        '                        [--tools check,dump,restore,repair,delta,ls,rmap] [--dir DIR] [--keep] [--json FILE]');
      process.exit(0);
    } else throw new HarnessError(`unknown option '${a}'`);
  }
  if (o.smoke && !sizesGiven) o.sizes = [20_000];
  return o;
}

// --- running a tool, timed, with its peak RSS ----------------------------------------------------

function referenceTool(name) {
  for (const dir of REFERENCE_DIRS) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  return undefined;
}

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

/** Runs `cmd args`, stdout to `stdoutFile` (or discarded); resolves with status, seconds, peak KiB. */
function timedRun(cmd, args, { stdoutFile, workDir }) {
  return new Promise((resolve, reject) => {
    const out = stdoutFile ? fs.openSync(stdoutFile, 'w') : 'ignore';
    const rssFile = path.join(workDir, 'rss.txt');
    const [file, argv] = RSS_METHOD === 'gnu-time' ? [TIME, ['-f', '%M', '-o', rssFile, cmd, ...args]] : [cmd, args];
    const start = process.hrtime.bigint();
    const child = spawn(file, argv, { stdio: ['ignore', out, 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { if (stderr.length < 4096) stderr += d; });
    let peakKiB = 0;
    let poll;
    if (RSS_METHOD === 'proc-poll') {
      const sample = () => { peakKiB = Math.max(peakKiB, readHighWaterKiB(child.pid)); };
      child.once('spawn', sample);
      poll = setInterval(sample, 5);
    }
    child.on('error', (e) => { clearInterval(poll); reject(e); });
    child.on('close', (code, signal) => {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      clearInterval(poll);
      if (typeof out === 'number') fs.closeSync(out);
      if (RSS_METHOD === 'gnu-time') {
        // GNU time may write "Command exited with non-zero status N" before the number.
        const lines = fs.readFileSync(rssFile, 'utf8').trim().split('\n');
        peakKiB = Number(lines[lines.length - 1]) || 0;
      }
      resolve({ status: signal ? `signal ${signal}` : code, seconds, peakKiB, stderr });
    });
  });
}

/** Runs a few times and keeps the fastest (the machine is shared; the minimum is the least noisy). */
async function best(cmd, args, opts, repeat) {
  let result;
  for (let r = 0; r < repeat; r++) {
    const run = await timedRun(cmd, args, opts);
    if (run.status !== 0) return run;
    if (!result || run.seconds < result.seconds) result = run;
  }
  return result;
}

function sha256(file) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    fs.createReadStream(file).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
}

function freshFile(file, bytes) {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, bytes);
}

// --- the benchmark ---------------------------------------------------------------------------

class HarnessError extends Error {}

/** The line that says what went wrong: tools print progress first and the error last. */
function lastLine(s) {
  return (s.trim().split('\n').pop() ?? '').trim().slice(0, 160);
}

async function benchSize(mappings, o, ref) {
  const dir = fs.mkdtempSync(path.join(o.dir ?? os.tmpdir(), `thin-bench-${mappings}-`));
  const rows = [];
  const notes = [];
  let mismatch = false;
  try {
    const xml = path.join(dir, 'input.xml');
    let t = process.hrtime.bigint();
    const gen = generateMetadataXml(xml, mappings, o.snapshots);
    const genSeconds = Number(process.hrtime.bigint() - t) / 1e9;

    // Generous: the 0.9.0 restore uses ~35 bytes of metadata per mapping here, and
    // thin_metadata_size sizes for the pool, not for how many snapshots share it.
    const metaBytes = Math.ceil((gen.mappings * 64 + (16 << 20)) / 4096) * 4096;
    const image = path.join(dir, 'image.meta');
    freshFile(image, metaBytes);
    t = process.hrtime.bigint();
    const made = spawnSync(ref('thin_restore'), ['-i', xml, '-o', image], { encoding: 'utf8' });
    if (made.status !== 0) throw new HarnessError(`reference thin_restore could not make the image: ${lastLine(made.stderr)}`);
    const restoreSeconds = Number(process.hrtime.bigint() - t) / 1e9;
    console.log(`\n${gen.mappings} mappings over ${gen.devices} devices: XML ${(fs.statSync(xml).size / 2 ** 20).toFixed(1)} MiB ` +
      `generated in ${genSeconds.toFixed(2)} s; image made by the reference thin_restore in ${restoreSeconds.toFixed(2)} s`);

    // What each tool does, given where its output goes.
    const jobs = {
      check: () => ({ args: [image], out: undefined }),
      dump: (who) => ({ args: [image], out: path.join(dir, `dump.${who}.xml`) }),
      restore: (who) => {
        const target = path.join(dir, `restored.${who}.meta`);
        freshFile(target, metaBytes);
        return { args: ['-i', xml, '-o', target], target };
      },
      repair: (who) => {
        const target = path.join(dir, `repaired.${who}.meta`);
        freshFile(target, metaBytes);
        return { args: ['-i', image, '-o', target], target };
      },
      // The origin against its first snapshot.
      delta: (who) => ({ args: ['--snap1', '0', '--snap2', '1', image], out: path.join(dir, `delta.${who}.xml`) }),
      ls: (who) => ({ args: ['-o', LS_ALL_FIELDS, image], out: path.join(dir, `ls.${who}.txt`) }),
      // Every data block: the whole reverse map, sorted.
      rmap: (who) => ({ args: ['--region', `0..${gen.nrDataBlocks}`, image], out: path.join(dir, `rmap.${who}.txt`) }),
    };

    let referenceDumpHash;
    const referenceDumpOf = async (meta) => {
      const file = path.join(dir, 'verify.xml');
      const r = spawnSync(ref('thin_dump'), [meta], { stdio: ['ignore', fs.openSync(file, 'w'), 'pipe'], encoding: 'utf8' });
      if (r.status !== 0) return undefined;
      const h = await sha256(file);
      fs.rmSync(file);
      return h;
    };

    for (const tool of o.tools) {
      const name = `thin_${tool}`;
      const ours = path.join(ROOT, 'dist', 'cli', `${name}.js`);
      const refJob = jobs[tool]('ref');
      const refRun = await best(ref(name), refJob.args, { stdoutFile: refJob.out, workDir: dir }, o.repeat);
      if (refRun.status !== 0) {
        throw new HarnessError(`reference ${name} failed (${refRun.status}): ${lastLine(refRun.stderr)}`);
      }
      let ourRun;
      let ourJob;
      if (!fs.existsSync(ours)) ourRun = { missing: true };
      else {
        ourJob = jobs[tool]('ours');
        ourRun = await best(process.execPath, [path.join(ROOT, 'bin', name), ...ourJob.args],
          { stdoutFile: ourJob.out, workDir: dir }, o.repeat);
      }

      let verify = '';
      if (ourRun.missing) verify = 'not built';
      else if (ourRun.status !== 0) {
        verify = `failed (${ourRun.status})`;
        notes.push(`our ${name} failed with status ${ourRun.status} after ${ourRun.seconds.toFixed(2)} s: ${lastLine(ourRun.stderr)}`);
      } else if (SAME_OUTPUT.has(tool)) {
        const [a, b] = [await sha256(refJob.out), await sha256(ourJob.out)];
        if (tool === 'dump') referenceDumpHash = a;
        verify = a === b ? 'same output' : 'MISMATCH';
        if (a !== b) {
          mismatch = true;
          notes.push(`MISMATCH: our ${name} output differs from the reference's (compare ${refJob.out} ${ourJob.out}; ` +
            'rerun with --keep)');
        }
      } else if (tool === 'restore' || tool === 'repair') {
        // Same metadata as the reference's if the reference dumps it identically.
        referenceDumpHash ??= await referenceDumpOf(image);
        const h = await referenceDumpOf(ourJob.target);
        verify = h === undefined ? 'UNREADABLE' : h === referenceDumpHash ? 'same dump' : 'DIFFERS';
        if (verify !== 'same dump') notes.push(`WARNING: the metadata our ${name} wrote ${verify === 'DIFFERS' ? 'dumps differently' : 'is unreadable to the reference thin_dump'}`);
      } else verify = 'exit 0';
      for (const job of [refJob, ourJob]) if (job?.target) fs.rmSync(job.target, { force: true });

      rows.push({ tool: name, mappings: gen.mappings, ours: ourRun, ref: refRun, verify });
    }
  } finally {
    if (o.keep) console.log(`kept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  return { rows, notes, mismatch };
}

// --- report ----------------------------------------------------------------------------------

function table(rows) {
  const head = ['tool', 'mappings', 'ours s', 'ref s', 'ours/ref', 'ours MiB', 'ref MiB', 'check'];
  const mib = (kib) => (kib ? (kib / 1024).toFixed(1) : '?');
  const body = rows.map(({ tool, mappings, ours, ref, verify }) => {
    const ok = !ours.missing && ours.status === 0;
    return [
      tool, String(mappings),
      ours.missing ? 'missing' : ok ? ours.seconds.toFixed(2) : 'failed',
      ref.seconds.toFixed(2),
      ok ? (ours.seconds / ref.seconds).toFixed(2) : '-',
      ok ? mib(ours.peakKiB) : '-',
      mib(ref.peakKiB),
      verify,
    ];
  });
  const widths = head.map((h, c) => Math.max(h.length, ...body.map((r) => r[c].length)));
  const line = (cells) => cells.map((s, c) => (c < 1 || c === 7 ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const ref = (name) => {
    const p = referenceTool(name);
    if (!p) {
      throw new HarnessError(`reference ${name} not found: install it with ` +
        '`apt-get update && apt-get install -y thin-provisioning-tools`');
    }
    return p;
  };
  for (const t of ['thin_restore', 'thin_dump', ...o.tools.map((t) => `thin_${t}`)]) ref(t);
  if (!fs.existsSync(path.join(ROOT, 'dist', 'cli'))) console.log('note: dist/ is not built (npx tsc -p .); our tools show as missing');

  const cpus = os.cpus();
  console.log(`node ${process.version}, ${cpus.length} x ${cpus[0]?.model ?? 'cpu'}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; ` +
    `peak RSS via ${RSS_METHOD === 'gnu-time' ? '/usr/bin/time %M' : '/proc/<pid>/status VmHWM polling'}; ` +
    `best of ${o.repeat} run${o.repeat > 1 ? 's' : ''}`);

  const rows = [];
  const notes = [];
  let mismatch = false;
  for (const size of o.sizes) {
    const r = await benchSize(size, o, ref);
    rows.push(...r.rows);
    notes.push(...r.notes);
    mismatch ||= r.mismatch;
    console.log(table(r.rows));
  }
  if (o.sizes.length > 1) console.log(`\nall sizes:\n${table(rows)}`);
  for (const n of notes) console.log(n);
  console.log(`load average at the end ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (o.json) {
    fs.writeFileSync(o.json, JSON.stringify({ node: process.version, cpus: cpus.length, rssMethod: RSS_METHOD,
      loadavg: os.loadavg(), rows: rows.map(({ ours, ref, ...r }) => ({ ...r,
        ours: ours.missing ? 'missing' : { status: ours.status, seconds: ours.seconds, peakKiB: ours.peakKiB },
        ref: { seconds: ref.seconds, peakKiB: ref.peakKiB } })) }, null, 2));
  }
  if (mismatch) {
    console.log('\n*** MISMATCH: an output of ours differs from the reference tool\'s ***');
    return 1;
  }
  return 0;
}

main().then(
  (status) => { process.exitCode = status; },
  (e) => {
    console.error(`bench: ${e instanceof HarnessError ? e.message : e.stack ?? e}`);
    process.exitCode = 1;
  },
);
