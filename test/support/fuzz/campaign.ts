// The fuzz campaign: case N of seed S mutates one source (chosen, like everything in the case,
// from a PRNG seeded by S and N) and runs one tool family on it, checking its properties against
// the reference tools. Families and mutations take turns, so any run of
// families x mutations cases covers every pair. Cases run a few at a time (each is processes).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CaseRun, FINDING_KINDS, Finding, REVIEW_KINDS, ReviewKind, fileHash } from './case-run.js';
import {
  BINARY_FAMILIES, Family, OPTION_FAMILIES, OPTION_MUTATIONS, PACK_FAMILIES, XML_FAMILIES, runBinaryFamily, runOptions, runRestore,
} from './families.js';
import { PACK_MUTATIONS, mutatePack, unpack } from './tool-families.js';
import { BINARY_MUTATIONS, mutateImage } from './mutate.js';
import { XML_MUTATIONS, mutateXml } from './mutate-xml.js';
import { Rand, caseSeed } from './random.js';
import { Sources, prepareSources } from './sources.js';

export const FAMILIES: readonly Family[] = [...BINARY_FAMILIES, ...XML_FAMILIES, ...OPTION_FAMILIES, ...PACK_FAMILIES];

/** The mutations a family's cases take turns through. */
export function mutationsOf(family: Family): readonly string[] {
  switch (family) {
    case 'restore':
      return XML_MUTATIONS;
    case 'options':
      return OPTION_MUTATIONS;
    case 'unpack':
      return PACK_MUTATIONS;
    default:
      return BINARY_MUTATIONS;
  }
}

export interface CaseResult {
  /** `seed:case`, what --replay takes. */
  id: string;
  n: number;
  family: Family;
  mutation: string;
  source: string;
  options: string[];
  notes: string[];
  findings: Finding<string>[];
  reviews: Finding<ReviewKind>[];
  ourStatus?: number | null;
  recovered?: { ours: number; reference: number };
  ms: number;
}

export interface CampaignOptions {
  root: string;
  seed: number;
  /** Case numbers to run. */
  cases: number[];
  /** Only these families (default all). */
  families?: readonly Family[];
  jobs?: number;
  timeoutMs?: number;
  /** Sources are written here and each case works in a subdirectory. */
  workDir: string;
  /** Keep each case's files (inputs, outputs) in workDir. */
  keep?: boolean;
  verbose?: (line: string) => void;
  onCase?: (r: CaseResult) => void;
}

export interface CampaignReport {
  seed: number;
  jobs: number;
  ms: number;
  results: CaseResult[];
}

const DEFAULT_TIMEOUT_MS = 60_000;

export async function runCampaign(o: CampaignOptions): Promise<CampaignReport> {
  const start = Date.now();
  const sources = prepareSources(o.root, path.join(o.workDir, 'sources'));
  const families = o.families ?? FAMILIES;
  const jobs = o.jobs ?? Math.max(1, os.availableParallelism());
  const results: CaseResult[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: jobs }, async () => {
    while (next < o.cases.length) {
      const n = o.cases[next++];
      const r = await runCase(o, sources, families, n);
      results.push(r);
      o.onCase?.(r);
    }
  }));
  results.sort((a, b) => a.n - b.n);
  return { seed: o.seed, jobs, ms: Date.now() - start, results };
}

async function runCase(o: CampaignOptions, sources: Sources, families: readonly Family[], n: number): Promise<CaseResult> {
  const start = Date.now();
  const family = families[n % families.length];
  const kinds = mutationsOf(family);
  const mutation = kinds[Math.floor(n / families.length) % kinds.length];
  const rand = new Rand(caseSeed(o.seed, n));
  const dir = path.join(o.workDir, `case-${n}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const c = new CaseRun(dir, o.timeoutMs ?? DEFAULT_TIMEOUT_MS, o.verbose);
  const result: CaseResult = {
    id: `${o.seed}:${n}`, n, family, mutation, source: '', options: [], notes: [], findings: c.findings, reviews: c.reviews, ms: 0,
  };
  try {
    if (family === 'unpack') {
      const src = rand.weighted(sources.images.map((s) => [s, s.weight] as const));
      const packed = src.pack();
      if (!packed) throw new Error(`our thin_metadata_pack cannot pack the source ${src.name}`);
      result.source = src.name;
      const m = mutatePack(packed, mutation as (typeof PACK_MUTATIONS)[number], rand);
      result.notes = [m.note];
      o.verbose?.(`case ${result.id}: unpack, ${src.name}\n  ${m.note}`);
      const packFile = c.file('input.pack');
      fs.writeFileSync(packFile, m.bytes);
      await unpack(c, packFile, fileHash(packFile));
    } else if (family === 'options') {
      const img = rand.weighted(sources.images.map((s) => [s, s.weight] as const));
      const src = rand.weighted(sources.xmls.map((s) => [s, s.weight] as const));
      result.source = `${img.name} / ${src.name}`;
      const image = c.file('input.bin');
      fs.copyFileSync(img.file, image);
      const xml = c.file('input.xml');
      fs.copyFileSync(src.file, xml);
      result.options = await runOptions(mutation as (typeof OPTION_MUTATIONS)[number], {
        c, image, imageSha256: fileHash(image), xml, metadataBytes: Math.max(img.bytes().length, src.metadataBytes), rand,
      });
      result.notes = [`${mutation}: ${result.options.join(' ')}`];
      o.verbose?.(`case ${result.id}: options, ${result.source}\n  ${result.notes[0]}`);
    } else if (family === 'restore') {
      const src = rand.weighted(sources.xmls.map((s) => [s, s.weight] as const));
      result.source = src.name;
      const m = mutateXml(fs.readFileSync(src.file), mutation as (typeof XML_MUTATIONS)[number], rand);
      result.notes = m.notes;
      o.verbose?.(`case ${result.id}: restore, ${src.name}\n  ${m.notes.join('\n  ')}`);
      const xml = c.file('input.xml');
      fs.writeFileSync(xml, m.xml);
      await runRestore({ c, xml, sha256: fileHash(xml), shared: src.shared, metadataBytes: src.metadataBytes });
    } else {
      const src = rand.weighted(sources.images.map((s) => [s, s.weight] as const));
      result.source = src.name;
      const m = mutateImage(src.bytes(), src.map, mutation as (typeof BINARY_MUTATIONS)[number], rand);
      result.notes = m.notes;
      o.verbose?.(`case ${result.id}: ${family}, ${src.name}\n  ${m.notes.join('\n  ')}`);
      const input = c.file('input.bin');
      fs.writeFileSync(input, m.image);
      result.options = await runBinaryFamily(family as (typeof BINARY_FAMILIES)[number], {
        c, input, sha256: fileHash(input), rand,
        source: { name: src.name, metadataBytes: src.bytes().length, map: src.map, truth: () => src.truth() },
      });
    }
  } catch (e) {
    result.findings.push({ kind: 'harness', detail: (e as Error).stack ?? String(e) });
  } finally {
    if (!o.keep) fs.rmSync(dir, { recursive: true, force: true });
  }
  result.ourStatus = c.ourStatus;
  result.recovered = c.recovered;
  result.ms = Date.now() - start;
  return result;
}

// ---- the report ----

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ')).join('\n');
}

function countTable(results: CaseResult[], families: readonly Family[], kinds: readonly string[]): string {
  const rows = [['', ...kinds, 'total']];
  for (const f of families) {
    const mine = results.filter((r) => r.family === f);
    if (!mine.length) continue;
    rows.push([f, ...kinds.map((k) => String(mine.filter((r) => r.mutation === k).length)), String(mine.length)]);
  }
  return table(rows);
}

/** A finding's or review's text with numbers blanked, to group alike ones. */
function shape(detail: string): string {
  return detail.replace(/\d+/g, 'N').replace(/N( N)+/g, 'N');
}

export function formatReport(report: CampaignReport, opts: { listReviews?: number } = {}): string {
  const { results } = report;
  const out: string[] = [];
  const findings = results.flatMap((r) => r.findings.map((f) => ({ r, f })));
  const crashes = findings.filter(({ f }) => f.kind === 'crash').length;
  const hangs = findings.filter(({ f }) => f.kind === 'hang').length;
  const changed = findings.filter(({ f }) => f.kind === 'input-changed').length;
  const looser = findings.filter(({ f }) => f.kind === 'looser').length;
  out.push(`fuzz: seed ${report.seed}, ${results.length} cases, ${report.jobs} jobs, ${(report.ms / 1000).toFixed(0)} s`);
  out.push(`findings: ${findings.length} (crashes ${crashes}, hangs ${hangs}, changed inputs ${changed}, looser verdicts ${looser})`);
  out.push('');
  out.push('cases by tool family x mutation (binary inputs):');
  out.push(countTable(results, BINARY_FAMILIES, BINARY_MUTATIONS));
  out.push('');
  out.push('cases by tool family x mutation (XML inputs):');
  out.push(countTable(results, XML_FAMILIES, XML_MUTATIONS));
  out.push('');
  out.push('cases by tool family x mutation (pack files):');
  out.push(countTable(results, PACK_FAMILIES, PACK_MUTATIONS));
  out.push('');
  const optionCases = results.filter((r) => r.family === 'options');
  if (optionCases.length) {
    out.push('option values, by tool:');
    const rows = [['', ...OPTION_MUTATIONS, 'total']];
    for (const tool of [...new Set(optionCases.map((r) => r.options[0]))].sort()) {
      const mine = optionCases.filter((r) => r.options[0] === tool);
      rows.push([tool, ...OPTION_MUTATIONS.map((k) => String(mine.filter((r) => r.mutation === k).length)), String(mine.length)]);
    }
    out.push(table(rows));
    out.push('');
  }
  out.push('our exit status by family:');
  const statusRows = [['', 'exit 0', 'exit 1', 'other']];
  for (const f of FAMILIES) {
    const mine = results.filter((r) => r.family === f);
    if (!mine.length) continue;
    statusRows.push([f, String(mine.filter((r) => r.ourStatus === 0).length), String(mine.filter((r) => r.ourStatus === 1).length),
      String(mine.filter((r) => r.ourStatus !== 0 && r.ourStatus !== 1).length)]);
  }
  out.push(table(statusRows));
  out.push('');
  const rec = results.filter((r) => r.recovered);
  if (rec.length) {
    const held = rec.filter((r) => r.recovered!.ours >= r.recovered!.reference).length;
    const sum = (k: 'ours' | 'reference') => rec.reduce((s, r) => s + r.recovered![k], 0);
    out.push(`repair: ${rec.length} cases where the 0.9.0 thin_repair succeeded; ours recovered at least as many in ${held}` +
      ` (mappings recovered that the source held, in all: ours ${sum('ours')}, 0.9.0 ${sum('reference')})`);
    out.push('');
  }
  out.push('findings by kind:');
  for (const k of [...FINDING_KINDS, 'harness']) {
    const mine = findings.filter(({ f }) => f.kind === k);
    if (mine.length) out.push(`  ${k}: ${mine.length}`);
  }
  if (!findings.length) out.push('  none');
  for (const { r, f } of findings) {
    out.push(`- [${r.id}] ${r.family} ${r.options.join(' ')} / ${r.mutation} of ${r.source}: ${f.kind}: ${f.detail}`);
    for (const note of r.notes) out.push(`    ${note}`);
    out.push(`    replay: npm run fuzz -- --replay ${r.id}`);
  }
  out.push('');
  out.push('for review (allowed, but worth a look):');
  const reviews = results.flatMap((r) => r.reviews.map((f) => ({ r, f })));
  if (!reviews.length) out.push('  none');
  for (const k of REVIEW_KINDS) {
    const mine = reviews.filter(({ f }) => f.kind === k);
    if (!mine.length) continue;
    out.push(`  ${k}: ${mine.length} cases`);
    const groups = new Map<string, typeof mine>();
    for (const x of mine) {
      const g = shape(x.f.detail);
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g)!.push(x);
    }
    const sorted = [...groups.values()].sort((a, b) => b.length - a.length);
    for (const g of sorted.slice(0, opts.listReviews ?? 12)) {
      out.push(`    ${String(g.length).padStart(4)} x ${g[0].f.detail}  [e.g. ${g.slice(0, 3).map((x) => x.r.id).join(', ')}]`);
    }
    if (sorted.length > (opts.listReviews ?? 12)) out.push(`    ... and ${sorted.length - (opts.listReviews ?? 12)} more kinds`);
  }
  return out.join('\n');
}

export function failed(report: CampaignReport): boolean {
  return report.results.some((r) => r.findings.length > 0);
}
