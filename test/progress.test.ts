// Long runs show a cli-progress bar on a terminal, and nothing of it when piped or with -q.
// The terminal is a pseudo-terminal from util-linux `script`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateXml } from './support/generate.js';
import { referenceRestore, runOurs, scratchFiles } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const scratch = scratchFiles('thin-progress-');
afterAll(() => scratch.remove());

/** Runs one of our tools with a terminal for stdout and stderr; returns what the terminal showed. */
function onTerminal(tool: string, args: string[]): string {
  const command = [process.execPath, path.join(ROOT, 'bin', tool), ...args].map((a) => `'${a}'`).join(' ');
  const r = spawnSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`script (util-linux) is needed for this test: ${r.error.message}`);
  return r.stdout;
}

let xml: string;
let meta: string;
beforeAll(() => {
  xml = scratch.writeXml(generateXml({ seed: 41, mappingsPerOrigin: 3000, snapshotsPerOrigin: 3 }));
  meta = scratch.file('meta.bin');
  referenceRestore(xml, meta, 8);
});

describe('progress', () => {
  it('thin_check: a bar on a terminal, none with -q, none when piped', () => {
    expect(onTerminal('thin_check', [meta])).toMatch(/checking \[[█░]+\] \d+%/);
    expect(onTerminal('thin_check', ['-q', meta])).toBe('');
    const piped = runOurs('thin_check', [meta]);
    expect(piped.status).toBe(0);
    expect(piped.stderr).not.toMatch(/[█░]|%/);
  });

  it('thin_restore: a bar on a terminal, none with -q, none when piped', () => {
    const out = scratch.emptyOutput(8 << 20);
    expect(onTerminal('thin_restore', ['-i', xml, '-o', out])).toMatch(/Restoring \[[█░]+\] \d+%/);
    expect(onTerminal('thin_restore', ['-q', '-i', xml, '-o', out])).toBe('');
    const piped = runOurs('thin_restore', ['-i', xml, '-o', out]);
    expect(piped.status).toBe(0);
    expect(piped.stderr).toBe('');
  });

  it('thin_repair: a bar while it scans a device whose superblock is gone', () => {
    const damaged = scratch.file('damaged.bin');
    fs.copyFileSync(meta, damaged);
    const fd = fs.openSync(damaged, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, 0);
    fs.closeSync(fd);
    const out = scratch.emptyOutput(8 << 20);
    expect(onTerminal('thin_repair', ['-i', damaged, '-o', out, '--data-block-size', '128'])).toMatch(/Scanning \[[█░]+\] \d+%/);
    const piped = runOurs('thin_repair', ['-i', damaged, '-o', out, '--data-block-size', '128']);
    expect(piped.status, piped.stderr).toBe(0);
    expect(piped.stderr).not.toMatch(/[█░]/);
  });
});
