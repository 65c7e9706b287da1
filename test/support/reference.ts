// The reference C++ tools (Debian thin-provisioning-tools 0.9.0): the other side of every
// interoperability check. A test that needs them fails loudly, saying how to install them.
import { execFileSync, spawnSync, SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { expect } from 'vitest';

const SEARCH = ['/usr/sbin', '/sbin', '/usr/bin', '/usr/local/sbin'];

export function referenceTool(name: string): string {
  for (const dir of SEARCH) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(
    `reference tool ${name} not found: install it with ` +
      '`apt-get update && apt-get install -y thin-provisioning-tools`',
  );
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

function result(r: SpawnSyncReturns<string>): RunResult {
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a reference tool; never throws on a non-zero exit. */
export function runReference(name: string, args: string[], input?: string): RunResult {
  return result(spawnSync(referenceTool(name), args, { encoding: 'utf8', input, maxBuffer: 1 << 30 }));
}

// import.meta.url rather than __dirname: the fuzz runner loads these helpers outside vitest, as ESM.
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The upstream 1.x tools (Rust, 1.1.0), unpacked by scripts/ensure-references.mjs. */
export function upstreamTool(name: string): string {
  const p = path.join(ROOT, '.references', '1x', 'bin', name);
  if (!fs.existsSync(p)) throw new Error(`upstream 1.x tool ${name} not found: run \`node scripts/ensure-references.mjs\``);
  return p;
}

/** Runs an upstream 1.x tool; never throws on a non-zero exit. */
export function runUpstream(name: string, args: string[], input?: string): RunResult {
  return result(spawnSync(upstreamTool(name), args, { encoding: 'utf8', input, maxBuffer: 1 << 30 }));
}

/** One of our executables in bin/ (they run the built dist/). */
export function ourTool(name: string): string {
  return path.join(ROOT, 'bin', name);
}

/** Runs one of our tools from bin/ (the built dist/), as a user would. */
export function runOurs(name: string, args: string[], input?: string): RunResult {
  return result(
    spawnSync(process.execPath, [ourTool(name), ...args], {
      encoding: 'utf8',
      input,
      maxBuffer: 1 << 30,
    }),
  );
}

/** A fresh temporary directory, removed by the caller's afterAll. */
export function tempDir(prefix = 'thin-test-'): string {
  return fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', prefix));
}

/** Restores XML with the reference thin_restore into a new metadata file of `sizeMiB`. */
export function referenceRestore(xmlPath: string, metaPath: string, sizeMiB = 8): void {
  fs.writeFileSync(metaPath, '');
  fs.truncateSync(metaPath, sizeMiB * 1024 * 1024);
  const r = runReference('thin_restore', ['-i', xmlPath, '-o', metaPath]);
  if (r.status !== 0) throw new Error(`reference thin_restore failed: ${r.stderr}`);
}

export function sha256(file: string): string {
  return execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0];
}

/** The kernel-written images, with the reference's verdicts and dumps (testdata/kernel-images). */
export const KERNEL_IMAGES: string = path.join(ROOT, 'testdata', 'kernel-images');


/** Numbered scratch files in one temporary directory: XML inputs and sized, empty outputs. */
export function scratchFiles(prefix: string) {
  const dir = tempDir(prefix);
  let seq = 0;
  const file = (name: string): string => path.join(dir, `${seq++}-${name}`);
  return {
    dir,
    file,
    /** A new file of `sizeBytes` (sparse), for a restore or repair to write into. */
    emptyOutput(sizeBytes: number, name = 'out.bin'): string {
      const p = file(name);
      fs.writeFileSync(p, '');
      fs.truncateSync(p, sizeBytes);
      return p;
    },
    writeXml(xml: string): string {
      const p = file('in.xml');
      fs.writeFileSync(p, xml);
      return p;
    },
    remove(): void {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Unpacks the kernel image NAME.bin.gz to `dest` (a fresh copy a test may damage); returns dest. */
export function unpackKernelImage(name: string, dest: string): string {
  fs.writeFileSync(dest, gunzipSync(fs.readFileSync(path.join(KERNEL_IMAGES, `${name}.bin.gz`))));
  return dest;
}

/**
 * Runs a tool's library entry point with its output going to a file, as the command line would
 * run it: exit status 1 for a handled error (a TypeError or RangeError is a bug and is rethrown).
 */
export function runLibrary(outFile: string, run: (stdoutFd: number) => void): { status: number; stdout: string } {
  const fd = fs.openSync(outFile, 'w');
  let status = 0;
  try {
    run(fd);
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) throw e;
    status = 1;
  } finally {
    fs.closeSync(fd);
  }
  return { status, stdout: fs.readFileSync(outFile, 'latin1') };
}

/** Our command and the reference's exit alike and print the same; a failure is one line on stderr. */
export function expectSameAsReference(tool: string, argsList: string[][]): void {
  for (const args of argsList) {
    const ref = runReference(tool, args);
    const ours = runOurs(tool, args);
    expect(ours.status, `${tool} ${args.join(' ')}: ${ours.stderr}`).toBe(ref.status);
    expect(ours.stdout).toBe(ref.stdout);
    if (ref.status !== 0) expect(ours.stderr).toMatch(new RegExp(`^${tool}: [^\\n]*\\n$`));
  }
}
