'use strict';
// Starts a tool the quick way: its bundle (dist/bundle/<tool>.cjs, one file made by `npm run
// build`), compiled from V8's code cache beside it when the running Node accepts that cache.
// Falls back to the compiled modules (dist/cli/<tool>.js) when there is no bundle or tsc has
// rebuilt them since the bundle was made (so a bare `npx tsc` is never shadowed by a stale bundle).
// THIN_TOOLS_WRITE_CODE_CACHE=FILE (used by scripts/bundle.mjs) writes the cache of this run to FILE.
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { createRequire, wrap } = require('node:module');
const v8 = require('node:v8');

/**
 * V8 settings every tool runs with; V8 accepts a code cache only under the flags it was made with.
 * V8 doubles the young generation each time it fills while much is allocated, up to 2 x 16 MiB;
 * our tools allocate steadily (an object per block read) but keep little of it, so that growth
 * only adds to peak RSS: 8-35 MiB at 5-20M mappings, for no gain in time (docs/benchmarks.md).
 * The flag exists in the V8 of Node 20-24; a V8 without it would print an error at each start.
 */
function tuneV8() {
  if (Number(process.versions.v8.split('.')[0]) <= 13) v8.setFlagsFromString('--semi-space-growth-factor=1');
}

function mtime(file) {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

module.exports = function start(tool) {
  tuneV8();
  const dist = path.join(__dirname, '..', 'dist');
  const bundle = path.join(dist, 'bundle', `${tool}.cjs`);
  const bundled = mtime(bundle);
  const compiled = mtime(path.join(dist, 'cli', `${tool}.js`));
  if (bundled === undefined || (compiled !== undefined && compiled > bundled)) return import(`../dist/cli/${tool}.js`);

  const cacheFile = `${bundle}.cache`;
  const writeCache = process.env.THIN_TOOLS_WRITE_CODE_CACHE;
  let cachedData;
  if (!writeCache) {
    try {
      cachedData = fs.readFileSync(cacheFile);
    } catch {
      // no cache: V8 compiles as the run goes
    }
  }
  const script = new vm.Script(wrap(fs.readFileSync(bundle, 'utf8')), {
    filename: bundle,
    cachedData,
    importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  if (writeCache) process.once('exit', () => fs.writeFileSync(writeCache, script.createCachedData()));
  const bundleModule = { exports: {} };
  script.runInThisContext().call(bundleModule.exports, bundleModule.exports, createRequire(bundle), bundleModule, bundle, path.dirname(bundle));
};
module.exports.tuneV8 = tuneV8;
