// `npm start`: the engine on a bundled example. A trace of snapshots of snapshots
// (testdata/traces/snapshots.trace) is replayed into a fresh pool in a temporary folder, checked
// against the model at every step, then the pool it leaves is checked and dumped with our tools,
// as a user would run them, with a short account of what happened.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const trace = path.join(root, 'testdata', 'traces', 'snapshots.trace');

if (!fs.existsSync(path.join(root, 'dist', 'cli', 'thin_replay.js'))) {
  console.error('example: the tools are not built yet; run `npm install` (or `npm run build`) first');
  process.exit(1);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-example-'));
const meta = path.join(dir, 'pool_tmeta.bin');
const data = path.join(dir, 'pool_tdata.bin');

function run(tool, args, { show = true } = {}) {
  console.log(`$ ${tool} ${args.map((a) => (a.startsWith(root) ? path.relative(root, a) : a)).join(' ')}`);
  const r = spawnSync(process.execPath, [path.join(root, 'bin', tool), ...args], { encoding: 'utf8' });
  if (r.error) throw r.error;
  if (show) process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  console.log(`(exit status ${r.status})\n`);
  return r;
}

let status = 0;
try {
  console.log(`The trace (${path.relative(root, trace)}):\n`);
  for (const line of fs.readFileSync(trace, 'utf8').split('\n')) if (line.trim()) console.log(`  ${line}`);
  console.log(`\nReplayed into a fresh pool in ${dir}:\n`);
  const replay = run('thin_replay', [trace, '--metadata', meta, '--data', data]);
  status |= replay.status;
  const json = run('thin_replay', [trace, '--metadata', path.join(dir, 'again.bin'), '--data', path.join(dir, 'again.data'), '--json'], { show: false });
  const summary = JSON.parse(json.stdout);
  status |= run('thin_check', [meta]).status;
  const dump = run('thin_dump', [meta]);
  status |= dump.status;

  const devices = [...dump.stdout.matchAll(/<device dev_id="(\d+)" mapped_blocks="(\d+)"[^>]*creation_time="(\d+)" snap_time="(\d+)"/g)];
  console.log('What happened:');
  console.log(`- ${summary.operations} operations ran on a new pool; every write, read and discard was checked`);
  console.log(`  against the model as it went (${summary.dataBlocks.verified ?? 0} blocks read back from the data file matched).`);
  console.log(`- ${summary.dataBlocks.allocated} data blocks were allocated, ${summary.dataBlocks.copied} of them copies made on the`);
  console.log('  first write to a block a snapshot shared (copy-on-write is decided by time: a block mapped before');
  console.log(`  its device's latest snapshot is copied); ${summary.dataBlocks.shared} data blocks are still shared by several devices.`);
  console.log(`- ${summary.commits} commits; the metadata was then compared with the model block by block and`);
  console.log(`  thin_check accepted it (verification: ${summary.verification}).`);
  console.log(`- ${devices.length} devices remain: ${devices.map((d) => `${d[1]} (${d[2]} blocks, created at time ${d[3]})`).join(', ')};`);
  console.log('  device 2, the middle of the snapshot chain, was deleted: what only it held was freed.');
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(status === 0 ? 0 : 1);
