// The physical floor of a metadata tool on this machine: what reading the metadata once costs
// (cold from the disk and warm from the page cache, in large reads and in one 4 KiB pread per
// block as a block-at-a-time reader does) and what checking the crc32c of every block costs.
// No tool that reads every block of the metadata and verifies it can beat these figures.
//
//   node bench/floor.mjs [--mappings 5000000] [--image FILE] [--repeat 3]
//
// Without --image it makes the benchmarks' pool (bench/fixture.mjs) in a temporary directory.
// Cold reads drop just this file's pages from the page cache (dd iflag=nocache, which asks the
// kernel with posix_fadvise DONTNEED), not the whole machine's.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { HarnessError, makeFixture } from './fixture.mjs';
import { ROOT, referenceTools } from './references.mjs';

const BLOCK = 4096;
const CHUNK = 1 << 20;

function parseArgs(argv) {
  const o = { mappings: 5_000_000, image: undefined, repeat: 3 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new HarnessError(`${a} needs a value`);
      return argv[++i];
    };
    const count = (s) => {
      if (!/^\d+$/.test(s) || Number(s) < 1) throw new HarnessError(`${a}: '${s}' is not a positive integer`);
      return Number(s);
    };
    if (a === '--mappings') o.mappings = count(value());
    else if (a === '--image') o.image = value();
    else if (a === '--repeat') o.repeat = count(value());
    else if (a === '-h' || a === '--help') {
      console.log('usage: node bench/floor.mjs [--mappings 5000000] [--image FILE] [--repeat 3]');
      process.exit(0);
    } else throw new HarnessError(`unknown option '${a}'`);
  }
  return o;
}

function dropFromPageCache(file) {
  const r = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none'], { encoding: 'utf8' });
  if (r.status !== 0) throw new HarnessError(`dd could not drop ${file} from the page cache: ${r.stderr.trim()}`);
}

/** Pages of `file` in the page cache, from util-linux fincore (undefined without it). */
function residentPages(file) {
  const r = spawnSync('fincore', ['--noheadings', '--raw', '--output', 'PAGES', file], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout.trim()) : undefined;
}

function seconds(fn) {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

/** Best of `repeat` runs of fn (the minimum is the least disturbed by a busy machine). */
function best(repeat, fn, before = () => {}) {
  let min = Infinity;
  for (let r = 0; r < repeat; r++) {
    before();
    min = Math.min(min, seconds(fn));
  }
  return min;
}

function readWhole(file) {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(CHUNK);
  try {
    for (let pos = 0; ; pos += CHUNK) if (fs.readSync(fd, buf, 0, CHUNK, pos) < CHUNK) break;
  } finally {
    fs.closeSync(fd);
  }
}

function preadEachBlock(file, blocks) {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(BLOCK);
  try {
    for (let b = 0; b < blocks; b++) fs.readSync(fd, buf, 0, BLOCK, b * BLOCK);
  } finally {
    fs.closeSync(fd);
  }
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const crc32c = createRequire(import.meta.url)('@node-rs/crc32').crc32c;
  const dir = o.image ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'thin-floor-'));
  try {
    const image = o.image ?? makeFixture(dir, o.mappings, 4, referenceTools()).image;
    const st = fs.statSync(image);
    const blocks = Math.floor(st.size / BLOCK);
    const allocatedMiB = (st.blocks * 512) / 2 ** 20;

    // Which blocks are metadata in use: our thin_check's METADATA_FREE_BLOCKS of the file's blocks.
    const check = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'thin_check'), image], { encoding: 'utf8' });
    const free = /METADATA_FREE_BLOCKS=(\d+)/.exec(check.stdout ?? '');
    const used = free ? blocks - Number(free[1]) : undefined;

    const cold = best(o.repeat, () => readWhole(image), () => {
      dropFromPageCache(image);
      const left = residentPages(image);
      if (left !== undefined && left > 0.01 * (st.blocks / 8)) throw new HarnessError(`could not drop ${image} from the page cache (${left} pages left)`);
    });
    readWhole(image);
    const warm = best(o.repeat, () => readWhole(image));
    const pread = best(o.repeat, () => preadEachBlock(image, blocks));

    const data = fs.readFileSync(image);
    const crc = best(o.repeat, () => {
      for (let b = 0; b < blocks; b++) crc32c(data.subarray(b * BLOCK + 4, (b + 1) * BLOCK));
    });

    // The same bytes in one call: what is left is the per-call cost of the native binding.
    const crcOneCall = best(o.repeat, () => crc32c(data));

    const mib = st.size / 2 ** 20;
    const perBlock = (s) => `${((s / blocks) * 1e9).toFixed(0)} ns/block`;
    const forUsed = (s) => (used === undefined ? '' : `, ${((s * used) / blocks).toFixed(3)} s for the ${used} blocks in use`);
    console.log(`node ${process.version}, ${os.cpus().length} cores; best of ${o.repeat}`);
    console.log(`metadata ${image}: ${mib.toFixed(0)} MiB, ${blocks} blocks of 4 KiB, ${allocatedMiB.toFixed(0)} MiB allocated on disk` +
      `${used === undefined ? '' : `, ${used} blocks in use (${((used * BLOCK) / 2 ** 20).toFixed(0)} MiB)`}`);
    console.log(`read once, cold (1 MiB reads)   ${cold.toFixed(3)} s  ${(mib / cold).toFixed(0)} MiB/s`);
    console.log(`read once, warm (1 MiB reads)   ${warm.toFixed(3)} s  ${(mib / warm).toFixed(0)} MiB/s`);
    console.log(`pread per 4 KiB block, warm     ${pread.toFixed(3)} s  ${perBlock(pread)}${forUsed(pread)}`);
    console.log(`crc32c of every block (native)  ${crc.toFixed(3)} s  ${perBlock(crc)}${forUsed(crc)}`);
    console.log(`crc32c of the file in one call  ${crcOneCall.toFixed(3)} s  ${perBlock(crcOneCall)} (the rest is the per-call cost)`);
  } finally {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}

try {
  main();
} catch (e) {
  console.error(`floor: ${e instanceof HarnessError ? e.message : e.stack}`);
  process.exitCode = 1;
}
