// The pools the reporting tools (thin_delta, thin_ls, thin_rmap, ...) are compared on: generated
// metadata restored by the reference thin_restore, the same re-written by our restore in the
// shared form (snapshots sharing subtrees, as the kernel leaves them), and the kernel's images.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GenerateOptions, generateXml, rng } from './generate.js';
import { KERNEL_IMAGES, referenceRestore, runOurs, runReference, unpackKernelImage } from './reference.js';

export interface Pool {
  name: string;
  path: string;
}

export const GENERATED: (GenerateOptions & { name: string })[] = [
  { name: 'snapshot-chains', seed: 11, origins: 2, snapshotsPerOrigin: 4, mappingsPerOrigin: 3000, emptyDevices: 2, deleteSome: true },
  { name: 'huge-offset', seed: 12, dataBlockSize: 1024, origins: 1, snapshotsPerOrigin: 3, mappingsPerOrigin: 1500, hugeOffset: true },
  { name: 'many-devices', seed: 13, origins: 12, snapshotsPerOrigin: 2, mappingsPerOrigin: 300, emptyDevices: 3, deleteSome: true },
  { name: 'large-blocks', seed: 14, dataBlockSize: 2097152, origins: 1, snapshotsPerOrigin: 5, mappingsPerOrigin: 800 },
  { name: 'no-devices', seed: 15, origins: 0, emptyDevices: 0 },
];

/**
 * A pool in the shared form (1.x's <def>/<ref>): an origin and snapshots that share most of its
 * chunks of mappings and have their own copies of the others, so our restore writes trees that
 * share leaves between devices, as the kernel's snapshots do.
 */
export function sharedXml(seed: number, devices = 5, chunks = 40, perChunk = 200): string {
  const rand = rng(seed);
  let nextData = 0;
  const chunk = (c: number, copy: boolean): string[] => {
    const lines: string[] = [];
    for (let i = 0; i < perChunk; i++) {
      // Mostly runs of consecutive data blocks; a copy moves some of them elsewhere.
      const data = copy && rand() < 0.5 ? 1_000_000 + nextData++ : c * perChunk + i;
      lines.push(`<single_mapping origin_block="${c * 1000 + i}" data_block="${data}" time="${copy ? 1 : 0}"/>`);
    }
    return lines;
  };
  const out = ['<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="2000000">'];
  for (let c = 0; c < chunks; c++) out.push(`<def name="c${c}">`, ...chunk(c, false), '</def>');
  for (let d = 0; d < devices; d++) {
    const own = d === 0 ? [] : Array.from({ length: chunks }, () => rand() < 0.3);
    out.push(`<device dev_id="${d}" mapped_blocks="${chunks * perChunk}" transaction="0" creation_time="${d ? 1 : 0}" snap_time="1">`);
    for (let c = 0; c < chunks; c++) out.push(...(own[c] ? chunk(c, true) : [`<ref name="c${c}"/>`]));
    out.push('</device>');
  }
  out.push('</superblock>');
  return out.join('\n') + '\n';
}

/** Generated pools restored by the reference, and a shared-form pool restored by ours. */
export function generatedPools(dir: string): Pool[] {
  const pools: Pool[] = [];
  for (const g of GENERATED) {
    const xml = path.join(dir, `${g.name}.xml`);
    fs.writeFileSync(xml, generateXml(g));
    const meta = path.join(dir, `${g.name}.bin`);
    referenceRestore(xml, meta, 8);
    pools.push({ name: g.name, path: meta });
  }
  const xml = path.join(dir, 'shared.xml');
  fs.writeFileSync(xml, sharedXml(16));
  const meta = path.join(dir, 'shared.bin');
  fs.writeFileSync(meta, '');
  fs.truncateSync(meta, 8 << 20);
  const r = runOurs('thin_restore', ['-i', xml, '-o', meta]);
  if (r.status !== 0) throw new Error(`restore of the shared pool: ${r.stderr}`);
  pools.push({ name: 'shared', path: meta });
  return pools;
}

/** Every kernel image, unpacked into `dir`. */
export function kernelPools(dir: string): Pool[] {
  return fs
    .readdirSync(KERNEL_IMAGES)
    .filter((f) => f.endsWith('.bin.gz'))
    .map((f) => f.slice(0, -'.bin.gz'.length))
    .sort()
    .map((name) => ({ name, path: unpackKernelImage(name, path.join(dir, `${name}.bin`)) }));
}

/** Device ids of a pool (or its metadata snapshot), from the reference's dump; [] when it can't dump. */
export function devIdsOf(meta: string, snap = false): number[] {
  const r = runReference('thin_dump', [...(snap ? ['-m'] : []), '--skip-mappings', meta]);
  return [...r.stdout.matchAll(/dev_id="(\d+)"/g)].map((m) => Number(m[1]));
}

/**
 * Two devices (1 and 2) whose thin blocks run across 2^53 and up to 2^64-1, several leaves past
 * 2^53, differing in places (a data block, a run one side lacks), written by the reference
 * thin_restore: for the readers' exact paths past doubles.
 */
export function keysPast2To53Pool(dir: string): Pool {
  const at = (k: bigint) => String(k);
  const range = (thin: bigint, data: number, length: number) =>
    `    <range_mapping origin_begin="${at(thin)}" data_begin="${data}" length="${length}" time="1"/>`;
  const B53 = 2n ** 53n;
  const TOP = 2n ** 64n - 1n;
  const device = (id: number, mappings: string[]) => {
    const mapped = mappings.reduce((n, m) => n + Number(/length="(\d+)"/.exec(m)![1]), 0);
    return [`  <device dev_id="${id}" mapped_blocks="${mapped}" transaction="0" creation_time="0" snap_time="1">`, ...mappings, '  </device>'];
  };
  const xml = [
    '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="16320">',
    ...device(1, [range(B53 - 200n, 1000, 600), range(TOP - 299n, 5000, 300)]),
    ...device(2, [range(B53 - 200n, 1000, 300), range(B53 + 100n, 9999, 1), range(B53 + 101n, 1301, 299), range(B53 + 400n, 3000, 50),
      range(TOP - 299n, 5000, 100), range(TOP - 149n, 7000, 150)]),
    '</superblock>',
    '',
  ].join('\n');
  const xmlPath = path.join(dir, 'past-2-53.xml');
  fs.writeFileSync(xmlPath, xml);
  const img = path.join(dir, 'past-2-53.bin');
  referenceRestore(xmlPath, img, 4);
  return { name: 'keys-past-2^53', path: img } as Pool;
}
