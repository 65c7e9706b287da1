// The quick start (bin/start.cjs, scripts/bundle.mjs): bin/<tool> runs the tool's one-file
// bundle from V8's code cache, and the compiled modules instead when tsc has run since the bundle
// was made, so a stale bundle never shadows fresh code.
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tempDir } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const TOOLS = Object.keys(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).bin as object);
const scratch = tempDir('thin-startup-');
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A copy of bin/start.cjs over a made-up dist/ whose bundle and modules each say which they are. */
function fakeInstall(name: string, files: { bundle?: number; modules?: number }): string {
  const root = path.join(scratch, name);
  fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
  for (const f of ['start.cjs', 'package.json']) fs.copyFileSync(path.join(ROOT, 'bin', f), path.join(root, 'bin', f));
  fs.writeFileSync(path.join(root, 'bin', 'tool'), "require('./start.cjs')('tool');\n");
  const write = (rel: string, text: string, mtimeSeconds: number) => {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, text);
    fs.utimesSync(p, mtimeSeconds, mtimeSeconds);
  };
  if (files.bundle !== undefined) {
    write('dist/bundle/tool.cjs', "process.stdout.write('bundle ' + process.argv.slice(2).join(' '));", files.bundle);
  }
  if (files.modules !== undefined) {
    write('dist/cli/tool.js', "process.stdout.write('modules ' + process.argv.slice(2).join(' '));", files.modules);
  }
  return root;
}

function runFake(root: string): string {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'tool'), 'x', 'y'], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  return r.stdout;
}

describe('bin/start.cjs', () => {
  it('runs the bundle when it is at least as new as the modules', () => {
    expect(runFake(fakeInstall('fresh', { bundle: 2000, modules: 1000 }))).toBe('bundle x y');
    expect(runFake(fakeInstall('same', { bundle: 1000, modules: 1000 }))).toBe('bundle x y');
  });

  it('runs the modules when tsc rebuilt them after the bundle, or there is no bundle', () => {
    expect(runFake(fakeInstall('stale', { bundle: 1000, modules: 2000 }))).toBe('modules x y');
    expect(runFake(fakeInstall('unbundled', { modules: 1000 }))).toBe('modules x y');
  });

  it('runs a bundle that has no modules beside it', () => {
    expect(runFake(fakeInstall('bundle-only', { bundle: 1000 }))).toBe('bundle x y');
  });
});

describe('the build', () => {
  it.each(TOOLS)('%s: bin/ runs its bundle, and V8 accepts the code cache taken at build time', (tool) => {
    const bundle = path.join(ROOT, 'dist', 'bundle', `${tool}.cjs`);
    const modules = path.join(ROOT, 'dist', 'cli', `${tool}.js`);
    expect(fs.existsSync(bundle), `${bundle} is missing: run \`npm run build\``).toBe(true);
    expect(fs.statSync(bundle).mtimeMs >= fs.statSync(modules).mtimeMs, 'the bundle is older than dist/cli: run `npm run build`')
      .toBe(true);
    // Compiled in a fresh Node as bin/start.cjs compiles it (its V8 flags first): a rejected cache
    // only costs time, so nothing else would notice.
    const probe = `require(${JSON.stringify(path.join(ROOT, 'bin', 'start.cjs'))}).tuneV8();
      const vm = require('node:vm'), fs = require('node:fs'), { wrap } = require('node:module');
      const s = new vm.Script(wrap(fs.readFileSync(process.argv[1], 'utf8')), { filename: process.argv[1],
        cachedData: fs.readFileSync(process.argv[1] + '.cache'), importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER });
      process.stdout.write(String(s.cachedDataRejected));`;
    const r = spawnSync(process.execPath, ['-e', probe, bundle], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('false');
    // And the tool loads nothing of dist/cli (NODE_DEBUG=module lists every file it loads).
    const run = spawnSync(process.execPath, [path.join(ROOT, 'bin', tool), '--version'],
      { encoding: 'utf8', env: { ...process.env, NODE_DEBUG: 'module' } });
    expect(run.status).toBe(0);
    expect(run.stderr).toContain(path.join('dist', 'bundle'));
    expect(run.stderr).not.toContain(path.join('dist', 'cli'));
  });
});
