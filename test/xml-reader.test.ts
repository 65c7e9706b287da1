import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { readMetadataXml, XmlInputError } from '../src/formats/xml-reader.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../src/thin/events.js';
import { StreamValidator } from '../src/thin/validate-stream.js';
import { generateXml } from './support/generate.js';
import { KERNEL_IMAGES, referenceRestore, runReference, tempDir } from './support/reference.js';

/** Records every event as a compact string, the way a test can compare. */
class Recorder implements MetadataVisitor {
  events: string[] = [];
  superblockBegin(p: PoolInfo) { this.events.push(`sb ${JSON.stringify(p)}`); }
  superblockEnd() { this.events.push('/sb'); }
  deviceBegin(d: DeviceInfo) { this.events.push(`dev ${JSON.stringify(d)}`); }
  deviceEnd() { this.events.push('/dev'); }
  mapRun(t: number, d: number, l: number, time: number) { this.events.push(`map ${t} ${d} ${l} ${time}`); }
  defBegin(name: string) { this.events.push(`def ${name}`); }
  defEnd() { this.events.push('/def'); }
  ref(name: string) { this.events.push(`ref ${name}`); }
}

const fromString = (s: string | Buffer, chunk = 1 << 16): Readable => {
  const buf = Buffer.isBuffer(s) ? s : Buffer.from(s);
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += chunk) parts.push(buf.subarray(i, i + chunk));
  return Readable.from(parts);
};

async function events(xml: string | Buffer, chunk?: number): Promise<string[]> {
  const r = new Recorder();
  await readMetadataXml(fromString(xml, chunk), r, { name: 'in.xml' });
  return r.events;
}

async function errorOf(xml: string, visitor: MetadataVisitor = new Recorder(), chunk?: number): Promise<string> {
  try {
    await readMetadataXml(fromString(xml, chunk), visitor, { name: 'bad.xml' });
  } catch (e) {
    expect(e).toBeInstanceOf(XmlInputError);
    return (e as Error).message;
  }
  throw new Error('no error');
}

/** An oracle independent of the reader: thin_dump's one-element-a-line output, read with regexps. */
function linesOracle(xml: string): { devices: Map<number, number>; runs: string[] } {
  const devices = new Map<number, number>();
  const runs: string[] = [];
  const attr = (line: string, name: string) => Number(new RegExp(`\\b${name}="(\\d+)"`).exec(line)![1]);
  for (const line of xml.split('\n')) {
    if (line.includes('<device ')) devices.set(attr(line, 'dev_id'), attr(line, 'mapped_blocks'));
    else if (line.includes('<single_mapping ')) {
      runs.push(`map ${attr(line, 'origin_block')} ${attr(line, 'data_block')} 1 ${attr(line, 'time')}`);
    } else if (line.includes('<range_mapping ')) {
      runs.push(
        `map ${attr(line, 'origin_begin')} ${attr(line, 'data_begin')} ${attr(line, 'length')} ${attr(line, 'time')}`,
      );
    }
  }
  return { devices, runs };
}

/** Per-block mappings of every device: "dev thin data time", whatever the run boundaries. */
function blocks(evts: string[]): string[] {
  const out: string[] = [];
  let dev = -1;
  for (const e of evts) {
    if (e.startsWith('dev ')) dev = JSON.parse(e.slice(4)).devId;
    if (e.startsWith('map ')) {
      const [t, d, l, time] = e.slice(4).split(' ').map(Number);
      for (let i = 0; i < l; i++) out.push(`${dev} ${t + i} ${d + i} ${time}`);
    }
  }
  return out;
}

const SMALL = `<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="100">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="3" time="0"/>
    <single_mapping origin_block="7" data_block="3" time="1"/>
  </device>
  <device dev_id="2" mapped_blocks="0" transaction="1" creation_time="1" snap_time="1">
  </device>
</superblock>
`;

describe('readMetadataXml: valid input', () => {
  const dir = tempDir('xml-reader-');
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const cases = [
    { seed: 1 },
    { seed: 2, dataBlockSize: 1024, hugeOffset: true, deleteSome: true },
    { seed: 3, origins: 2, snapshotsPerOrigin: 2, mappingsPerOrigin: 500, emptyDevices: 2 },
  ];
  for (const opts of cases) {
    it(`reads the reference thin_dump of a reference-restored image (${JSON.stringify(opts)})`, async () => {
      const source = generateXml(opts);
      const xmlIn = path.join(dir, `in-${opts.seed}.xml`);
      const meta = path.join(dir, `meta-${opts.seed}.bin`);
      fs.writeFileSync(xmlIn, source);
      referenceRestore(xmlIn, meta);
      const dump = runReference('thin_dump', [meta]);
      expect(dump.status).toBe(0);
      const dumpFile = path.join(dir, `dump-${opts.seed}.xml`);
      fs.writeFileSync(dumpFile, dump.stdout);

      const r = new Recorder();
      await readMetadataXml(dumpFile, new StreamValidator(r));
      const oracle = linesOracle(dump.stdout);
      expect(r.events.filter((e) => e.startsWith('map '))).toEqual(oracle.runs);
      const devs = r.events.filter((e) => e.startsWith('dev ')).map((e) => JSON.parse(e.slice(4)) as DeviceInfo);
      expect(new Map(devs.map((d) => [d.devId, d.mappedBlocks]))).toEqual(oracle.devices);
      expect(oracle.runs.length).toBeGreaterThan(0);
      // The dump coalesced the generator's single mappings into runs; block by block they agree.
      const fromSource = new Recorder();
      await readMetadataXml(xmlIn, fromSource);
      expect(blocks(r.events)).toEqual(blocks(fromSource.events));
      expect(r.events[0]).toBe(fromSource.events[0]);
    });
  }

  it('reads thin_dump\'s own layout (its fast path) as it reads the same elements written otherwise', async () => {
    // The reference dump, and the same with each mapping's spaces turned into tabs and newlines,
    // which only the general path reads; chunk sizes that cut tags anywhere.
    const opts = { seed: 4, hugeOffset: true, mappingsPerOrigin: 3000 };
    const xmlIn = path.join(dir, 'in-fast.xml');
    const meta = path.join(dir, 'meta-fast.bin');
    fs.writeFileSync(xmlIn, generateXml(opts));
    referenceRestore(xmlIn, meta);
    const dump = runReference('thin_dump', [meta]).stdout;
    const respaced = dump.replace(/(<(?:single|range)_mapping)( [^\n]*)\/>/g, (_, tag: string, attrs: string) => `${tag}${attrs.replace(/ /g, '\t\n')}\n/>`);
    expect(respaced).not.toBe(dump);
    const oracle = linesOracle(dump).runs;
    expect(oracle.length).toBeGreaterThan(1000);
    for (const chunk of [1, 7, 61, 4096]) {
      const fast = (await events(dump, chunk)).filter((e) => e.startsWith('map '));
      const general = (await events(respaced, chunk)).filter((e) => e.startsWith('map '));
      expect(fast).toEqual(oracle);
      expect(general).toEqual(oracle);
    }
    // A number past the fast path's 15 digits is still read exactly.
    const big = dump.replace(/origin_(block|begin)="(\d+)"/, (_, w: string) => `origin_${w}="18446744073709551000"`);
    expect((await events(big)).find((e) => e.startsWith('map '))).toMatch(/^map 18446744073709551000 /);
  });

  it('reads the kernel images stored reference dumps, and -m dumps only with --nr-data-blocks', async () => {
    const ki = KERNEL_IMAGES;
    const stored = fs.readdirSync(ki).filter((f) => /\.thin_dump(_m)?\.out(\.gz)?$/.test(f));
    expect(stored.length).toBeGreaterThan(5);
    let complete = 0;
    for (const f of stored) {
      let text = fs.readFileSync(path.join(ki, f));
      if (f.endsWith('.gz')) text = zlib.gunzipSync(text);
      const log = fs.readFileSync(path.join(ki, f.replace(/\.out(\.gz)?$/, '.log')), 'utf8');
      if (!log.includes('exit status: 0')) {
        // thin_dump failed part way: what it printed must not pass for a whole dump.
        await expect(readMetadataXml(fromString(text), new Recorder(), { name: f })).rejects.toThrow(/is not closed$/);
        continue;
      }
      complete++;
      const oracle = linesOracle(text.toString());
      const r = new Recorder();
      const sb = /nr_data_blocks="(\d+)"/.exec(text.toString())![1];
      const needsOverride = sb === '0' && oracle.runs.length > 0;
      await readMetadataXml(fromString(text), new StreamValidator(r, needsOverride ? { nrDataBlocks: 65536 } : {}));
      expect(r.events.filter((e) => e.startsWith('map ')), f).toEqual(oracle.runs);
      if (needsOverride) {
        await expect(readMetadataXml(fromString(text), new StreamValidator(new Recorder()), { name: f })).rejects.toThrow(
          new RegExp(`^${f.replace(/\./g, '\\.')}:3: data block \\d+ .*is beyond the data device: nr_data_blocks is 0$`),
        );
      }
    }
    expect(complete).toBeGreaterThan(5);
  });

  it('accepts what XML allows: any attribute order, quotes, whitespace, declaration, BOM, comments, CRLF, empty-element forms', async () => {
    const canonical = await events(SMALL);
    const variant =
      '\ufeff<?xml version="1.0" encoding="UTF-8"?>\r\n<!-- made by hand -->\r\n' +
      `<superblock nr_data_blocks='100' data_block_size="128" version="2" flags="0"\r\n  transaction = "2" time="1" uuid="">\r\n` +
      '<!-- a\n multi-line - comment -->' +
      '<device snap_time="1" creation_time="0" transaction="0" mapped_blocks="4" dev_id="1" >' +
      '<range_mapping time="0" length="3" data_begin="10" origin_begin="0"></range_mapping>\n' +
      '<single_mapping\n\ttime="1"\n\tdata_block="3" origin_block="7" /></device>' +
      '<device dev_id="2" mapped_blocks="0" transaction="1" creation_time="1" snap_time="1"/>' +
      '</superblock >\n<!-- trailing comment -->\n\n';
    expect(await events(variant)).toEqual(canonical);
    // Chunk boundaries anywhere, down to single bytes, change nothing.
    for (const chunk of [1, 2, 3, 7, 64]) expect(await events(variant, chunk), `chunk ${chunk}`).toEqual(canonical);
  });

  it('decodes entities in the uuid and passes metadata_snap through', async () => {
    const xml = SMALL.replace('uuid=""', 'uuid="a&amp;b&#x41;&#66;&lt;&quot;" metadata_snap="6"');
    const first = JSON.parse((await events(xml))[0].slice(3)) as PoolInfo;
    expect(first.uuid).toBe('a&bAB<"');
    expect(first.metadataSnap).toBe(6);
  });

  it('reads the 1.x shared form: defs at superblock level, refs in devices and in later defs', async () => {
    const shared = `<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
  <def name="17">
    <range_mapping origin_begin="0" data_begin="100" length="50" time="0"/>
  </def>
  <def name="18">
    <ref name="17"/>
    <single_mapping origin_block="60" data_block="7" time="1"/>
  </def>
  <device dev_id="1" mapped_blocks="52" transaction="0" creation_time="0" snap_time="1">
    <ref name="18"/>
    <single_mapping origin_block="61" data_block="8" time="1"/>
  </device>
  <device dev_id="2" mapped_blocks="51" transaction="1" creation_time="1" snap_time="1">
    <ref name="18"/>
  </device>
</superblock>`;
    const r = new Recorder();
    await readMetadataXml(fromString(shared), new StreamValidator(r));
    expect(r.events.slice(1)).toEqual([
      'def 17', 'map 0 100 50 0', '/def', 'def 18', 'ref 17', 'map 60 7 1 1', '/def',
      'dev {"devId":1,"mappedBlocks":52,"transaction":0,"creationTime":0,"snapTime":1}', 'ref 18', 'map 61 8 1 1', '/dev',
      'dev {"devId":2,"mappedBlocks":51,"transaction":1,"creationTime":1,"snapTime":1}', 'ref 18', '/dev', '/sb',
    ]);
    // A consumer that only takes the flat form is told so at the first <def>.
    const flatOnly: MetadataVisitor = {
      superblockBegin() {}, superblockEnd() {}, deviceBegin() {}, deviceEnd() {}, mapRun() {},
    };
    expect(await errorOf(shared, flatOnly)).toBe('bad.xml:2: shared mappings (<def>/<ref>) are not supported here');
  });

  it('names a missing input file', async () => {
    await expect(readMetadataXml('/nonexistent/x.xml', new Recorder())).rejects.toThrow(
      '/nonexistent/x.xml: No such file or directory',
    );
  });
});

describe('readMetadataXml: bad input', () => {
  const SB = '<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="100">';
  const DEV = '<device dev_id="1" mapped_blocks="1" transaction="0" creation_time="0" snap_time="1">';
  const map = (attrs: string) => `${SB}\n${DEV}\n<single_mapping ${attrs}/>\n</device>\n</superblock>\n`;
  const bad: [string, string, string][] = [
    ['only whitespace and a comment', '\n\n<!-- x -->\n', 'bad.xml:4: no <superblock> element'],
    ['unclosed root', `${SB}\n${DEV}\n</device>\n`, 'bad.xml:4: unexpected end of input: <superblock> (line 1) is not closed'],
    ['unclosed tag at end', `${SB}\n<device dev_id="1"`, 'bad.xml:2: unexpected end of input inside a tag'],
    ['unterminated comment', `${SB}\n<!-- never\n\n`, 'bad.xml:4: unterminated comment at end of input'],
    ["'--' inside a comment", `<!-- a -- b -->\n${SB}</superblock>`, "bad.xml:1: '--' inside a comment"],
    ['unknown element', `${SB}\n<devices/>\n</superblock>`, 'bad.xml:2: unknown element <devices>'],
    ['unknown attribute', `${SB}\n<device dev_id="1" colour="red"/>`, "bad.xml:2: unknown attribute 'colour' on <device>"],
    ['missing attribute', `${SB}\n<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0"/>`, "bad.xml:2: <device> is missing attribute 'snap_time'"],
    ['missing superblock attribute', '<superblock uuid="" time="1" transaction="2" data_block_size="128">', "bad.xml:1: <superblock> is missing attribute 'nr_data_blocks'"],
    ['duplicate attribute', `${SB}\n<device dev_id="1" dev_id="2"/>`, "bad.xml:2: attribute 'dev_id' given twice on <device>"],
    ['unquoted value', `${SB}\n<device dev_id=1/>`, "bad.xml:2: value of attribute 'dev_id' of <device> is not quoted"],
    ['attribute without value', `${SB}\n<device dev_id/>`, "bad.xml:2: attribute 'dev_id' of <device> has no value"],
    ['no space between attributes', `${SB}\n<device dev_id="1"mapped_blocks="0"/>`, "bad.xml:2: malformed <device> tag: no space before attribute 'mapped_blocks'"],
    ['mismatched end tag', `${SB}\n${DEV}\n</superblock>`, 'bad.xml:3: </superblock> does not close <device> (line 2)'],
    ['stray end tag', `${SB}</superblock>\n</device>`, 'bad.xml:2: unexpected </device>'],
    ['mapping outside a device', `${SB}\n<single_mapping origin_block="0" data_block="0" time="0"/>`, 'bad.xml:2: <single_mapping> outside a <device> or <def>'],
    ['mapping before the superblock', '<single_mapping origin_block="0" data_block="0" time="0"/>', 'bad.xml:1: <single_mapping> outside a <device> or <def>'],
    ['nested devices', `${SB}\n${DEV}\n  ${DEV}`, 'bad.xml:3: <device> nested inside <device> (line 2)'],
    ['device outside superblock', DEV, 'bad.xml:1: <device> outside <superblock>'],
    ['device inside a def', `${SB}\n<def name="a">\n${DEV}`, 'bad.xml:3: <device> inside <def>'],
    ['def inside a device', `${SB}\n${DEV}\n<def name="a">`, 'bad.xml:3: <def> inside <device>'],
    ['element inside a mapping', `${SB}\n${DEV}\n<single_mapping origin_block="0" data_block="0" time="0">\n<ref name="x"/>`, 'bad.xml:4: <ref> inside <single_mapping>, which holds nothing'],
    ['second superblock', `${SB}\n</superblock>\n${SB}`, 'bad.xml:3: a second <superblock>'],
    ['superblock inside superblock', `${SB}\n  ${SB}`, 'bad.xml:2: <superblock> inside <superblock>'],
    ['trailing garbage text', `${SB}</superblock>\nxyz`, "bad.xml:2: trailing garbage after </superblock>: 'xyz'"],
    ['trailing element', `${SB}</superblock>\n\n${DEV}`, 'bad.xml:3: trailing garbage after </superblock>: <device>'],
    ['text inside a device', `${SB}\n${DEV}\nhello`, "bad.xml:3: unexpected text 'hello'"],
    ['late XML declaration', `\n<?xml version="1.0"?>${SB}`, 'bad.xml:2: the XML declaration must come first'],
    ['other encoding', `<?xml version="1.0" encoding="UTF-16"?>${SB}`, "bad.xml:1: unsupported encoding 'UTF-16'"],
    ['processing instruction', `${SB}\n<?php x ?>`, "bad.xml:2: unsupported processing instruction '<?php x ?>'"],
    ['DOCTYPE', '<!DOCTYPE x>', "bad.xml:1: unsupported markup '<!DOCTYPE '"],
    ['CDATA', `${SB}\n<![CDATA[x]]>`, "bad.xml:2: unsupported markup '<![CDATA[x'"],
    ['bad entity', '<superblock uuid="&nbsp;"', "bad.xml:1: bad entity '&nbsp;' in attribute 'uuid' of <superblock>"],
    ['bare ampersand', '<superblock uuid="a & b"', "bad.xml:1: bad entity '& b' in attribute 'uuid' of <superblock>"],
    ['< in a value', '<superblock uuid="a<b"', "bad.xml:1: '<' inside attribute 'uuid' of <superblock>"],
    ['negative number', map('origin_block="-1" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block="-1" is not a non-negative decimal integer'],
    ['plus sign', map('origin_block="+1" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block="+1" is not a non-negative decimal integer'],
    ['hex number', map('origin_block="0x10" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block="0x10" is not a non-negative decimal integer'],
    ['spaces in a number', map('origin_block=" 1" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block=" 1" is not a non-negative decimal integer'],
    ['empty number', map('origin_block="" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block="" is not a non-negative decimal integer'],
    ['fraction', map('origin_block="1.5" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block="1.5" is not a non-negative decimal integer'],
    ['data block of 2^40', map('origin_block="0" data_block="1099511627776" time="0"'), 'bad.xml:3: <single_mapping> data_block="1099511627776" is out of range (0 .. 1099511627775)'],
    ['mapping time of 2^24', map('origin_block="0" data_block="0" time="16777216"'), 'bad.xml:3: <single_mapping> time="16777216" is out of range (0 .. 16777215)'],
    ['thin block beyond 2^64-1', map('origin_block="18446744073709551616" data_block="0" time="0"'), 'bad.xml:3: <single_mapping> origin_block="18446744073709551616" is out of range (0 .. 18446744073709551615)'],
    ['dev_id of 2^24', `${SB}\n<device dev_id="16777216" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"/>`, 'bad.xml:2: <device> dev_id="16777216" is out of range (0 .. 16777215)'],
    ['u32 time overflow', '<superblock uuid="" time="4294967296"', 'bad.xml:1: <superblock> time="4294967296" is out of range (0 .. 4294967295)'],
    ['range length 0', `${SB}\n${DEV}\n<range_mapping origin_begin="0" data_begin="0" length="0" time="0"/>`, 'bad.xml:3: <range_mapping> length="0" is out of range (1 .. 9007199254740991)'],
  ];
  for (const [what, xml, message] of bad) {
    it(`rejects ${what}`, async () => {
      expect(await errorOf(xml)).toBe(message);
      // The same error, at the same line, however the input is chunked.
      expect(await errorOf(xml, new Recorder(), 1)).toBe(message);
    });
  }

  it.each([
    ['empty input', '', 'bad.xml: empty, not thin_dump XML'],
    ['binary input', '\u0000\u0001<superblock', 'bad.xml: this looks like binary metadata, not XML (thin_dump turns metadata into XML)'],
  ])('refuses %s, naming it', async (_what, text, message) => {
    await expect(readMetadataXml(fromString(text), new Recorder(), { name: 'bad.xml' })).rejects.toThrow(message);
  });

  it('refuses a tag that never closes instead of buffering it', async () => {
    const endless = Readable.from(
      (function* () {
        yield Buffer.from('<superblock uuid="');
        for (let i = 0; i < 40; i++) yield Buffer.alloc(64 * 1024, 0x61);
      })(),
    );
    await expect(readMetadataXml(endless, new Recorder(), { name: 'big.xml' })).rejects.toThrow(
      'big.xml:1: a tag longer than 1 MiB',
    );
  });

  it('passes errors other than StreamError from the visitor through unchanged', async () => {
    const failing = new Recorder();
    failing.deviceBegin = () => {
      throw new Error('disk full');
    };
    await expect(readMetadataXml(fromString(SMALL), failing)).rejects.toThrow(/^disk full$/);
  });
});

describe('readMetadataXml: streaming', () => {
  it('emits events while a 200k-line document is still being produced, holding little of it', async () => {
    const LINES = 200_000;
    let produced = 0;
    let producedAtFirstMapping = -1;
    let maps = 0;
    async function* source() {
      yield `<superblock uuid="" time="0" transaction="0" flags="0" version="2" data_block_size="128" nr_data_blocks="${LINES}">\n`;
      yield `<device dev_id="0" mapped_blocks="${LINES}" transaction="0" creation_time="0" snap_time="0">\n`;
      for (let i = 0; i < LINES; i += 1000) {
        let chunk = '';
        for (let k = i; k < i + 1000; k++) chunk += `  <single_mapping origin_block="${k}" data_block="${k}" time="0"/>\n`;
        produced = i + 1000;
        yield chunk;
      }
      yield '</device>\n</superblock>\n';
    }
    const sink = new Recorder();
    // How far the source ran ahead of the events: the reader may hold only a little of it.
    let lead = 0;
    sink.mapRun = () => {
      if (producedAtFirstMapping < 0) producedAtFirstMapping = produced;
      maps++;
      lead = Math.max(lead, produced - maps);
    };
    const stream = Readable.from(source(), { objectMode: false });
    let progressCalls = 0;
    await readMetadataXml(stream, new StreamValidator(sink), { onProgress: () => progressCalls++ });
    expect(maps).toBe(LINES);
    expect(producedAtFirstMapping).toBeGreaterThan(0);
    expect(producedAtFirstMapping).toBeLessThan(LINES / 10);
    expect(progressCalls).toBeGreaterThan(100);
    expect(lead).toBeLessThan(LINES / 10);
  });
});
