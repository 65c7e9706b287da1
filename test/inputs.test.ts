// One way to open an input: the same problem with the input gives every tool the same one-line
// message (after the tool's name), exit status 1 as the reference's, nothing on stdout and nothing
// written anywhere. A table of tools x problems.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RunResult, referenceTool, runOurs, runReference, sha256, tempDir } from './support/reference.js';

const ROOT = path.resolve(__dirname, '..');
const dir = tempDir('thin-inputs-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (name: string) => path.join(dir, name);

/** Root reads any file whatever its mode: the unreadable case runs the tools as nobody. */
const NOBODY = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};

function run(command: string, args: string[], asNobody: boolean): RunResult {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 60_000, ...(asNobody ? NOBODY : {}) });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
const ours = (tool: string, args: string[], asNobody = false) =>
  asNobody ? run(process.execPath, [path.join(ROOT, 'bin', tool), ...args], true) : runOurs(tool, args);
const reference = (tool: string, args: string[], asNobody = false) =>
  asNobody ? run(referenceTool(tool), args, true) : runReference(tool, args);

let metadata: string;
let output: string;
let xml: string;

beforeAll(() => {
  fs.chmodSync(dir, 0o755);
  metadata = at('pool.bin');
  fs.writeFileSync(metadata, gunzipSync(fs.readFileSync(path.join(ROOT, 'testdata', 'small-pool.bin.gz'))));
  xml = at('pool.xml');
  fs.copyFileSync(path.join(ROOT, 'testdata', 'small-pool.xml'), xml);
  fs.mkdirSync(at('a-directory'));
  fs.writeFileSync(at('empty'), '');
  fs.writeFileSync(at('tiny'), Buffer.alloc(100, 0xab));
  fs.writeFileSync(at('block-less-one'), Buffer.alloc(4095, 0));
  fs.writeFileSync(at('tiny.xml'), '<superblock uuid="" time="0" transaction="1" data_block_size="128" nr_data_blocks="100">\n</superblock>\n');
  fs.writeFileSync(at('declared.xml'), `<?xml version="1.0"?>\n${fs.readFileSync(xml, 'utf8')}`.slice(0, 4095));
  fs.writeFileSync(at('unreadable'), fs.readFileSync(metadata));
  fs.chmodSync(at('unreadable'), 0);
  // A valid pool as the output: a refused run must leave it exactly as it was.
  output = at('output.bin');
  fs.copyFileSync(metadata, output);
  fs.chmodSync(output, 0o666);
});

interface Problem {
  name: string;
  file: () => string;
  message: RegExp;
  asNobody?: boolean;
}

/** Problems every tool that reads binary metadata must name the same way. */
const METADATA_PROBLEMS: Problem[] = [
  { name: 'missing', file: () => at('no-such-file'), message: /No such file or directory/ },
  { name: 'a directory', file: () => at('a-directory'), message: /Is a directory/ },
  { name: 'unreadable', file: () => at('unreadable'), message: /Permission denied/, asNobody: true },
  { name: 'not a file or block device', file: () => '/dev/null', message: /not a regular file or block device/ },
  { name: 'empty', file: () => at('empty'), message: /too small.*binary metadata/ },
  { name: 'smaller than a block', file: () => at('tiny'), message: /too small.*binary metadata/ },
  { name: 'XML smaller than a block', file: () => at('tiny.xml'), message: /looks like XML/ },
  { name: 'thin_dump XML', file: () => xml, message: /looks like XML/ },
  { name: 'XML with a declaration, one byte short of a block', file: () => at('declared.xml'), message: /looks like XML/ },
];

/** Each way of running a tool on an input; `out` is where it may write, if anywhere. */
const READERS: { name: string; tool: string; args: (input: string, out: string) => string[] }[] = [
  { name: 'thin_check', tool: 'thin_check', args: (i) => [i] },
  { name: 'thin_check -q --clear-needs-check-flag', tool: 'thin_check', args: (i) => ['-q', '--clear-needs-check-flag', i] },
  { name: 'thin_dump', tool: 'thin_dump', args: (i) => [i] },
  { name: 'thin_dump --repair', tool: 'thin_dump', args: (i) => ['--repair', i] },
  { name: 'thin_repair', tool: 'thin_repair', args: (i, out) => ['-i', i, '-o', out] },
];

/** A copy of the valid pool for the reference to write on (0.9.0 writes its output on some bad inputs). */
function referenceOutput(): string {
  const p = at('reference-out.bin');
  fs.copyFileSync(metadata, p);
  fs.chmodSync(p, 0o666);
  return p;
}

function oneLine(tool: string, r: RunResult): string {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0].startsWith(`${tool}: `), lines[0]).toBe(true);
  return lines[0].slice(tool.length + 2);
}

describe.each(METADATA_PROBLEMS)('metadata input $name', (problem) => {
  const messages = new Map<string, string>();

  it.each(READERS)('$name: one line, exit 1 as the reference, nothing written', (reader) => {
    const input = problem.file();
    const before = sha256(output);
    const r = ours(reader.tool, reader.args(input, output), problem.asNobody);
    const message = oneLine(reader.tool, r);
    expect(message).toMatch(problem.message);
    expect(message).toContain(input);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(1);
    expect(sha256(output)).toBe(before);
    expect(r.status).toBe(reference(reader.tool, reader.args(input, referenceOutput()), problem.asNobody).status);
    messages.set(reader.name, message);
  });

  it('every tool says the same', () => {
    expect(messages.size).toBe(READERS.length);
    expect(new Set(messages.values()).size, [...messages.values()].join('\n')).toBe(1);
  });
});

/** Problems thin_restore's XML input can have; the first three read as for the metadata tools. */
const XML_PROBLEMS: (Problem & { sameAsMetadata?: boolean })[] = [
  { name: 'missing', file: () => at('no-such-file'), message: /No such file or directory/, sameAsMetadata: true },
  { name: 'a directory', file: () => at('a-directory'), message: /Is a directory/, sameAsMetadata: true },
  { name: 'unreadable', file: () => at('unreadable'), message: /Permission denied/, asNobody: true, sameAsMetadata: true },
  { name: 'empty', file: () => at('empty'), message: /empty/ },
  { name: 'binary metadata', file: () => metadata, message: /binary metadata, not XML/ },
  { name: 'binary bytes smaller than a block', file: () => at('block-less-one'), message: /binary metadata, not XML/ },
];

describe.each(XML_PROBLEMS)('thin_restore input $name', (problem) => {
  it('one line, exit 1 as the reference, the output untouched', () => {
    const input = problem.file();
    const before = sha256(output);
    const args = ['-i', input, '-o', output];
    const r = ours('thin_restore', args, problem.asNobody);
    const message = oneLine('thin_restore', r);
    expect(message).toMatch(problem.message);
    expect(message).toContain(input);
    expect(r.status).toBe(1);
    expect(sha256(output)).toBe(before);
    if (problem.sameAsMetadata) {
      expect(message).toBe(oneLine('thin_check', ours('thin_check', [input], problem.asNobody)));
    }
    // The reference fails as well, except on empty input (an empty pool to it) and on an
    // unreadable one (it loops for ever).
    if (problem.name !== 'empty' && !problem.asNobody) {
      expect(reference('thin_restore', ['-i', input, '-o', referenceOutput()], problem.asNobody).status).toBe(1);
    }
  });
});

describe('thin_restore input through a pipe', () => {
  /** `cat FILE | thin_restore -i /dev/stdin -o OUT`, as a shell runs it. */
  function piped(file: string, out: string): RunResult {
    const tool = path.join(ROOT, 'bin', 'thin_restore');
    return run('bash', ['-c', 'cat "$0" | "$1" "$2" -i /dev/stdin -o "$3"', file, process.execPath, tool, out], false);
  }

  it.each([
    ['binary metadata', () => metadata, /binary metadata, not XML/],
    ['nothing', () => at('empty'), /empty/],
  ])('%s: the same message as from a file', (_what, file, message) => {
    const before = sha256(output);
    const r = piped(file(), output);
    expect(r.status).toBe(1);
    expect(oneLine('thin_restore', r)).toMatch(message);
    expect(sha256(output)).toBe(before);
  });

  it('XML through a pipe is restored', () => {
    const out = at('piped.bin');
    fs.copyFileSync(metadata, out);
    const r = piped(xml, out);
    expect(r.status, r.stderr).toBe(0);
    expect(runReference('thin_dump', [out]).stdout).toBe(runReference('thin_dump', [metadata]).stdout);
  });
});

describe('outputs, refused before the input is read', () => {
  const cases: { name: string; file: () => string; message: RegExp; dump?: boolean }[] = [
    { name: 'missing', file: () => at('no-such-output'), message: /No such file or directory/ },
    { name: 'in a missing directory', file: () => at('no-such-dir/out'), message: /No such file or directory/, dump: true },
    { name: 'a directory', file: () => at('a-directory'), message: /Is a directory/, dump: true },
    { name: 'not a file or block device', file: () => '/dev/null', message: /not a regular file or block device/ },
  ];
  it.each(cases)('$name: the same message from thin_restore, thin_repair (and thin_dump -o)', (c) => {
    const restore = ours('thin_restore', ['-i', xml, '-o', c.file()]);
    const repair = ours('thin_repair', ['-i', metadata, '-o', c.file()]);
    const message = oneLine('thin_restore', restore);
    expect(message).toMatch(c.message);
    expect(message.startsWith(`${c.file()}: `)).toBe(true);
    expect(oneLine('thin_repair', repair)).toBe(message);
    expect([restore.status, repair.status]).toEqual([1, 1]);
    expect(reference('thin_restore', ['-i', xml, '-o', c.file()]).status).toBe(1);
    if (c.dump) {
      const dump = ours('thin_dump', [metadata, '-o', c.file()]);
      expect(dump.status).toBe(1);
      expect(oneLine('thin_dump', dump)).toBe(message.replace(/ \(the output must .*\)$/, ''));
    }
  });
});
