// Nothing is ever lost: every tool that writes refuses an output that is its input, whatever
// the name it goes by (the same path, a hard link, a symbolic link, the loop device a file is
// attached to, or the file behind a loop device), before writing anything. Block devices where we
// write are opened exclusively, so metadata another opener holds (a live pool) is refused too.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setNeedsCheck } from './support/damage.js';
import { RunResult, runOurs, runReference, sha256, tempDir } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const dir = tempDir('thin-same-');
const at = (name: string) => path.join(dir, name);
let metadata: string;
let xml: string;

function freshCopy(from: string, name: string): string {
  const p = at(name);
  fs.copyFileSync(from, p);
  return p;
}

beforeAll(() => {
  metadata = at('pool.bin');
  fs.writeFileSync(metadata, gunzipSync(fs.readFileSync(path.join(ROOT, 'testdata', 'small-pool.bin.gz'))));
  xml = freshCopy(path.join(ROOT, 'testdata', 'small-pool.xml'), 'pool.xml');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A refusal: status 1, one line naming the output as the input, and the input's bytes kept. */
function expectRefused(r: RunResult, tool: string, input: string, before: string): void {
  expect(r.status, r.stderr).toBe(1);
  const lines = r.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^${tool}: .*is the input`));
  expect(sha256(input)).toBe(before);
  expect(fs.readdirSync(path.dirname(input)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
}

/** Other names for `file`: itself, relative to the working directory, a hard link, a symbolic link. */
function aliases(file: string): [string, string][] {
  const base = path.basename(file);
  const hard = at(`${base}.hardlink`);
  const soft = at(`${base}.symlink`);
  fs.rmSync(hard, { force: true });
  fs.rmSync(soft, { force: true });
  fs.linkSync(file, hard);
  fs.symlinkSync(file, soft);
  return [['the same path', file], ['a relative path', path.relative(process.cwd(), file)], ['a hard link', hard], ['a symbolic link', soft]];
}

describe.each([
  { tool: 'thin_restore', input: () => xml, args: (i: string, o: string) => ['-i', i, '-o', o] },
  { tool: 'thin_repair', input: () => metadata, args: (i: string, o: string) => ['-i', i, '-o', o] },
  { tool: 'thin_dump', input: () => metadata, args: (i: string, o: string) => [i, '-o', o] },
  { tool: 'thin_dump', input: () => metadata, args: (i: string, o: string) => ['--repair', i, '-o', o] },
])('$tool $args', ({ tool, input, args }) => {
  it('refuses its input as output under every name', () => {
    const file = input();
    const before = sha256(file);
    for (const [what, alias] of aliases(file)) {
      const r = runOurs(tool, args(file, alias));
      expectRefused(r, tool, file, before);
      expect(r.stderr, what).toContain(alias);
    }
  });
});

/** Loop devices: only root can attach them. */
const isRoot = process.getuid?.() === 0;

describe.skipIf(!isRoot)('loop devices', () => {
  const attached: string[] = [];
  const attach = (file: string): string => {
    const dev = execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8' }).trim();
    attached.push(dev);
    return dev;
  };
  afterAll(() => {
    for (const dev of attached) execFileSync('losetup', ['-d', dev]);
  });

  let image: string;
  let loop: string;
  let xmlLoop: string;
  let secondLoop: string;
  beforeAll(() => {
    image = freshCopy(metadata, 'looped.bin');
    loop = attach(image);
    secondLoop = attach(image);
    // An XML input attached too: restore must not write over it through its loop device.
    xmlLoop = attach(xml);
  });

  it('reads a loop device as the reference does (size from the kernel)', () => {
    const check = runOurs('thin_check', [loop]);
    expect(check.status).toBe(runReference('thin_check', [loop]).status);
    // Our METADATA_FREE_BLOCKS is the real count (0.9.0 prints nr_blocks - 1): as for the file.
    expect(check.stdout).toBe(runOurs('thin_check', [image]).stdout);
    expect(runOurs('thin_dump', [loop]).stdout).toBe(runReference('thin_dump', [loop]).stdout);
  });

  it.each([
    ['thin_repair', 'the file behind the output loop device', () => ['-i', image, '-o', loop]],
    ['thin_repair', 'the loop device of the output file', () => ['-i', loop, '-o', image]],
    ['thin_repair', 'two loop devices of one file', () => ['-i', loop, '-o', secondLoop]],
    ['thin_repair', 'one device under another name', () => {
      const link = at('loop.symlink');
      fs.rmSync(link, { force: true });
      fs.symlinkSync(loop, link);
      return ['-i', loop, '-o', link];
    }],
    ['thin_dump', 'the file behind the output loop device', () => [image, '-o', loop]],
    ['thin_dump', 'the loop device of the output file', () => [loop, '-o', image]],
    ['thin_dump', 'repair: the loop device of the output file', () => ['--repair', loop, '-o', image]],
    ['thin_restore', 'the loop device of the input XML', () => ['-i', xml, '-o', xmlLoop]],
  ] as const)('%s: %s', (tool, _what, args) => {
    const input = tool === 'thin_restore' ? xml : image;
    const before = sha256(input);
    expectRefused(runOurs(tool, args()), tool, input, before);
  });

  it('writes a free loop device (size from the kernel), and refuses it while another holds it', () => {
    const target = at('target.bin');
    fs.writeFileSync(target, Buffer.alloc(4 << 20, 0xee));
    const dev = attach(target);
    // Held exclusively, as the kernel holds a live pool's metadata device.
    const fd = fs.openSync(dev, fs.constants.O_RDONLY | fs.constants.O_EXCL);
    try {
      const before = sha256(target);
      for (const [tool, args] of [['thin_restore', ['-i', xml, '-o', dev]], ['thin_repair', ['-i', metadata, '-o', dev]]] as const) {
        const r = runOurs(tool, [...args]);
        expect(r.status).toBe(1);
        expect(r.stderr.trim()).toBe(`${tool}: ${dev}: Device or resource busy (is the pool active?)`);
        expect(sha256(target)).toBe(before);
      }
      // Reading needs no exclusive open: thin_check and thin_dump -m serve live pools.
      expect(runOurs('thin_dump', [dev]).stderr).not.toMatch(/busy/);
    } finally {
      fs.closeSync(fd);
    }
    for (const [tool, args] of [['thin_restore', ['-i', xml, '-o', dev]], ['thin_repair', ['-i', metadata, '-o', dev]]] as const) {
      const r = runOurs(tool, [...args]);
      expect(r.status, r.stderr).toBe(0);
      expect(runReference('thin_check', [dev]).status).toBe(0);
      expect(runReference('thin_dump', [dev]).stdout).toBe(runReference('thin_dump', [metadata]).stdout);
    }
  });

  it('thin_check clears needs_check only on a device no one holds', () => {
    const flagged = freshCopy(metadata, 'flagged.bin');
    setNeedsCheck(flagged, true);
    const dev = attach(flagged);
    const args = ['-q', '--clear-needs-check-flag', dev];
    const fd = fs.openSync(dev, fs.constants.O_RDONLY | fs.constants.O_EXCL);
    try {
      const before = sha256(flagged);
      const r = runOurs('thin_check', args);
      expect([r.status, r.stdout, r.stderr]).toEqual([1, '', `thin_check: ${dev}: Device or resource busy (is the pool active?)\n`]);
      expect(sha256(flagged)).toBe(before);
    } finally {
      fs.closeSync(fd);
    }
    expect(runOurs('thin_check', args).status).toBe(0);
    expect(runReference('thin_dump', [dev]).stdout).toMatch(/^<superblock [^>]* flags="0" /);
  });
});
