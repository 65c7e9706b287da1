// Measures reading a large thin_dump XML: our streaming reader (src/formats/xml-reader.ts, built
// to dist/) against fast-xml-parser on the whole file. Each run is a fresh process so its peak
// RSS is its own. Usage: npm run build && node bench/xml-parse.mjs [mappings=1000000]
// Results are recorded in docs/decisions.md.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const self = fileURLToPath(import.meta.url);
const dist = path.join(path.dirname(self), '..', 'dist');

/** A flat dump like thin_dump's: devices of 100k mappings, one mapping a line, a fifth of them ranges. */
function generate(file, mappings) {
  const fd = fs.openSync(file, 'w');
  const perDevice = 100_000;
  const devices = Math.ceil(mappings / perDevice);
  let out = [`<superblock uuid="" time="3" transaction="7" flags="0" version="2" data_block_size="128" nr_data_blocks="${2 ** 36}">`];
  let data = 0;
  let lines = 1;
  const flush = () => {
    fs.writeSync(fd, out.join('\n') + '\n');
    out = [];
  };
  for (let d = 0; d < devices; d++) {
    const n = Math.min(perDevice, mappings - d * perDevice);
    let blocks = 0;
    const body = [];
    let thin = 0;
    for (let i = 0; i < n; i++) {
      if (i % 5 === 4) {
        const len = 2 + (i % 7);
        body.push(`    <range_mapping origin_begin="${thin}" data_begin="${data}" length="${len}" time="${i % 4}"/>`);
        thin += len + 1;
        data += len + 3;
        blocks += len;
      } else {
        body.push(`    <single_mapping origin_block="${thin}" data_block="${data}" time="${i % 4}"/>`);
        thin += 2;
        data += 5;
        blocks += 1;
      }
    }
    out.push(`  <device dev_id="${d}" mapped_blocks="${blocks}" transaction="${d}" creation_time="0" snap_time="0">`);
    out.push(...body, '  </device>');
    lines += n + 2;
    flush();
  }
  out.push('</superblock>');
  flush();
  fs.closeSync(fd);
  return lines + 1;
}

async function runStream(file, validate) {
  const { readMetadataXml } = await import(path.join(dist, 'formats', 'xml-reader.js'));
  const { StreamValidator } = await import(path.join(dist, 'thin', 'validate-stream.js'));
  let blocks = 0;
  const sink = {
    superblockBegin() {}, superblockEnd() {}, deviceBegin() {}, deviceEnd() {},
    mapRun(_t, _d, len) { blocks += len; },
  };
  await readMetadataXml(file, validate ? new StreamValidator(sink) : sink);
  return blocks;
}

async function runFastXmlParser(file) {
  const { XMLParser } = await import('fast-xml-parser');
  const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '', parseAttributeValue: false });
  const doc = parser.parse(fs.readFileSync(file, 'utf8'));
  const list = (x) => (x === undefined ? [] : Array.isArray(x) ? x : [x]);
  let blocks = 0;
  for (const dev of list(doc.superblock.device)) {
    for (const m of list(dev.single_mapping)) blocks += Number(m.data_block) >= 0 ? 1 : 0;
    for (const m of list(dev.range_mapping)) blocks += Number(m.length);
  }
  return blocks;
}

const [mode, file] = process.argv.slice(2);
if (mode === '--run-stream' || mode === '--run-validate' || mode === '--run-fxp') {
  const t0 = process.hrtime.bigint();
  const blocks =
    mode === '--run-fxp' ? await runFastXmlParser(file) : await runStream(file, mode === '--run-validate');
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(JSON.stringify({ ms: Math.round(ms), blocks, peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }));
} else {
  const mappings = Number(mode ?? 1_000_000);
  const file = path.join(os.tmpdir(), `xml-bench-${mappings}.xml`);
  const lines = generate(file, mappings);
  console.log(`${file}: ${lines} lines, ${(fs.statSync(file).size / 2 ** 20).toFixed(0)} MiB`);
  for (const [label, flag] of [
    ['streaming reader', '--run-stream'],
    ['streaming reader + StreamValidator', '--run-validate'],
    ...(process.env.SKIP_FXP ? [] : [['fast-xml-parser, whole file', '--run-fxp']]),
  ]) {
    const r = spawnSync(process.execPath, ['--max-old-space-size=4096', self, flag, file], { encoding: 'utf8' });
    if (r.status !== 0) {
      console.log(`${label}: failed (status ${r.status}): ${r.stderr.split('\n').slice(0, 3).join(' ')}`);
      continue;
    }
    const res = JSON.parse(r.stdout);
    const rate = (lines / (res.ms / 1000) / 1e6).toFixed(2);
    console.log(`${label}: ${res.ms} ms (${rate} M lines/s), peak RSS ${res.peakRssMiB} MiB, ${res.blocks} blocks`);
  }
  fs.unlinkSync(file);
}
