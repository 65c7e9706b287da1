#!/usr/bin/env node
// Before the tests: make sure both reference tool sets the tests compare against are here.
// - 0.9.0 (C++), Debian's thin-provisioning-tools package, in /usr/sbin;
// - 1.x (Rust, 1.1.0), Debian trixie's package unpacked into .references/1x/bin, so the
//   system's tools are not touched.
// Installs what is missing when it can (Debian or Ubuntu, as root), else stops with the one
// command to run. Prints nothing when both are present.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const UPSTREAM_DIR = path.join(ROOT, '.references', '1x');
const REFERENCE_090 = '/usr/sbin/thin_check';

const isRoot = process.getuid?.() === 0;
const hasApt = fs.existsSync('/usr/bin/apt-get');

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', ...opts });
  return r.status === 0 ? r.stdout : null;
}

function fail(what, command) {
  console.error(`npm test needs ${what}. Install it with:\n  ${command}`);
  process.exit(1);
}

function ensure090() {
  if (fs.existsSync(REFERENCE_090)) return;
  const command = 'apt-get update && apt-get install -y thin-provisioning-tools';
  if (!isRoot || !hasApt) fail('the 0.9.0 reference tools (Debian thin-provisioning-tools)', `sudo sh -c '${command}'`);
  console.error('installing the 0.9.0 reference tools (thin-provisioning-tools) ...');
  if (run('sh', ['-c', command], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }) === null ||
      !fs.existsSync(REFERENCE_090)) {
    fail('the 0.9.0 reference tools', command);
  }
}

/** The machine's Debian mirror (deb822 or one-line sources). */
function debianMirror() {
  const deb822 = '/etc/apt/sources.list.d/debian.sources';
  if (fs.existsSync(deb822)) {
    const m = /^URIs:\s*(\S+)/m.exec(fs.readFileSync(deb822, 'utf8'));
    if (m) return m[1];
  }
  const list = '/etc/apt/sources.list';
  if (fs.existsSync(list)) {
    const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+/m.exec(fs.readFileSync(list, 'utf8'));
    if (m && !m[1].includes('security')) return m[1];
  }
  return 'http://deb.debian.org/debian';
}

/** Downloads Debian trixie's thin-provisioning-tools (1.1.0) with apt and unpacks it. */
function ensure1x() {
  if (fs.existsSync(path.join(UPSTREAM_DIR, 'bin', 'thin_check'))) return;
  const command = `node ${path.relative(process.cwd(), fileURLToPath(import.meta.url))}   # as root, on Debian or Ubuntu`;
  if (!isRoot || !hasApt) fail('the upstream 1.x reference tools', command);
  console.error('installing the upstream 1.x reference tools into .references/1x ...');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'thin-1x-'));
  try {
    fs.mkdirSync(path.join(work, 'lists', 'partial'), { recursive: true });
    fs.mkdirSync(path.join(work, 'cache', 'archives', 'partial'), { recursive: true });
    fs.writeFileSync(
      path.join(work, 'sources.list'),
      `deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${debianMirror()} trixie main\n`,
    );
    const opts = [
      '-o', `Dir::Etc::SourceList=${path.join(work, 'sources.list')}`, '-o', 'Dir::Etc::SourceParts=/dev/null',
      '-o', `Dir::State::Lists=${path.join(work, 'lists')}`, '-o', `Dir::Cache=${path.join(work, 'cache')}`,
      '-o', 'APT::Sandbox::User=root',
    ];
    if (run('apt-get', [...opts, '-qq', 'update']) === null) fail('the upstream 1.x reference tools (apt update failed)', command);
    if (run('apt-get', [...opts, '-qq', 'download', 'thin-provisioning-tools'], { cwd: work }) === null) {
      fail('the upstream 1.x reference tools (download failed)', command);
    }
    const deb = fs.readdirSync(work).find((f) => f.startsWith('thin-provisioning-tools_') && f.endsWith('.deb'));
    if (!deb || run('dpkg-deb', ['-x', path.join(work, deb), path.join(work, 'x')]) === null) {
      fail('the upstream 1.x reference tools (unpacking failed)', command);
    }
    // A failed earlier install may have left dangling links behind.
    fs.rmSync(UPSTREAM_DIR, { recursive: true, force: true });
    fs.mkdirSync(UPSTREAM_DIR, { recursive: true });
    // The tools are links to one binary, pdata_tools: keep them relative.
    fs.cpSync(path.join(work, 'x', 'usr', 'sbin'), path.join(UPSTREAM_DIR, 'bin'), { recursive: true, verbatimSymlinks: true });
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  if (run(path.join(UPSTREAM_DIR, 'bin', 'thin_check'), ['-V']) === null) {
    fs.rmSync(UPSTREAM_DIR, { recursive: true, force: true });
    fail('the upstream 1.x reference tools (they do not run here)', command);
  }
}

ensure090();
ensure1x();
