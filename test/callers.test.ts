// What the programs that call us depend on. lvm2 reads thin_check's exit status 2 as "tool not
// installed" and skips the check, so no handled error exits 2; lvconvert --repair reads the first
// line of thin_dump and closes the pipe; callers gate features on the `-V` line.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { referenceTool, runOurs, runReference, tempDir, unpackKernelImage } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const dir = tempDir('thin-callers-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => path.join(dir, name);

const PACKAGE = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> };
// The executables of bin/ (beside them: start.cjs, which they share, and a package.json that
// makes them CommonJS).
const TOOLS = fs.readdirSync(path.join(ROOT, 'bin'))
  .filter((f) => (fs.statSync(path.join(ROOT, 'bin', f)).mode & 0o111) !== 0).sort();

let metadata: string;
let big: string;
let xml: string;
beforeAll(() => {
  metadata = at('pool.bin');
  fs.writeFileSync(metadata, gunzipSync(fs.readFileSync(path.join(ROOT, 'testdata', 'small-pool.bin.gz'))));
  big = unpackKernelImage('tmeta', at('tmeta.bin'));
  xml = at('pool.xml');
  fs.copyFileSync(path.join(ROOT, 'testdata', 'small-pool.xml'), xml);
});

describe('-V', () => {
  it('every executable in bin/ is in package.json, and the version is 1.0.0 or later', () => {
    expect(Object.keys(PACKAGE.bin).sort()).toEqual(TOOLS);
    const [major] = PACKAGE.version.split('.').map(Number);
    expect(major).toBeGreaterThanOrEqual(1);
  });

  it.each(TOOLS.flatMap((tool) => [[tool, '-V'], [tool, '--version']]))('%s %s: one bare version line, exit 0', (tool, flag) => {
    const r = runOurs(tool, [flag]);
    expect(r).toEqual({ status: 0, stdout: `${PACKAGE.version}\n`, stderr: '' });
    // As the reference does, where it has the tool: a bare line (theirs says 0.9.0), exit 0.
    if (!inReference(tool)) return;
    const ref = runReference(tool, [flag]);
    expect([ref.status, /^\d+\.\d+\.\d+\n$/.test(ref.stdout)]).toEqual([0, true]);
  });
});

/** Whether the 0.9.0 reference has this tool (thin_replay and the 1.x-only tools it has not). */
function inReference(tool: string): boolean {
  try {
    referenceTool(tool);
    return true;
  } catch {
    return false;
  }
}

describe('exit status of usage errors: that of the reference, never 2', () => {
  /** Every tool, and those after it, gets the first two; the rest are each tool's own. */
  const COMMON = [['--bogus-option'], ['-Z']];
  const USAGE: Record<string, string[][]> = {
    thin_check: [[], ['--bogus', 'M'], ['-x', 'M'], ['--override-mapping-root'], ['--override-mapping-root', 'x', 'M'], ['-m', '-q']],
    thin_dump: [[], ['--bogus', 'M'], ['-x'], ['-f'], ['-f', 'bogus', 'M'], ['--dev-id'], ['--dev-id', 'x', 'M'], ['-o'], ['-m', '-q']],
    thin_restore: [[], ['-i'], ['-o'], ['--bogus'], ['-i', 'X'], ['-o', 'M'], ['-i', 'X', '-o', 'M', '--transaction-id', 'x'], ['-i', 'X', '-o', 'M', '--data-block-size']],
    thin_repair: [[], ['-i'], ['-o'], ['--bogus'], ['-i', 'M'], ['-o', 'M'], ['-i', 'M', '-o', 'M2', '--nr-data-blocks', 'x']],
    thin_metadata_size: [[], ['--bogus'], ['-b'], ['-b', '64k'], ['-b', '100s', '-s', '1t', '-m', '10'], ['-b', '64k', '-s', '1t', '-m', '10', '-u', 'q']],
  };
  const cases = TOOLS.flatMap((tool) => [...COMMON, ...(USAGE[tool] ?? [])].map((args) => ({ tool, args })));

  it.each(cases)('$tool $args', ({ tool, args }) => {
    const sub = (a: string[]) => a.map((x) => (x === 'M' ? metadata : x === 'M2' ? at('nope.bin') : x === 'X' ? xml : x));
    const ours = runOurs(tool, sub(args));
    expect(ours.status, ours.stderr).toBe(inReference(tool) ? runReference(tool, sub(args)).status : 1);
    expect(ours.status).not.toBe(2);
    expect(ours.stderr.split('\n').filter((l) => l !== '').length, ours.stderr).toBeLessThanOrEqual(1);
  });
});

describe('lvm2: thin_check -q --clear-needs-check-flag at every activation', () => {
  it.each([
    ['a sound pool', () => metadata],
    ['a missing device', () => at('missing.bin')],
    ['a damaged pool', () => {
      const p = at('damaged.bin');
      fs.copyFileSync(metadata, p);
      const fd = fs.openSync(p, 'r+');
      fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, 0);
      fs.closeSync(fd);
      return p;
    }],
    ['XML instead of metadata', () => xml],
  ])('%s: the reference status, never 2, nothing on stdout', (_what, file) => {
    const args = ['-q', '--clear-needs-check-flag', file()];
    const ours = runOurs('thin_check', args);
    expect(ours.status).toBe(runReference('thin_check', args).status);
    expect(ours.status).not.toBe(2);
    expect(ours.stdout).toBe('');
  });
});

describe('lvconvert --repair: a reader that closes the pipe after the first line', () => {
  /** Runs `command args | head -1` in bash: the first line, the command's stderr and its exit status. */
  function firstLine(command: string[], args: string[]) {
    const quoted = [...command, ...args].map((a) => `'${a}'`).join(' ');
    const r = spawnSync('bash', ['-c', `${quoted} 2>"$0" | head -1; echo "\${PIPESTATUS[0]}" >&2`, at('stderr.txt')], { encoding: 'utf8' });
    return { line: r.stdout, stderr: fs.readFileSync(at('stderr.txt'), 'utf8'), status: r.stderr.trim() };
  }

  it.each([[[]], [['--repair']], [['-f', 'human_readable']]])('thin_dump %o: quiet, the status the reference has', (flags) => {
    const ours = firstLine([process.execPath, path.join(ROOT, 'bin', 'thin_dump')], [...flags, big]);
    const ref = firstLine([referenceTool('thin_dump')], [...flags, big]);
    expect(ours.stderr).toBe('');
    expect(ours.line).toBe(ref.line);
    expect(ours.status).toBe(ref.status);
  });
});
