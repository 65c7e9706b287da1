// Summarises a V8 CPU profile (node --cpu-prof) without a browser: self time by module (our
// dist/ files, packages, Node's internals, the garbage collector) and the functions with the most
// self time. `node bench/run.mjs --profile DIR` profiles each tool of ours and prints this.
//
//   node --cpu-prof --cpu-prof-dir=/tmp/prof dist/cli/thin_check.js META
//   node bench/profile-summary.mjs /tmp/prof/CPU.*.cpuprofile [TOP]
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Where a frame's code lives, short: dist/pdata/checksum.js, node_modules/x, node:fs, (gc). */
function moduleOf({ url, functionName }) {
  if (!url) return functionName.startsWith('(') ? functionName : `(native) ${functionName}`;
  const m = /\/(dist|node_modules)\/(.*)$/.exec(url);
  if (m) return m[1] === 'node_modules' ? `node_modules/${m[2].split('/').slice(0, m[2].startsWith('@') ? 2 : 1).join('/')}` : `dist/${m[2]}`;
  return url.startsWith('node:') ? url.replace(/^node:internal\/.*/, 'node:internal') : url;
}

/** Self time per module and per function, as text; `top` lines of each. */
export function summarize(file, top = 15) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8'));
  // Each sample names the node on top of the stack; timeDeltas[i] is the time before sample i.
  const selfMicros = new Map();
  profile.samples.forEach((id, i) => selfMicros.set(id, (selfMicros.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));

  const byFunction = new Map();
  const byModule = new Map();
  let total = 0;
  for (const node of profile.nodes) {
    const t = selfMicros.get(node.id) ?? 0;
    total += t;
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url ? `${url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/')}:${lineNumber + 1}` : '';
    const key = `${functionName || '(anonymous)'} ${where}`.trim();
    byFunction.set(key, (byFunction.get(key) ?? 0) + t);
    const mod = moduleOf(node.callFrame);
    byModule.set(mod, (byModule.get(mod) ?? 0) + t);
  }
  const lines = (map) => [...map].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([key, t]) => `${((100 * t) / total).toFixed(1).padStart(5)}%  ${(t / 1000).toFixed(0).padStart(6)} ms  ${key}`);
  return [`total ${(total / 1e6).toFixed(2)} s sampled`, 'by module:', ...lines(byModule), 'by function:', ...lines(byFunction)].join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file, top = '15'] = process.argv.slice(2);
  if (!file) {
    console.error('usage: node bench/profile-summary.mjs FILE.cpuprofile [TOP]');
    process.exit(2);
  }
  console.log(summarize(file, Number(top)));
}
