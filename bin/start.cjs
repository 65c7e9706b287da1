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

function mtime(file) {
  try {
    return fs.statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

module.exports = function start(tool) {
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
