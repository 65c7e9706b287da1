// What each tool must do with a damaged input (the properties of a fuzz case), run against the
// reference tools as oracles: 0.9.0 (C++, /usr/sbin) and upstream 1.x (Rust, .references/1x).
import * as fs from 'node:fs';
import { countMappings, countTrueMappings } from '../dump-mappings.js';
import { BinaryCase, CaseRun, FindingKind, failed, lastLines, passed } from './case-run.js';
import { LIMITS } from './mutate-xml.js';
import { ProcessResult, userText } from './processes.js';
import { extract, pack, sameAsReference, trim } from './tool-families.js';
import { Rand } from './random.js';

export const BINARY_FAMILIES = [
  'check', 'check-options', 'check-writes', 'dump', 'dump-repair', 'repair', 'ls', 'delta', 'rmap', 'trim', 'extract', 'pack',
] as const;
export const XML_FAMILIES = ['restore'] as const;
/** Every tool's options that take a value, given values at and past their limits. */
export const OPTION_FAMILIES = ['options'] as const;
export const OPTION_MUTATIONS = ['option-number', 'option-text'] as const;
/** Damaged pack files, for thin_metadata_unpack. */
export const PACK_FAMILIES = ['unpack'] as const;
export type Family =
  | (typeof BINARY_FAMILIES)[number] | (typeof XML_FAMILIES)[number] | (typeof OPTION_FAMILIES)[number] | (typeof PACK_FAMILIES)[number];

/** Our check's verdict against a reference's: failing where it passes is allowed, the reverse never. */
function compareVerdicts(c: CaseRun, ours: ProcessResult, ref: ProcessResult, refName: '0.9.0' | '1.x', options: string[]): void {
  if (ours.timedOut || ours.signal || ref.timedOut || ref.signal) return;
  const opts = options.length ? ` ${options.join(' ')}` : '';
  if (passed(ours) && failed(ref)) {
    const detail = `${refName} thin_check${opts} fails (${lastLines(ref.stderr)}), ours passes`;
    if (refName === '0.9.0') c.find('looser', detail);
    else c.review('looser-than-1.x', detail);
  } else if (failed(ours) && passed(ref) && refName === '0.9.0') {
    c.review('stricter', `thin_check${opts}: ours fails (${lastLines(userText(ours.stderr))}), 0.9.0 passes`);
  }
}

const CHECK_OPTIONS = ['-m', '--super-block-only', '--skip-mappings', '--ignore-non-fatal-errors'];

export async function runBinaryFamily(family: (typeof BINARY_FAMILIES)[number], k: BinaryCase): Promise<string[]> {
  switch (family) {
    case 'check':
      return check(k, []);
    case 'check-options': {
      const opts = CHECK_OPTIONS.filter(() => k.rand.chance(0.4));
      if (k.rand.chance(0.2)) {
        // Another tree's root, a device's root (a two-level tree seen as one level) or any block.
        const roles = ['top-node', 'device-root', 'details-node'] as const;
        const blocks = roles.flatMap((r) => k.source.map?.byRole.get(r) ?? []);
        const block = blocks.length && k.rand.chance(0.8) ? k.rand.pick(blocks) : k.rand.int(k.source.map?.nrBlocks ?? 1);
        opts.push('--override-mapping-root', String(block));
      }
      return check(k, opts.length ? opts : [k.rand.pick(CHECK_OPTIONS)]);
    }
    case 'check-writes':
      return checkWrites(k, k.rand.pick(['--clear-needs-check-flag', '--auto-repair']));
    case 'dump':
      return dump(k);
    case 'dump-repair':
      return dumpRepair(k);
    case 'repair':
      return repair(k);
    case 'ls':
    case 'delta':
    case 'rmap':
      return sameAsReference(family, k);
    case 'trim':
      return trim(k);
    case 'extract':
      return extract(k);
    case 'pack':
      return pack(k);
  }
}

async function check({ c, input, sha256 }: BinaryCase, opts: string[]): Promise<string[]> {
  const ref = await c.reference('thin_check', [...opts, input]);
  const ours = await c.ours('thin_check', [...opts, input], ref.status);
  c.unchanged(input, sha256, 'thin_check');
  compareVerdicts(c, ours, ref, '0.9.0', opts);
  compareVerdicts(c, ours, await c.upstream('thin_check', [...opts, input]), '1.x', opts);
  return opts;
}

/** --clear-needs-check-flag and --auto-repair write their input: each tool gets its own copy. */
async function checkWrites({ c, input, sha256 }: BinaryCase, option: string): Promise<string[]> {
  const mine = c.file('ours.bin');
  fs.copyFileSync(input, mine);
  if (option === '--clear-needs-check-flag') {
    const theirs = c.file('theirs.bin');
    fs.copyFileSync(input, theirs);
    const ref = await c.reference('thin_check', [option, theirs]);
    const ours = await c.ours('thin_check', [option, mine], ref.status);
    compareVerdicts(c, ours, ref, '0.9.0', [option]);
    if (failed(ours)) c.unchanged(mine, sha256, `thin_check ${option} (failed)`);
    return [option];
  }
  const ours = await c.ours('thin_check', [option, mine]);
  if (passed(ours)) {
    await c.accepted(mine, `thin_check ${option}`);
    // Only the space maps are rebuilt: what the reference dumps must not change.
    const before = await c.reference('thin_dump', [input]);
    if (passed(before)) {
      const after = await c.reference('thin_dump', [mine]);
      const strip = (x: Buffer) => x.toString().replace(/ flags="\d+"/, '');
      if (!passed(after) || strip(before.stdout) !== strip(after.stdout)) {
        c.find('mappings-changed', `0.9.0 thin_dump of the metadata after thin_check ${option} differs from before`);
      }
    }
  } else if (failed(ours) && /refused/.test(ours.stderr)) {
    c.unchanged(mine, sha256, `thin_check ${option} (refused)`);
  }
  return [option];
}

async function dump({ c, input, sha256, source, rand }: BinaryCase): Promise<string[]> {
  const devIds = source.map?.devIds ?? [];
  const opts = rand.weighted<string[]>([
    [[], 3],
    [['-f', 'human_readable'], 1],
    [['-m'], 1],
    [['--skip-mappings'], 1],
    [['--dev-id', String(devIds.length ? rand.pick(devIds) : rand.int(5))], 1],
    [['--shared-subtrees'], 1.5],
    [['-o', 'OUT'], 1],
  ]);
  const mineOut = c.file('ours.xml');
  const args = (out: string) => opts.map((o) => (o === 'OUT' ? out : o));
  const ours = await c.ours('thin_dump', [...args(mineOut), input]);
  c.unchanged(input, sha256, 'thin_dump');
  const outputOf = (r: ProcessResult, out: string): Buffer => (opts.includes('OUT') ? readIfThere(out) : r.stdout);

  const checkOpts = opts.includes('-m') ? ['-m'] : [];
  const refCheck = await c.reference('thin_check', [...checkOpts, input]);
  if (!passed(refCheck)) return opts;
  const unlessStricter = (kind: FindingKind, detail: string) => c.unlessOurCheckFails(input, checkOpts, kind, detail);
  if (opts.includes('--shared-subtrees')) {
    // The shared form, restored by us, must give back what the reference dumps of the input.
    const flat = await c.reference('thin_dump', [input]);
    if (!passed(flat) || !passed(ours)) {
      if (passed(flat)) await unlessStricter('refused', `thin_dump --shared-subtrees fails where 0.9.0 dumps: ${lastLines(userText(ours.stderr))}`);
      return opts;
    }
    const xml = c.file('shared.xml');
    fs.writeFileSync(xml, ours.stdout);
    const out = c.emptyOutput('restored.bin', source.metadataBytes);
    const restore = await c.ours('thin_restore', ['-i', xml, '-o', out]);
    if (!passed(restore)) {
      await unlessStricter('unrestorable', `our thin_restore refuses our --shared-subtrees dump: ${lastLines(userText(restore.stderr))}`);
      return opts;
    }
    const back = await c.reference('thin_dump', [out]);
    if (!passed(back) || !back.stdout.equals(flat.stdout)) {
      await unlessStricter('differs', '--shared-subtrees dump restored by us is not what 0.9.0 dumps of the input');
    }
    return opts;
  }
  const theirsOut = c.file('theirs.xml');
  const ref = await c.reference('thin_dump', [...args(theirsOut), input]);
  if (!passed(ref)) return opts;
  if (!passed(ours)) {
    await unlessStricter('refused', `thin_dump ${opts.join(' ')} fails where 0.9.0 checks and dumps: ${lastLines(userText(ours.stderr))}`);
  } else if (!outputOf(ours, mineOut).equals(outputOf(ref, theirsOut))) {
    await unlessStricter('differs', `thin_dump ${opts.join(' ')} output differs from 0.9.0's on metadata 0.9.0 thin_check passes`);
  }
  return opts;
}

function readIfThere(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch {
    return Buffer.alloc(0);
  }
}

/**
 * thin_dump -r: what it prints must be XML both reference thin_restores take, giving metadata
 * both checkers pass. (Only the 1.x restore's output is checked: 0.9.0's thin_restore leaks a
 * metadata block on large pools, so its own check fails what it restores from its own dump.)
 */
async function dumpRepair({ c, input, sha256, source }: BinaryCase): Promise<string[]> {
  const ours = await c.ours('thin_dump', ['-r', input]);
  c.unchanged(input, sha256, 'thin_dump -r');
  if (!passed(ours)) return ['-r'];
  const xml = c.file('repaired.xml');
  fs.writeFileSync(xml, ours.stdout);
  const old = await c.reference('thin_restore', ['-i', xml, '-o', c.emptyOutput('restored-0.9.bin', source.metadataBytes)]);
  if (!passed(old)) c.find('unrestorable', `0.9.0 thin_restore refuses our thin_dump -r output: ${lastLines(old.stderr)}`);
  const out = c.emptyOutput('restored.bin', source.metadataBytes);
  const restore = await c.upstream('thin_restore', ['-i', xml, '-o', out]);
  if (!passed(restore)) {
    c.find('unrestorable', `1.x thin_restore refuses our thin_dump -r output: ${lastLines(restore.stderr)}`);
    return ['-r'];
  }
  await c.accepted(out, 'thin_dump -r (restored by 1.x)');
  return ['-r'];
}

/**
 * thin_repair: the output passes both checkers, and holds at least the mappings the reference
 * thin_repair recovers (both outputs dumped by the reference). Where the source could be dumped,
 * only mappings it held count: a tool that reads values from the wrong place "recovers" blocks
 * that belong to nobody, which is damage, not recovery.
 */
async function repair({ c, input, sha256, source, rand }: BinaryCase): Promise<string[]> {
  const facts = source.map?.facts;
  const opts = facts && rand.chance(0.25)
    ? ['--transaction-id', String(facts.transactionId), '--data-block-size', String(facts.dataBlockSize), '--nr-data-blocks', String(facts.nrDataBlocks)]
    : [];
  const mine = c.emptyOutput('ours.bin', source.metadataBytes);
  const theirs = c.emptyOutput('theirs.bin', source.metadataBytes);
  const ref = await c.reference('thin_repair', ['-i', input, '-o', theirs, ...opts]);
  const ours = await c.ours('thin_repair', ['-i', input, '-o', mine, ...opts], ref.status);
  c.unchanged(input, sha256, 'thin_repair');
  const truth = source.truth?.();
  const count = (xml: string) => (truth ? countTrueMappings(xml, truth) : countMappings(xml));
  const what = truth ? 'of the source\'s mappings' : 'mappings';
  let ourCount = 0;
  if (passed(ours)) {
    await c.accepted(mine, 'thin_repair');
    const d = await c.reference('thin_dump', [mine]);
    if (passed(d)) ourCount = count(d.stdout.toString());
  }
  if (passed(ref)) {
    const d = await c.reference('thin_dump', [theirs]);
    if (passed(d)) {
      const refCount = count(d.stdout.toString());
      c.recovered = { ours: ourCount, reference: refCount };
      if (ourCount < refCount) {
        c.find('recovered-fewer', `our thin_repair recovered ${ourCount} ${what}, 0.9.0 ${refCount}` +
          (passed(ours) ? '' : ` (ours failed: ${lastLines(userText(ours.stderr))})`));
      }
    }
  }
  return opts.length ? ['--transaction-id', '--data-block-size', '--nr-data-blocks'] : [];
}

export interface XmlCase {
  c: CaseRun;
  xml: string;
  sha256: string;
  /** The unmutated XML is the shared form, which 0.9.0 can't read. */
  shared: boolean;
  metadataBytes: number;
}

/** thin_restore of mutated XML: a one-line error, or metadata both checkers pass. */
export async function runRestore({ c, xml, sha256, shared, metadataBytes }: XmlCase): Promise<void> {
  const mine = c.emptyOutput('ours.bin', metadataBytes);
  const ours = await c.ours('thin_restore', ['-i', xml, '-o', mine]);
  c.unchanged(xml, sha256, 'thin_restore');
  if (passed(ours)) {
    await c.accepted(mine, 'thin_restore');
    if (!shared) {
      const theirs = c.emptyOutput('theirs.bin', metadataBytes);
      const ref = await c.reference('thin_restore', ['-i', xml, '-o', theirs]);
      if (failed(ref)) c.find('restore-looser', `0.9.0 thin_restore refuses it (${lastLines(ref.stderr)}), ours accepts`);
    }
  } else if (failed(ours)) {
    const lines = userText(ours.stderr).trim().split('\n');
    if (lines.length !== 1 || !lines[0]) c.find('not-one-line', `thin_restore says ${lines.length} lines: ${lines.slice(0, 3).join(' | ')}`);
  }
}

/** Values for an option that takes a number (with thin_metadata_size's unit letters) or a word. */
const OPTION_TEXT = ['', ' ', '-', '--', '-1', 'abc', 'xml', 'human_readable', 'json', '1k', '64k', '1.5k', '1 k', '\u00e9', 'k', '1x', '9'.repeat(400), '0x', '=1'];
/** 0.9.0's units (the 1.x spellings we also take would only show that 0.9.0 does not). */
const UNITS = ['', 'b', 's', 'k', 'K', 'm', 'M', 'g', 'G', 't', 'T', 'p', 'P', 'e', 'E', 'z', 'Z', 'y', 'Y', 'kib', 'mega', 'sectors'];

export interface OptionCase {
  c: CaseRun;
  /** An unmutated image and XML, for the tools that read one. */
  image: string;
  imageSha256: string;
  xml: string;
  metadataBytes: number;
  rand: Rand;
}

/** One option of one tool, given a value at or past its limits: a crash or hang is a finding. */
export async function runOptions(kind: (typeof OPTION_MUTATIONS)[number], { c, image, imageSha256, xml, metadataBytes, rand }: OptionCase): Promise<string[]> {
  const value = kind === 'option-text' ? rand.pick(OPTION_TEXT) : rand.pick(LIMITS.filter((v) => /^-?\d+$/.test(v)));
  const [tool, option] = rand.pick([
    ['thin_check', '--override-mapping-root'], ['thin_check', '--override-details-root'],
    ['thin_dump', '--dev-id'], ['thin_dump', '-m'], ['thin_dump', '--metadata-snap='], ['thin_dump', '-f'],
    ['thin_dump', '--transaction-id'], ['thin_dump', '--data-block-size'], ['thin_dump', '--nr-data-blocks'],
    ['thin_repair', '--transaction-id'], ['thin_repair', '--data-block-size'], ['thin_repair', '--nr-data-blocks'],
    ['thin_restore', '--transaction-id'], ['thin_restore', '--data-block-size'], ['thin_restore', '--nr-data-blocks'],
    ['thin_metadata_size', '-b'], ['thin_metadata_size', '-s'], ['thin_metadata_size', '-m'], ['thin_metadata_size', '-u'],
    ['thin_metadata_size', '-n'],
  ] as const);
  // Attached (getopt's optional argument) or separate.
  const given = option.endsWith('=') || option === '-m' && tool === 'thin_dump' ? [`${option}${value}`] : [option, value];
  const shown = [tool, ...given];
  switch (tool) {
    case 'thin_check':
    case 'thin_dump': {
      const r = await c.ours(tool, [...given, image]);
      c.unchanged(image, imageSha256, tool);
      oneLineIfFailed(c, r, shown);
      return shown;
    }
    case 'thin_repair': {
      const out = c.emptyOutput('ours.bin', metadataBytes);
      const r = await c.ours(tool, ['-i', image, '-o', out, ...given]);
      c.unchanged(image, imageSha256, tool);
      if (passed(r)) await c.accepted(out, `thin_repair ${given.join(' ')}`);
      else oneLineIfFailed(c, r, shown);
      return shown;
    }
    case 'thin_restore': {
      const out = c.emptyOutput('ours.bin', metadataBytes);
      const r = await c.ours(tool, ['-i', xml, '-o', out, ...given]);
      if (passed(r)) await c.accepted(out, `thin_restore ${given.join(' ')}`);
      else oneLineIfFailed(c, r, shown);
      return shown;
    }
    case 'thin_metadata_size': {
      // The others valid, the one under test given a value (a number with a unit now and then).
      const v = kind === 'option-number' && option !== '-n' && rand.chance(0.5) ? `${value}${rand.pick(UNITS)}` : value;
      const args: Record<string, string> = { '-b': '64k', '-s': '1t', '-m': '1000' };
      const argv = [...Object.entries(args).filter(([o]) => o !== option).flat(), option, v];
      const ref = await c.reference(tool, argv);
      const ours = await c.ours(tool, argv, ref.status);
      if (!ref.signal && !ref.timedOut && (ours.status !== ref.status || !ours.stdout.equals(ref.stdout))) {
        c.find('size-differs', `thin_metadata_size ${argv.join(' ')}: exit ${ours.status} ${JSON.stringify(ours.stdout.toString().trim())}, 0.9.0 exit ${ref.status} ${JSON.stringify(ref.stdout.toString().trim())}`);
      }
      return [tool, option, v];
    }
  }
}

/** A refusal is one line naming the problem (commander's help hint aside). */
function oneLineIfFailed(c: CaseRun, r: ProcessResult, shown: string[]): void {
  if (!failed(r)) return;
  const lines = userText(r.stderr).trim().split('\n').filter((l) => l && !/^\(?(Usage|Try|run with)/i.test(l));
  if (lines.length === 0) c.find('not-one-line', `${shown.join(' ')}: exit 1 without a word`);
}
