// The pool every benchmark runs on: generated thin_dump XML (bench/generate.mjs) and the metadata
// image the 0.9.0 thin_restore makes of it.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateMetadataXml } from './generate.mjs';

/** A failure of the harness or its setup (not of a tool being measured): one line, exit 1. */
export class HarnessError extends Error {}

export function freshFile(file, bytes) {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, bytes);
}

/** The line that says what went wrong: tools print progress first and the error last. */
export function lastLine(s) {
  return (s.trim().split('\n').pop() ?? '').trim().slice(0, 160);
}

/**
 * Writes DIR/input.xml (`mappings` over an origin and `snapshots` snapshots) and DIR/image.meta;
 * returns what a tool case needs: image, xml, metaBytes (the size of a fresh output), devIds,
 * nrDataBlocks, mappings.
 */
export function makeFixture(dir, mappings, snapshots, v090) {
  const xml = path.join(dir, 'input.xml');
  let t = process.hrtime.bigint();
  const gen = generateMetadataXml(xml, mappings, snapshots);
  const genSeconds = Number(process.hrtime.bigint() - t) / 1e9;

  // Generous: the 0.9.0 restore uses ~35 bytes of metadata per mapping here, and
  // thin_metadata_size sizes for the pool, not for how many snapshots share it.
  const metaBytes = Math.ceil((gen.mappings * 64 + (16 << 20)) / 4096) * 4096;
  const image = path.join(dir, 'image.meta');
  freshFile(image, metaBytes);
  t = process.hrtime.bigint();
  const made = spawnSync(v090('thin_restore'), ['-i', xml, '-o', image], { encoding: 'utf8' });
  if (made.status !== 0) throw new HarnessError(`the 0.9.0 thin_restore could not make the image: ${lastLine(made.stderr)}`);
  const restoreSeconds = Number(process.hrtime.bigint() - t) / 1e9;
  console.log(`\n${gen.mappings} mappings over ${gen.devices} devices: XML ${(fs.statSync(xml).size / 2 ** 20).toFixed(1)} MiB ` +
    `generated in ${genSeconds.toFixed(2)} s; image made by the 0.9.0 thin_restore in ${restoreSeconds.toFixed(2)} s`);
  return { image, xml, metaBytes, devIds: [...Array(gen.devices).keys()], nrDataBlocks: gen.nrDataBlocks, mappings: gen.mappings };
}
