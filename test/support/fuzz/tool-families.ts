// The fuzz families of the tools that read a pool for what it holds (thin_ls, thin_delta,
// thin_rmap: the same output and exit status as 0.9.0), that touch its data (thin_trim,
// thin_extract: a data file whose blocks carry markers shows what was discarded or copied) and
// that pack it (thin_metadata_pack: what it packs unpacks as 1.x's own pack does).
import * as fs from 'node:fs';
import { BinaryCase, CaseRun, failed, lastLines, passed } from './case-run.js';
import { ProcessResult, userText } from './processes.js';

/** 0.9.0's thin_ls fields (the HIGHEST_* ones are 1.x's). */
const LS_FIELDS = [
  'DEV', 'MAPPED_BLOCKS', 'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS', 'MAPPED_SECTORS', 'EXCLUSIVE_SECTORS', 'SHARED_SECTORS',
  'MAPPED_BYTES', 'EXCLUSIVE_BYTES', 'SHARED_BYTES', 'MAPPED', 'EXCLUSIVE', 'SHARED', 'TRANSACTION', 'CREATE_TIME', 'SNAP_TIME',
];

/** Options for one of the reading tools, drawn for the source. */
function readingOptions(tool: 'ls' | 'delta' | 'rmap', { source, rand }: BinaryCase): string[] {
  const snap = rand.chance(0.2) ? ['-m'] : [];
  const ids = source.map?.devIds ?? [];
  const id = () => String(ids.length && rand.chance(0.9) ? rand.pick(ids) : rand.int(100));
  switch (tool) {
    case 'ls': {
      const fields = rand.chance(0.3) ? [] : ['-o', LS_FIELDS.filter(() => rand.chance(0.3)).join(',') || 'DEV,EXCLUSIVE'];
      return [...snap, ...(rand.chance(0.3) ? ['--no-headers'] : []), ...fields];
    }
    case 'delta':
      return [...snap, ...(rand.chance(0.5) ? ['--verbose'] : []), '--snap1', id(), '--snap2', id()];
    case 'rmap': {
      const nr = source.map?.facts?.nrDataBlocks ?? 1000;
      const region = () => {
        if (rand.chance(0.1)) return '0..18446744073709551615';
        const begin = rand.int(nr + 1);
        return `${begin}..${begin + 1 + rand.int(rand.chance(0.5) ? 16 : nr)}`;
      };
      return Array.from({ length: rand.between(1, 3) }, () => ['--region', region()]).flat();
    }
  }
}

/** thin_ls fields read from the device details alone; the others walk the mapping trees. */
const DETAILS_FIELDS = new Set(['DEV', 'MAPPED_BLOCKS', 'MAPPED_SECTORS', 'MAPPED_BYTES', 'MAPPED', 'TRANSACTION', 'CREATE_TIME', 'SNAP_TIME']);

/** The thin_dump options that read the trees a reading tool's run reads. */
function dumpOptionsFor(family: 'ls' | 'delta' | 'rmap', opts: string[]): string[] {
  const snap = opts.includes('-m') ? ['-m'] : [];
  if (family === 'delta') return [...snap, '--dev-id', opts[opts.indexOf('--snap1') + 1], '--dev-id', opts[opts.indexOf('--snap2') + 1]];
  const fields = opts.includes('-o') ? opts[opts.indexOf('-o') + 1].split(',') : ['DEV', 'MAPPED', 'CREATE_TIME', 'SNAP_TIME'];
  if (family === 'ls' && fields.every((f) => DETAILS_FIELDS.has(f))) return [...snap, '--skip-mappings'];
  return snap;
}

/** thin_ls, thin_delta and thin_rmap print what 0.9.0 prints and exit as it does. */
export async function sameAsReference(family: 'ls' | 'delta' | 'rmap', k: BinaryCase): Promise<string[]> {
  const { c, input, sha256 } = k;
  const tool = `thin_${family}`;
  const opts = readingOptions(family, k);
  const ref = await c.reference(tool, [...opts, input]);
  const ours = await c.ours(tool, [...opts, input], ref.status);
  c.unchanged(input, sha256, tool);
  if (ref.timedOut || ref.signal || ours.timedOut || ours.signal) return opts;
  const what = `${tool} ${opts.join(' ')}`;
  const checkOpts = opts.includes('-m') ? ['-m'] : [];
  if (passed(ref) && passed(ours)) {
    if (!ours.stdout.equals(ref.stdout)) await c.unlessOurCheckFails(input, checkOpts, 'differs', `${what}: output differs from 0.9.0's`);
  } else if (passed(ref)) {
    await c.unlessOurCheckFails(input, checkOpts, 'refused', `${what} fails where 0.9.0 succeeds: ${lastLines(userText(ours.stderr))}`);
  } else if (passed(ours)) {
    // 0.9.0 also opens the space maps, and fails on damage there that the trees these tools
    // read don't share: a finding only if our own thin_dump fails the trees read.
    const detail = `${what} succeeds where 0.9.0 fails (${lastLines(ref.stderr)})`;
    const dump = await c.ours('thin_dump', [...dumpOptionsFor(family, opts), input]);
    const dumpSays = lastLines(userText(dump.stderr));
    // thin_delta reads only the two devices' trees; thin_dump --dev-id reads the details too.
    const treesRead = !(family === 'delta' && /device details tree/.test(dumpSays));
    if (failed(dump) && treesRead) c.find('looser', `${detail}, though our thin_dump fails the trees it reads (${dumpSays})`);
    else c.review('looser-than-0.9.0', failed(dump) ? `${detail}; the damage is outside what it reads (${dumpSays})` : detail);
  }
  return opts;
}

// ---- a data device whose blocks say who they are ----

const MARK = Buffer.from('DATABLK!', 'latin1');
/** Blocks marked of each kind: enough to catch a misplaced discard or copy, few enough to be quick. */
const MARKED = 200;

/** Data blocks a reference dump lists (live and the held snapshot's): what must survive a trim. */
function dataBlocksOf(xmls: string[]): Set<number> {
  const used = new Set<number>();
  for (const xml of xmls) {
    for (const m of xml.matchAll(/data_block="(\d+)"/g)) used.add(Number(m[1]));
    for (const m of xml.matchAll(/data_begin="(\d+)" length="(\d+)"/g)) for (let i = 0; i < Number(m[2]); i++) used.add(Number(m[1]) + i);
  }
  return used;
}

function blockBytesOf(xml: string, fallback: number): number {
  const m = /data_block_size="(\d+)"/.exec(xml);
  return (m ? Number(m[1]) : fallback) * 512;
}

function sample<T>(items: T[], n: number, rand: BinaryCase['rand']): T[] {
  if (items.length <= n) return items;
  return Array.from({ length: n }, () => items[rand.int(items.length)]);
}

class DataFile {
  readonly marked = new Set<number>();

  constructor(readonly file: string, readonly bytes: number, readonly blockBytes: number) {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, bytes);
  }

  private markOf(d: number): Buffer {
    const m = Buffer.alloc(16);
    m.writeBigUInt64LE(BigInt(d), 0);
    MARK.copy(m, 8);
    return m;
  }

  mark(blocks: Iterable<number>): void {
    const fd = fs.openSync(this.file, 'r+');
    try {
      for (const d of blocks) {
        if ((d + 1) * this.blockBytes > this.bytes) continue;
        fs.writeSync(fd, this.markOf(d), 0, 16, d * this.blockBytes);
        this.marked.add(d);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Marked blocks whose mark is gone. */
  lost(): number[] {
    const fd = fs.openSync(this.file, 'r');
    const got = Buffer.alloc(16);
    try {
      return [...this.marked].filter((d) => {
        fs.readSync(fd, got, 0, 16, d * this.blockBytes);
        return !got.equals(this.markOf(d));
      });
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Whether the 16 bytes at `offset` of `image` are data block d's mark. */
  holds(image: string, offset: number, d: number): boolean {
    const fd = fs.openSync(image, 'r');
    try {
      const got = Buffer.alloc(16);
      fs.readSync(fd, got, 0, 16, offset);
      return got.equals(this.markOf(d));
    } finally {
      fs.closeSync(fd);
    }
  }
}

/**
 * The data file a source's pool would have (its own nr_data_blocks and block size, sparse),
 * with the blocks the reference sees in use marked, and as many free ones.
 */
async function dataFileFor(k: BinaryCase, used: Set<number>): Promise<DataFile> {
  const facts = k.source.map?.facts ?? { nrDataBlocks: 1024, dataBlockSize: 128 };
  const data = new DataFile(k.c.file('data.img'), facts.nrDataBlocks * facts.dataBlockSize * 512, facts.dataBlockSize * 512);
  const free = Array.from({ length: MARKED }, () => k.rand.int(facts.nrDataBlocks)).filter((d) => !used.has(d));
  data.mark([...sample([...used], MARKED, k.rand), ...free]);
  return data;
}

/**
 * thin_trim discards only what no device maps: run on metadata 0.9.0 fails, it must refuse; when
 * it refuses nothing is discarded; when it runs, every block the reference sees mapped (live or
 * in the held snapshot) keeps its content.
 */
export async function trim(k: BinaryCase): Promise<string[]> {
  const { c, input, sha256 } = k;
  const refCheck = await c.reference('thin_check', [input]);
  const dumps: ProcessResult[] = [];
  if (passed(refCheck)) for (const args of [[input], ['-m', input]]) dumps.push(await c.reference('thin_dump', args));
  const xmls = dumps.filter(passed).map((d) => d.stdout.toString());
  const used = dataBlocksOf(xmls);
  const data = await dataFileFor(k, used);
  const ours = await c.ours('thin_trim', ['--metadata-dev', input, '--data-dev', data.file]);
  c.unchanged(input, sha256, 'thin_trim');
  const lost = data.lost();
  if (passed(ours)) {
    if (!passed(refCheck)) c.find('looser', `thin_trim discarded with metadata 0.9.0's thin_check fails (${lastLines(refCheck.stderr)})`);
    const lostUsed = lost.filter((d) => used.has(d));
    if (lostUsed.length) c.find('data-lost', `thin_trim discarded ${lostUsed.length} mapped data blocks, e.g. ${lostUsed.slice(0, 5).join(' ')}`);
  } else if (lost.length) {
    c.find('data-lost', `thin_trim failed (${lastLines(userText(ours.stderr))}) yet discarded ${lost.length} data blocks`);
  }
  return [];
}

/**
 * thin_extract never writes the metadata or the data device; on metadata 0.9.0 passes, the image
 * holds each mapped thin block's data block (marked ones checked).
 */
export async function extract(k: BinaryCase): Promise<string[]> {
  const { c, input, sha256, source, rand } = k;
  const ids = source.map?.devIds ?? [];
  const devId = String(ids.length && rand.chance(0.9) ? rand.pick(ids) : rand.int(100));
  const snap = rand.chance(0.2) ? ['-m'] : [];
  const refCheck = await c.reference('thin_check', [...snap, input]);
  const dump = passed(refCheck) ? await c.reference('thin_dump', [...snap, '--dev-id', devId, input]) : undefined;
  const xml = dump && passed(dump) ? dump.stdout.toString() : '';
  const thinToData = new Map<number, number>();
  for (const m of xml.matchAll(/origin_block="(\d+)" data_block="(\d+)"/g)) thinToData.set(Number(m[1]), Number(m[2]));
  for (const m of xml.matchAll(/origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)"/g)) {
    for (let i = 0; i < Math.min(Number(m[3]), MARKED); i++) thinToData.set(Number(m[1]) + i, Number(m[2]) + i);
  }
  const checked = sample([...thinToData.keys()], MARKED, rand);
  const data = await dataFileFor(k, new Set(checked.map((t) => thinToData.get(t)!)));
  const dataSum = fileSum(data.file);
  const image = c.file('volume.img');
  const opts = [...snap, '--dev-id', devId];
  const ours = await c.ours('thin_extract', ['--metadata', input, '--data', data.file, ...opts, '-o', image]);
  c.unchanged(input, sha256, 'thin_extract');
  if (fileSum(data.file) !== dataSum) c.find('input-changed', 'thin_extract changed the data device');
  if (passed(ours) && xml) {
    const blockBytes = blockBytesOf(xml, data.blockBytes);
    const wrong = checked.filter((t) => data.marked.has(thinToData.get(t)!) && !data.holds(image, t * blockBytes, thinToData.get(t)!));
    if (wrong.length) c.find('differs', `thin_extract: ${wrong.length} thin blocks do not hold their data block, e.g. ${wrong.slice(0, 5).join(' ')}`);
  } else if (failed(ours) && fs.existsSync(image)) {
    c.find('differs', `thin_extract failed (${lastLines(userText(ours.stderr))}) but left an image`);
  }
  return opts;
}

/** A (large, sparse) file's size and modification time: what any write would change. */
function fileSum(file: string): string {
  const st = fs.statSync(file);
  return `${st.size}:${st.mtimeMs}`;
}

/**
 * thin_metadata_pack: our pack unpacks (by 1.x and by us) to what 1.x's own pack unpacks to,
 * except for blocks 1.x leaves out (zero) that ours keeps as the input had them; our unpack of
 * 1.x's pack is 1.x's unpack of it. Where 1.x packs and we refuse, our check must fail the metadata.
 */
export async function pack({ c, input, sha256 }: BinaryCase): Promise<string[]> {
  const ours = c.file('ours.pack');
  const theirs = c.file('theirs.pack');
  const up = await c.upstream('thin_metadata_pack', ['-i', input, '-o', theirs]);
  const mine = await c.ours('thin_metadata_pack', ['-i', input, '-o', ours], up.status);
  c.unchanged(input, sha256, 'thin_metadata_pack');
  if (up.timedOut || up.signal || mine.timedOut || mine.signal) return [];
  if (passed(up) && !passed(mine)) {
    await c.unlessOurCheckFails(input, [], 'refused', `thin_metadata_pack fails where 1.x packs: ${lastLines(userText(mine.stderr))}`);
    return [];
  }
  if (!passed(mine)) return [];
  if (!passed(up)) {
    c.review('looser-than-1.x', `1.x thin_metadata_pack fails (${lastLines(up.stderr)}), ours packs`);
    return [];
  }
  const unpacked = async (tool: 'ours' | 'upstream', packFile: string, name: string): Promise<Buffer | undefined> => {
    const out = c.file(name);
    const r = tool === 'ours'
      ? await c.ours('thin_metadata_unpack', ['-i', packFile, '-o', out])
      : await c.upstream('thin_metadata_unpack', ['-i', packFile, '-o', out]);
    if (!passed(r)) {
      c.find('unrestorable', `${tool === 'ours' ? 'our' : '1.x'} thin_metadata_unpack refuses ${packFile === ours ? 'our' : '1.x\'s'} pack: ${lastLines(userText(r.stderr))}`);
      return undefined;
    }
    return fs.readFileSync(out);
  };
  const expected = await unpacked('upstream', theirs, 'theirs-up.bin');
  if (!expected) return [];
  const source = fs.readFileSync(input);
  const theirsOurs = await unpacked('ours', theirs, 'theirs-ours.bin');
  if (theirsOurs && !theirsOurs.equals(expected)) c.find('differs', 'our thin_metadata_unpack of 1.x\'s pack differs from 1.x\'s');
  for (const [tool, name] of [['upstream', 'ours-up.bin'], ['ours', 'ours-ours.bin']] as const) {
    const got = await unpacked(tool, ours, name);
    if (!got) continue;
    const bad = differingBlocks(got, expected, source);
    if (bad.length) c.find('differs', `${name}: ${bad.length} blocks neither 1.x's round trip nor the input's, e.g. ${bad.slice(0, 5).join(' ')}`);
  }
  return [];
}

/** Blocks of `got` that are neither `expected`'s nor, where `expected` has zeros, `source`'s. */
function differingBlocks(got: Buffer, expected: Buffer, source: Buffer): number[] {
  const bad: number[] = [];
  const B = 4096;
  const zero = Buffer.alloc(B);
  for (let b = 0; b * B < Math.max(got.length, expected.length); b++) {
    const g = got.subarray(b * B, (b + 1) * B);
    const e = expected.subarray(b * B, (b + 1) * B);
    if (g.equals(e)) continue;
    if (e.equals(zero.subarray(0, e.length)) && g.equals(source.subarray(b * B, (b + 1) * B))) continue;
    bad.push(b);
  }
  return bad;
}

export const PACK_MUTATIONS = ['pack-flip', 'pack-bytes', 'pack-truncate'] as const;

/** A pack file damaged: bits flipped, bytes (or a length field) overwritten, or cut short. */
export function mutatePack(pack: Buffer, kind: (typeof PACK_MUTATIONS)[number], rand: BinaryCase['rand']): { bytes: Buffer; note: string } {
  const bytes = Buffer.from(pack);
  // The header and the first chunk's length are where a reader decides how much to trust.
  const at = () => (rand.chance(0.3) ? rand.int(Math.min(64, bytes.length)) : rand.int(bytes.length));
  switch (kind) {
    case 'pack-flip': {
      const flips = Array.from({ length: rand.between(1, 8) }, () => [at(), rand.int(8)]);
      for (const [i, bit] of flips) bytes[i] ^= 1 << bit;
      return { bytes, note: `pack-flip: bits ${flips.map(([i, b]) => `${i}.${b}`).join(' ')}` };
    }
    case 'pack-bytes': {
      const i = at();
      if (rand.chance(0.5) && i + 8 <= bytes.length) {
        const v = rand.pick([0n, 1n, 0xffffffffn, 1n << 32n, 1n << 40n, (1n << 63n) - 1n, (1n << 64n) - 1n, BigInt(bytes.length), rand.bits(64)]);
        bytes.writeBigUInt64LE(v, i);
        return { bytes, note: `pack-bytes: u64 at ${i} = ${v}` };
      }
      const n = Math.min(rand.between(1, 64), bytes.length - i);
      const fill = rand.pick(['zero', 'ones', 'random'] as const);
      (fill === 'random' ? rand.bytes(n) : Buffer.alloc(n, fill === 'zero' ? 0 : 0xff)).copy(bytes, i);
      return { bytes, note: `pack-bytes: ${n} bytes at ${i} = ${fill}` };
    }
    case 'pack-truncate': {
      const n = rand.int(bytes.length);
      return { bytes: bytes.subarray(0, n), note: `pack-truncate: ${bytes.length} -> ${n} bytes` };
    }
  }
}

/**
 * thin_metadata_unpack of a damaged pack: no crash or hang, the pack unchanged, and where both
 * unpack it, the same metadata.
 */
export async function unpack(c: CaseRun, packFile: string, sha256: string): Promise<void> {
  const mine = c.file('ours.bin');
  const theirs = c.file('theirs.bin');
  const up = await c.upstream('thin_metadata_unpack', ['-i', packFile, '-o', theirs]);
  const ours = await c.ours('thin_metadata_unpack', ['-i', packFile, '-o', mine], up.status);
  c.unchanged(packFile, sha256, 'thin_metadata_unpack');
  if (up.timedOut || up.signal || ours.timedOut || ours.signal) return;
  if (passed(ours) && passed(up)) {
    if (!fs.readFileSync(mine).equals(fs.readFileSync(theirs))) c.find('differs', 'thin_metadata_unpack: metadata differs from 1.x\'s unpack of the same pack');
  } else if (passed(ours)) {
    c.review('looser-than-1.x', `1.x thin_metadata_unpack refuses the pack (${lastLines(up.stderr)}), ours unpacks it`);
  } else if (passed(up)) {
    // A pack is damaged here by construction: 1.x unpacks some of them regardless (it does not
    // check zlib's checksum), writing what the damage made of the blocks.
    c.review('stricter-than-1.x', `thin_metadata_unpack refuses a damaged pack 1.x unpacks: ${lastLines(userText(ours.stderr))}`);
  }
}
