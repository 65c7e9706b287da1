// Where the benchmarks find the two reference tool sets: 0.9.0 (Debian's C++ package, on the
// system path) and upstream 1.x (Rust, 1.1.0), which `node scripts/ensure-references.mjs`
// unpacks into .references/1x/bin (the same as `../shared/upstream-1x/install DIR`, then
// `--upstream DIR/bin`).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SYSTEM_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/usr/local/sbin'];
export const UPSTREAM_DIR = path.join(ROOT, '.references', '1x', 'bin');

/** A finder for the 0.9.0 tools; throws, saying how to install them, when one is missing. */
export function referenceTools() {
  return (name) => {
    for (const dir of SYSTEM_DIRS) {
      const p = path.join(dir, name);
      if (fs.existsSync(p)) return p;
    }
    throw new Error(`reference ${name} not found: install it with \`apt-get update && apt-get install -y thin-provisioning-tools\``);
  };
}

/** A finder for the 1.x tools in `dir`, or undefined when they are not installed there. */
export function upstreamTools(dir = UPSTREAM_DIR) {
  if (!fs.existsSync(path.join(dir, 'thin_check'))) return undefined;
  return (name) => {
    const p = path.join(dir, name);
    if (!fs.existsSync(p)) throw new Error(`1.x ${name} not found in ${dir}`);
    return p;
  };
}
