#!/usr/bin/env node
// The second step of `npm run build`, after tsc: each tool (package.json "bin") becomes one
// CommonJS file, dist/bundle/<tool>.cjs, with V8's code cache for it beside it
// (<tool>.cjs.cache), which bin/<tool> loads. Start-up is what lvm2 pays at every pool
// activation: one file instead of thirty modules, no ES-module loader, and functions already
// compiled, take thin_check on a small pool from ~50 ms above bare Node to ~10 ms
// (docs/benchmarks.md, docs/decisions.md).
//
// The code cache holds the functions a run compiles, so it is taken from one real run of each
// tool on the small pool in testdata/; V8 rejects it (and the tool simply compiles as it goes)
// when the Node that runs the tool is not the one that built it.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIST = path.join(ROOT, 'dist');
const OUT = path.join(DIST, 'bundle');

/**
 * The package of this machine's native crc32c binary, as @node-rs/crc32's loader picks it. The
 * loader first tries a file that is not there (a thrown error), reads /usr/bin/ldd to tell glibc
 * from musl and checks versions: 2 to 6 ms of every start. The bundle asks for the binary's
 * package directly and falls back to the loader if that fails (another machine, a reinstall).
 */
function nativeCrc32Package() {
  const require = createRequire(import.meta.url);
  require('@node-rs/crc32');
  for (const file of Object.keys(require.cache)) {
    const m = /node_modules[\\/]@node-rs[\\/](crc32-[^\\/]+)[\\/][^\\/]+\.node$/.exec(file);
    if (m) return `@node-rs/${m[1]}`;
  }
  return undefined;
}

/** Source rewrites that only make sense in a CommonJS bundle. */
function commonJsPlugin() {
  const crc32Package = nativeCrc32Package();
  const must = (code, from, to, what) => {
    if (!code.includes(from)) throw new Error(`bundle: ${what} no longer reads as expected; update scripts/bundle.mjs`);
    return code.replace(from, to);
  };
  return {
    name: 'thin-tools-commonjs',
    transform(code, id) {
      // Of package.json the tools need only the version (printed by -V).
      if (id === path.join(ROOT, 'package.json')) return JSON.stringify({ version: JSON.parse(code).version });
      // commander loads child_process (and with it net and streams, 2-4 ms) for git-style
      // subcommands, which no tool of ours has: load it only if one ever runs.
      if (id.endsWith(path.join('commander', 'lib', 'command.js'))) {
        return must(code, "const childProcess = require('node:child_process');",
          "const childProcess = { spawn: (...a) => require('node:child_process').spawn(...a) };", 'commander');
      }
      if (!id.startsWith(DIST)) return null;
      // Our modules reach package.json and CommonJS packages through createRequire: in the
      // bundle that is the bundle's own require, so the bundler takes them into the one file
      // (cli-progress included, run only when a bar is shown).
      let out = code.replaceAll('createRequire(import.meta.url)', 'require');
      // Any other use would name the bundle's location instead of the module's: refuse it.
      if (out.includes('import.meta')) throw new Error(`bundle: ${path.relative(ROOT, id)} uses import.meta, which would point into dist/bundle; update scripts/bundle.mjs`);
      if (id === path.join(DIST, 'pdata', 'checksum.js') && crc32Package) {
        out = must(out, "require('@node-rs/crc32')",
          `(() => { try { return require('${crc32Package}'); } catch { return require('@node-rs/crc32'); } })()`, 'checksum.ts');
      }
      return out;
    },
  };
}

/** A run of each tool that exercises what its users run, to take the code cache from. */
function trainingRuns(scratch) {
  const testdata = path.join(ROOT, 'testdata');
  const pool = path.join(scratch, 'small-pool.bin');
  fs.writeFileSync(pool, gunzipSync(fs.readFileSync(path.join(testdata, 'small-pool.bin.gz'))));
  const output = (name) => {
    const p = path.join(scratch, name);
    fs.writeFileSync(p, '');
    fs.truncateSync(p, 4 << 20);
    return p;
  };
  return {
    thin_check: () => [pool],
    thin_dump: () => [pool],
    thin_restore: () => ['-i', path.join(testdata, 'small-pool.xml'), '-o', output('restored.bin')],
    thin_repair: () => ['-i', pool, '-o', output('repaired.bin')],
    thin_metadata_size: () => ['-b', '64k', '-s', '1t', '-m', '1000'],
    thin_replay: () => ['--metadata', path.join(scratch, 'replay-meta.bin'), '--data', path.join(scratch, 'replay-data.bin'),
      '--no-sync', '-q', path.join(testdata, 'traces', 'snapshots.trace')],
  };
}

async function bundle(build, tool, plugin) {
  const entry = path.join(DIST, 'cli', `${tool}.js`);
  if (!fs.existsSync(entry)) throw new Error(`bundle: ${path.relative(ROOT, entry)} is missing: run tsc first`);
  await build({
    input: entry,
    platform: 'node',
    // The native crc32c addon and koffi (thin_trim's FFI) load their platform's binary at run time.
    external: [/^@node-rs\//, 'koffi'],
    plugins: [plugin],
    output: { file: path.join(OUT, `${tool}.cjs`), format: 'cjs', codeSplitting: false },
    logLevel: 'warn',
  });
}

async function main() {
  const tools = Object.keys(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).bin);
  fs.rmSync(OUT, { recursive: true, force: true });
  let build;
  try {
    ({ build } = await import('rolldown'));
  } catch (e) {
    // The tools still run, from dist/cli, only slower to start; the tests say so.
    console.error(`bundle: skipped, the bundler does not load here (${e.message.split('\n')[0]}); the tools start from dist/cli`);
    return;
  }
  const plugin = commonJsPlugin();
  for (const tool of tools) await bundle(build, tool, plugin);

  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-bundle-'));
  try {
    const runs = trainingRuns(scratch);
    for (const tool of tools) {
      const cache = path.join(OUT, `${tool}.cjs.cache`);
      const args = runs[tool]?.() ?? ['--version'];
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', tool), ...args], {
        stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', env: { ...process.env, THIN_TOOLS_WRITE_CODE_CACHE: cache },
      });
      if (r.status !== 0 || !fs.existsSync(cache)) {
        throw new Error(`bundle: the training run of ${tool} failed (${r.status}): ${r.stderr.trim().split('\n').pop()}`);
      }
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e.message);
  process.exitCode = 1;
});
