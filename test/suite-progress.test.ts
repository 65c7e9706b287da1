// thin_metadata_pack/unpack, thin_trim and thin_extract show a cli-progress bar on a terminal
// and nothing of it with -q or when stderr is piped. (thin_ls and thin_rmap show one only from
// a million mappings, as thin_dump; bench/run.mjs sizes exercise that.) The terminal is a
// pseudo-terminal from util-linux `script`.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateXml } from './support/generate.js';
import { referenceRestore, runOurs, tempDir } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const dir = tempDir('thin-suite-progress-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function onTerminal(tool: string, args: string[]): string {
  const command = [process.execPath, path.join(ROOT, 'bin', tool), ...args].map((a) => `'${a}'`).join(' ');
  const r = spawnSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`script (util-linux) is needed for this test: ${r.error.message}`);
  return r.stdout;
}

let meta = '';
let data = '';
beforeAll(() => {
  const xml = path.join(dir, 'pool.xml');
  fs.writeFileSync(xml, generateXml({ seed: 51, nrDataBlocks: 20000, mappingsPerOrigin: 2000, snapshotsPerOrigin: 2 }));
  meta = path.join(dir, 'meta.bin');
  referenceRestore(xml, meta, 8);
  data = path.join(dir, 'data.bin');
  fs.writeFileSync(data, '');
  fs.truncateSync(data, 20000 * 65536);
});

describe('progress of the new tools', () => {
  it('a bar on a terminal, none with -q, none when piped', () => {
    const packed = path.join(dir, 'm.pack');
    const cases: [string, string[], RegExp][] = [
      ['thin_metadata_pack', ['-f', '-i', meta, '-o', packed], /Packing \[[█░]+\] \d+%/],
      ['thin_metadata_unpack', ['-f', '-i', packed, '-o', path.join(dir, 'u.bin')], /Unpacking \[[█░]+\] \d+%/],
      ['thin_trim', ['--metadata-dev', meta, '--data-dev', data], /Trimming \[[█░]+\] \d+%/],
      ['thin_extract', ['--metadata', meta, '--data', data, '--dev-id', '0', '-o', path.join(dir, 'v.img')], /Extracting \[[█░]+\] \d+%/],
    ];
    for (const [tool, args, bar] of cases) {
      expect(onTerminal(tool, args), tool).toMatch(bar);
      expect(onTerminal(tool, ['-q', ...args]), `${tool} -q`).toBe('');
      const piped = runOurs(tool, args);
      expect(piped.status, piped.stderr).toBe(0);
      expect(piped.stderr).toBe('');
    }
  });
});
