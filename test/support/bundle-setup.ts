// vitest global setup: the tests run the tools as users do, through bin/ and so the bundles.
// After a bare `npx tsc` the bundles are older than dist/cli (bin/ would fall back to the
// modules); rebuild them first, so every run tests what `npm run build` ships.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');

function mtime(file: string): number | undefined {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

export default function setup(): void {
  const tools = Object.keys(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).bin as object);
  const stale = tools.some((tool) => {
    const bundled = mtime(path.join(ROOT, 'dist', 'bundle', `${tool}.cjs`));
    const compiled = mtime(path.join(ROOT, 'dist', 'cli', `${tool}.js`));
    return bundled === undefined || (compiled !== undefined && compiled > bundled);
  });
  if (stale) execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'bundle.mjs')], { stdio: 'inherit' });
}
