// Streams large, realistic thin-pool metadata as thin_dump XML: one origin and several snapshots
// of it that share most data blocks and have broken sharing on some (whole 16-block groups and
// single blocks), half the origin in long contiguous runs and half scattered. Nothing is held in
// memory per mapping, so 5M+ mappings take seconds and a few MiB. Deterministic for a given size.
//
//   node bench/generate.mjs OUT.xml MAPPINGS [SNAPSHOTS]
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';

const CHUNK = 1024; // thin blocks per chunk; a gap of THIN_GAP unmapped blocks follows each chunk
const THIN_GAP = 1000;
const GROUP = 16; // snapshot writes break sharing a group at a time...
const GROUP_REMAP = 0.08;
const SINGLE_REMAP = 0.03; // ...and a block at a time

/** A well-mixed 32-bit hash of (device, index) as a fraction in [0, 1). */
function unit(dev, i) {
  let h = Math.imul(dev + 1, 0x9e3779b1) ^ Math.imul(i, 0x85ebca6b);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return (h >>> 0) / 0x100000000;
}

const thinBlock = (i) => i + Math.floor(i / CHUNK) * THIN_GAP;

/** The origin's data block for its i-th mapping: even chunks contiguous, odd chunks scattered. */
function originData(i) {
  const chunk = Math.floor(i / CHUNK);
  if (chunk % 2 === 0) return i;
  return chunk * CHUNK + ((i % CHUNK) * 1597) % CHUNK; // an odd multiplier permutes the chunk
}

const remapped = (snap, i) => unit(snap, Math.floor(i / GROUP)) < GROUP_REMAP || unit(snap + 1000, i) < SINGLE_REMAP;

/**
 * Writes the XML to `path`; `mappings` is the total over all devices (origin + snapshots).
 * Returns what was written.
 */
export function generateMetadataXml(path, mappings, snapshots = 4) {
  const perDevice = Math.ceil(mappings / (snapshots + 1));
  let broken = 0;
  for (let s = 1; s <= snapshots; s++) for (let i = 0; i < perDevice; i++) if (remapped(s, i)) broken++;
  const nrDataBlocks = perDevice + broken + 1024; // some free space at the end of the pool

  const fd = fs.openSync(path, 'w');
  let buf = '';
  const out = (s) => {
    buf += s;
    if (buf.length >= 1 << 20) {
      fs.writeSync(fd, buf);
      buf = '';
    }
  };
  out(`<superblock uuid="" time="${snapshots}" transaction="${snapshots}" flags="0" version="2" ` +
    `data_block_size="128" nr_data_blocks="${nrDataBlocks}">\n`);

  let nextFree = perDevice;
  for (let dev = 0; dev <= snapshots; dev++) {
    out(`  <device dev_id="${dev}" mapped_blocks="${perDevice}" transaction="${dev}" ` +
      `creation_time="${dev}" snap_time="${dev === 0 ? snapshots : dev}">\n`);
    // Coalesce into runs the way thin_dump does: consecutive thin and data blocks, same time.
    let runThin = -1, runData = -1, runTime = -1, runLen = 0;
    const flush = () => {
      if (runLen === 1) out(`    <single_mapping origin_block="${runThin}" data_block="${runData}" time="${runTime}"/>\n`);
      else if (runLen > 1) {
        out(`    <range_mapping origin_begin="${runThin}" data_begin="${runData}" length="${runLen}" time="${runTime}"/>\n`);
      }
    };
    for (let i = 0; i < perDevice; i++) {
      const thin = thinBlock(i);
      let data, time;
      if (dev > 0 && remapped(dev, i)) {
        data = nextFree++;
        time = dev;
      } else {
        data = originData(i);
        time = 0;
      }
      if (runLen > 0 && thin === runThin + runLen && data === runData + runLen && time === runTime) {
        runLen++;
      } else {
        flush();
        runThin = thin;
        runData = data;
        runTime = time;
        runLen = 1;
      }
    }
    flush();
    out('  </device>\n');
  }
  out('</superblock>\n');
  fs.writeSync(fd, buf);
  fs.closeSync(fd);
  return { devices: snapshots + 1, mappings: perDevice * (snapshots + 1), nrDataBlocks, dataBlockSize: 128 };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [path, n, snaps] = process.argv.slice(2);
  if (!path || !/^\d+$/.test(n ?? '')) {
    console.error('usage: node bench/generate.mjs OUT.xml MAPPINGS [SNAPSHOTS]');
    process.exit(2);
  }
  console.log(JSON.stringify(generateMetadataXml(path, Number(n), snaps ? Number(snaps) : undefined)));
}
