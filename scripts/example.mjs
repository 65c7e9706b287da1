// `npm start`: our thin_check and thin_dump on a bundled pool (testdata/small-pool.bin.gz, made by
// the reference tools), run as a user would run them, printing what they print.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const image = path.join(root, 'testdata', 'small-pool.bin.gz');

if (!fs.existsSync(path.join(root, 'dist', 'cli', 'thin_dump.js'))) {
  console.error('example: the tools are not built yet; run `npm install` (or `npm run build`) first');
  process.exit(1);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-example-'));
const meta = path.join(dir, 'small-pool.bin');
fs.writeFileSync(meta, gunzipSync(fs.readFileSync(image)));

function run(tool, args) {
  console.log(`$ ${tool} ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [path.join(root, 'bin', tool), ...args], { encoding: 'utf8' });
  if (r.error) throw r.error;
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  console.log(`(exit status ${r.status})\n`);
  return r.status;
}

let status = 0;
try {
  console.log(`Metadata: ${path.relative(root, image)}, unpacked to ${meta}\n`);
  status |= run('thin_check', [meta]);
  status |= run('thin_dump', ['--skip-mappings', meta]);
  status |= run('thin_dump', ['--dev-id', '0', '--format', 'human_readable', meta]);
  status |= run('thin_dump', ['--dev-id', '0', meta]);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
process.exit(status === 0 ? 0 : 1);
