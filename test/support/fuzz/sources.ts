// The inputs the campaign mutates: the kernel-written images, the small testdata images, pools
// generated and restored by the reference thin_restore, and XML dumps of them (flat and shared).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { mappingsOf } from '../dump-mappings.js';
import { GenerateOptions, generateXml } from '../generate.js';
import { KERNEL_IMAGES, ourTool, referenceTool } from '../reference.js';
import { ImageMap, mapImage } from './image-map.js';

export interface ImageSource {
  name: string;
  file: string;
  weight: number;
  map: ImageMap;
  bytes(): Buffer;
  /** Its mappings as the reference dumps them ("dev:thin:data"); undefined if it can't. */
  truth(): ReadonlySet<string> | undefined;
  /** Our thin_metadata_pack of it; undefined if it can't be packed. */
  pack(): Buffer | undefined;
}

export interface XmlSource {
  name: string;
  file: string;
  weight: number;
  /** The shared form (<def>/<ref>), which only we and 1.x read. */
  shared: boolean;
  /** Size of metadata to restore it into. */
  metadataBytes: number;
}

export interface Sources {
  images: ImageSource[];
  xmls: XmlSource[];
}

/** Generated pools: snapshot chains and deletions, huge offsets, a tiny one, more than one data bitmap. */
const GENERATED: { name: string; options: GenerateOptions; mib: number }[] = [
  { name: 'gen-snapshots', mib: 8, options: { seed: 101, origins: 2, snapshotsPerOrigin: 3, mappingsPerOrigin: 3000, nrDataBlocks: 1 << 16, emptyDevices: 1, deleteSome: true } },
  { name: 'gen-huge-offset', mib: 4, options: { seed: 102, origins: 1, snapshotsPerOrigin: 2, mappingsPerOrigin: 800, dataBlockSize: 1024, nrDataBlocks: 8192, hugeOffset: true } },
  { name: 'gen-tiny', mib: 4, options: { seed: 103, origins: 1, snapshotsPerOrigin: 0, mappingsPerOrigin: 20, nrDataBlocks: 1024, emptyDevices: 2 } },
  { name: 'gen-wide', mib: 4, options: { seed: 104, origins: 4, snapshotsPerOrigin: 1, mappingsPerOrigin: 600, nrDataBlocks: 40000 } },
];

/** The 64 MiB kernel images cost a second a run: picked less often. */
const BIG_IMAGE_WEIGHT = 0.2;

function lazyBytes(file: string): () => Buffer {
  let bytes: Buffer | undefined;
  return () => (bytes ??= fs.readFileSync(file));
}

function imageSource(name: string, file: string, weight: number): ImageSource {
  let truth: Set<string> | undefined | null = null;
  let packed: Buffer | undefined | null = null;
  return {
    name, file, weight, map: mapImage(file), bytes: lazyBytes(file),
    truth() {
      if (truth === null) {
        const dump = dumpOf(referenceTool('thin_dump'), [file]);
        truth = dump ? new Set(mappingsOf(dump.toString())) : undefined;
      }
      return truth;
    },
    pack() {
      if (packed === null) {
        const out = `${file}.pack`;
        packed = dumpOf(process.execPath, [ourTool('thin_metadata_pack'), '-i', file, '-o', out]) ? fs.readFileSync(out) : undefined;
      }
      return packed;
    },
  };
}

/** Writes every source into `dir` (fresh) and maps its blocks. Deterministic. */
export function prepareSources(root: string, dir: string): Sources {
  fs.mkdirSync(dir, { recursive: true });
  const images: ImageSource[] = [];
  const xmls: XmlSource[] = [];
  const unpack = (gz: string, name: string): string => {
    const file = path.join(dir, `${name}.bin`);
    fs.writeFileSync(file, gunzipSync(fs.readFileSync(gz)));
    return file;
  };

  for (const f of fs.readdirSync(KERNEL_IMAGES).filter((f) => f.endsWith('.bin.gz')).sort()) {
    const name = f.replace(/\.bin\.gz$/, '');
    const file = unpack(path.join(KERNEL_IMAGES, f), name);
    images.push(imageSource(name, file, fs.statSync(file).size > 16 << 20 ? BIG_IMAGE_WEIGHT : 1));
  }
  for (const name of ['small-pool', 'huge-offset']) {
    images.push(imageSource(name, unpack(path.join(root, 'testdata', `${name}.bin.gz`), name), 1));
  }
  for (const g of GENERATED) {
    const xml = path.join(dir, `${g.name}.xml`);
    fs.writeFileSync(xml, generateXml(g.options));
    const file = path.join(dir, `${g.name}.bin`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, g.mib << 20);
    execFileSync(referenceTool('thin_restore'), ['-i', xml, '-o', file], { stdio: 'ignore' });
    images.push(imageSource(g.name, file, 1));
    xmls.push({ name: `${g.name}.xml`, file: xml, weight: 1, shared: false, metadataBytes: g.mib << 20 });
  }

  // The reference's dumps of the sound images, and our shared form of those with snapshots.
  for (const img of images) {
    const size = fs.statSync(img.file).size;
    const weight = size > 16 << 20 ? BIG_IMAGE_WEIGHT : 0.5;
    const dump = dumpOf(referenceTool('thin_dump'), [img.file]);
    if (dump) {
      const file = path.join(dir, `${img.name}.dump.xml`);
      fs.writeFileSync(file, dump);
      xmls.push({ name: `${img.name} dump`, file, weight, shared: false, metadataBytes: size });
    }
    const shared = dumpOf(process.execPath, [ourTool('thin_dump'), '--shared-subtrees', img.file]);
    if (shared && shared.includes('<def ')) {
      const file = path.join(dir, `${img.name}.shared.xml`);
      fs.writeFileSync(file, shared);
      xmls.push({ name: `${img.name} shared dump`, file, weight, shared: true, metadataBytes: size });
    }
  }
  return { images, xmls };
}

/** A tool's stdout when it succeeds, else undefined (a damaged source has no dump). */
function dumpOf(file: string, args: string[]): Buffer | undefined {
  try {
    return execFileSync(file, args, { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 30 });
  } catch {
    return undefined;
  }
}
