// Summarises a V8 CPU profile (node --cpu-prof) as the functions with the most self time,
// so a slow tool's hotspots can be read without a browser.
//
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bin/thin_check META
//   node bench/profile-summary.mjs /tmp/prof/CPU.*.cpuprofile [TOP]
import * as fs from 'node:fs';

const [file, top = '15'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/profile-summary.mjs FILE.cpuprofile [TOP]');
  process.exit(2);
}
const profile = JSON.parse(fs.readFileSync(file, 'utf8'));

// Each sample names the node on top of the stack; timeDeltas[i] is the time before sample i.
const selfMicros = new Map();
profile.samples.forEach((id, i) => selfMicros.set(id, (selfMicros.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));

const byFunction = new Map();
let total = 0;
for (const node of profile.nodes) {
  const t = selfMicros.get(node.id) ?? 0;
  total += t;
  const { functionName, url, lineNumber } = node.callFrame;
  const where = url ? `${url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/')}:${lineNumber + 1}` : '';
  const key = `${functionName || '(anonymous)'} ${where}`.trim();
  byFunction.set(key, (byFunction.get(key) ?? 0) + t);
}

console.log(`total ${(total / 1e6).toFixed(2)} s sampled`);
for (const [key, t] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, Number(top))) {
  console.log(`${((100 * t) / total).toFixed(1).padStart(5)}%  ${(t / 1000).toFixed(0).padStart(6)} ms  ${key}`);
}
