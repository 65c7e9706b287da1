// thin_metadata_size: estimates the metadata device size for a pool.
//
// Administrators and scripts (lvm, installers) parse this tool's output, so its numbers, text and
// exit codes follow the reference 0.9.0 tool exactly, including its arithmetic quirks: sizes are
// unsigned 64-bit values that wrap, the estimate is a C double, and printing a double too large for
// a u64 gives 0 as it does on x86-64. Option parsing follows glibc getopt_long (attached optional
// arguments, abbreviated long options, non-options ignored) for the same reason, which is why this
// tool does not use commander. Unit spellings of the 1.x tools (KiB, MB, exbibyte, ...) are
// accepted as well.

const U64 = (1n << 64n) - 1n;
const I64_MAX = (1n << 63n) - 1n;

/** The reference's unit table: one-letter specifiers and their long names, index for index. */
const UNIT_CHARS = 'bskKmMgGtTpPeEzZyY';
const UNIT_NAMES = [
  'bytes', 'sectors',
  'kibibytes', 'kilobytes', 'mebibytes', 'megabytes', 'gibibytes', 'gigabytes',
  'tebibytes', 'terabytes', 'pebibytes', 'petabytes', 'ebibytes', 'exabytes',
  'zebibytes', 'zetabytes', 'yobibytes', 'yottabytes',
];
const SECTORS = 1;

/** Factors in bytes, computed in u64 as the reference does (so zebi- and yobibytes wrap to 0). */
const UNIT_FACTORS: bigint[] = (() => {
  const f = [1n, 512n, 1024n, 1000n];
  for (let u = 4; u < UNIT_NAMES.length; u += 2) {
    f[u] = (f[u - 2] * f[2]) & U64;
    f[u + 1] = (f[u - 1] * f[3]) & U64;
  }
  return f;
})();

/** 1.x spellings that are not prefixes of a 0.9 name, mapped to the 0.9 unit letter. */
const UNIT_ALIASES_1X: Record<string, string> = {
  KiB: 'k', MiB: 'm', GiB: 'g', TiB: 't', PiB: 'p', EiB: 'e', exbibyte: 'e',
  kB: 'K', MB: 'M', GB: 'G', TB: 'T', PB: 'P', EB: 'E',
};

/** A unit by one letter, or by a (possibly empty) prefix of its long name as 0.9 matches it. */
function unitIndex(spec: string): number {
  if (spec.length === 1) return UNIT_CHARS.indexOf(spec);
  const byName = UNIT_NAMES.findIndex((name) => name.startsWith(spec));
  if (byName >= 0) return byName;
  const alias = UNIT_ALIASES_1X[spec];
  return alias === undefined ? -1 : UNIT_CHARS.indexOf(alias);
}

/** A problem with the command line; `status` is always 1, like the reference. */
export class MetadataSizeError extends Error {}

type SizeOption = 'blockSize' | 'poolSize' | 'maxThins';
export type NumericOutput = 'none' | 'plain' | 'short' | 'long';

export interface EstimateRequest {
  /** Data block size in sectors. */
  blockSize: bigint;
  /** Pool size in sectors. */
  poolSize: bigint;
  maxThins: bigint;
  /** Index into the unit table of the output unit. */
  unit: number;
  numeric: NumericOutput;
  /** How each size option is echoed in the long output ("64kibibytes", "1000"). */
  echo: Record<SizeOption, string>;
}

export type MetadataSizeCommand =
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'estimate'; request: EstimateRequest };

/** glibc atoll on a run of digits: saturates at the i64 maximum instead of failing. */
function atoll(digits: string): bigint {
  if (digits === '') return 0n;
  const n = BigInt(digits);
  return n > I64_MAX ? I64_MAX : n;
}

/**
 * Parses a size argument: digits then an optional unit. Block and pool sizes come back in
 * sectors; max thins as a plain count (a unit there just multiplies, "1k" = 1024).
 */
function parseSize(
  arg: string,
  option: SizeOption,
  outputUnit: number,
): { value: bigint; echo: string } {
  const digits = /^[0-9]*/.exec(arg)![0];
  const unitSpec = arg.slice(digits.length);
  let idx = SECTORS;
  if (unitSpec !== '') {
    idx = unitIndex(unitSpec);
    if (idx < 0) throw new MetadataSizeError('Invalid unit specifier!');
  }
  const bytes = (atoll(digits) * UNIT_FACTORS[idx]) & U64;
  const value = unitSpec === '' || option !== 'maxThins' ? bytes / UNIT_FACTORS[SECTORS] : bytes;
  // The reference names a unit-less size by the output unit chosen so far (a quirk users see).
  const echo =
    unitSpec !== '' ? digits + UNIT_NAMES[idx]
    : option === 'maxThins' ? digits
    : digits + UNIT_NAMES[outputUnit];
  return { value, echo };
}

interface LongOption {
  name: string;
  letter: string;
  arg: 'none' | 'required' | 'optional';
}

const LONG_OPTIONS: LongOption[] = [
  { name: 'block-size', letter: 'b', arg: 'required' },
  { name: 'pool-size', letter: 's', arg: 'required' },
  { name: 'max-thins', letter: 'm', arg: 'required' },
  { name: 'unit', letter: 'u', arg: 'required' },
  { name: 'numeric-only', letter: 'n', arg: 'optional' },
  { name: 'help', letter: 'h', arg: 'none' },
  { name: 'version', letter: 'V', arg: 'none' },
];

/** Parses the command line in order, stopping at the first error, -h or -V as the reference does. */
export function parseMetadataSizeArgs(argv: string[]): MetadataSizeCommand {
  const sizes: Record<SizeOption, bigint> = { blockSize: 0n, poolSize: 0n, maxThins: 0n };
  const echo: Record<SizeOption, string> = { blockSize: '', poolSize: '', maxThins: '' };
  let unit = SECTORS;
  let numeric: NumericOutput = 'none';

  /** Applies one option; returns a command when the option ends parsing (-h, -V). */
  const apply = (letter: string, value: string | undefined): MetadataSizeCommand | undefined => {
    switch (letter) {
      case 'b':
      case 's':
      case 'm': {
        const option: SizeOption = letter === 'b' ? 'blockSize' : letter === 's' ? 'poolSize' : 'maxThins';
        // A size of 0 counts as not given, so "-b 0 -b 128" is accepted like the reference.
        if (sizes[option] !== 0n) throw new MetadataSizeError('option already given!');
        const parsed = parseSize(value!, option, unit);
        sizes[option] = parsed.value;
        echo[option] = parsed.echo;
        return undefined;
      }
      case 'u': {
        const idx = unitIndex(value!);
        if (idx < 0) throw new MetadataSizeError('output unit specifier invalid!');
        unit = idx;
        return undefined;
      }
      case 'n':
        if (numeric !== 'none') throw new MetadataSizeError('-n already given!');
        numeric = 'plain';
        if (value !== undefined) {
          const isLong = 'long'.startsWith(value);
          if (value === '' || (!'short'.startsWith(value) && !isLong)) {
            throw new MetadataSizeError('-n invalid option argument');
          }
          numeric = isLong ? 'long' : 'short';
        }
        return undefined;
      case 'h':
        return { kind: 'help' };
      default:
        return { kind: 'version' };
    }
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') break;
    if (!arg.startsWith('-') || arg === '-') continue; // non-options are ignored
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      const exact = LONG_OPTIONS.find((o) => o.name === name);
      const matches = exact ? [exact] : LONG_OPTIONS.filter((o) => o.name.startsWith(name));
      if (matches.length === 0) throw new MetadataSizeError(`unrecognized option '${arg}'`);
      if (matches.length > 1) throw new MetadataSizeError(`option '${arg}' is ambiguous`);
      const opt = matches[0];
      let value: string | undefined = eq < 0 ? undefined : arg.slice(eq + 1);
      if (opt.arg === 'none' && value !== undefined) {
        throw new MetadataSizeError(`option '--${opt.name}' doesn't allow an argument`);
      }
      if (opt.arg === 'required' && value === undefined) {
        if (i + 1 >= argv.length) throw new MetadataSizeError(`option '--${opt.name}' requires an argument`);
        value = argv[++i];
      }
      const done = apply(opt.letter, value);
      if (done) return done;
      continue;
    }
    // A cluster of short options: "-nlong", "-b64k", "-hV".
    for (let j = 1; j < arg.length; j++) {
      const letter = arg[j];
      const opt = LONG_OPTIONS.find((o) => o.letter === letter);
      if (!opt) throw new MetadataSizeError(`invalid option -- '${letter}'`);
      let value: string | undefined;
      if (opt.arg !== 'none') {
        const rest = arg.slice(j + 1);
        if (rest !== '') value = rest;
        else if (opt.arg === 'required') {
          if (i + 1 >= argv.length) throw new MetadataSizeError(`option requires an argument -- '${letter}'`);
          value = argv[++i];
        }
      }
      const done = apply(letter, value);
      if (done) return done;
      if (value !== undefined) break;
    }
  }

  if (sizes.blockSize === 0n) throw new MetadataSizeError('block size required!');
  if (sizes.poolSize === 0n) throw new MetadataSizeError('pool size required!');
  if (sizes.maxThins === 0n) throw new MetadataSizeError('max thins required!');
  if ((sizes.blockSize & (sizes.blockSize - 1n)) !== 0n) throw new MetadataSizeError('block size must be 2^^N');
  if (sizes.poolSize <= sizes.blockSize) {
    throw new MetadataSizeError('pool size must be larger than block size');
  }
  return { kind: 'estimate', request: { ...sizes, unit, numeric, echo } };
}

/** Mappings in one fully packed mapping-tree leaf: (4096 - 64 byte header) / 16 byte entries. */
const MAPPINGS_PER_BLOCK = 252n;

/**
 * The estimate in the requested unit: one 4 KiB block per mapping leaf, doubled because leaves
 * are about half full on average, plus one per thin device, plus the superblock.
 */
export function estimateMetadataSize(req: EstimateRequest): number {
  const leaves = ((2n * req.poolSize) & U64) / req.blockSize / MAPPINGS_PER_BLOCK;
  const blocks = 1.0 + Number((leaves + req.maxThins) & U64);
  return (blocks * 4096) / Number(UNIT_FACTORS[req.unit]);
}

/** Formats the estimate as the reference prints it, e.g. `prg - 1073224 sectors estimated ...`. */
export function formatEstimate(prg: string, req: EstimateRequest, size: number): string {
  const full = req.numeric === 'none';
  let out = full ? `${prg} - ` : '';
  const whole = Math.floor(size);
  if (size === whole) out += cU64(size);
  else out += size - whole < 1e-2 ? cExp2(size) : cFixed2(size);
  if (full) out += ` ${UNIT_NAMES[req.unit]}`;
  else if (req.numeric === 'short') out += UNIT_CHARS[req.unit];
  else if (req.numeric === 'long') out += UNIT_NAMES[req.unit];
  if (full) {
    out +=
      ` estimated metadata area size for "--block-size=${req.echo.blockSize}` +
      ` --pool-size=${req.echo.poolSize} --max-thins=${req.echo.maxThins}"`;
  }
  return `${out}\n`;
}

export function helpText(prg: string): string {
  const units = (mandatory: boolean) => (mandatory ? `{${UNIT_CHARS}}` : `[${UNIT_CHARS}]`);
  const line = (short: string, long: string, what: string) => `\t${short.padEnd(4)}${long.padEnd(44)}${what}\n`;
  return (
    `Thin Provisioning Metadata Device Size Calculator.\nUsage: ${prg} [options]\n` +
    line('-b', `--block-size BLOCKSIZE${units(false)}`, 'Block size of thin provisioned devices.') +
    line('-s', `--pool-size SIZE${units(false)}`, 'Size of pool device.') +
    line('-m', `--max-thins #MAXTHINS${units(false)}`, 'Maximum sum of all thin devices and snapshots.') +
    line('-u', `--unit ${units(true)}`, 'Output unit specifier.') +
    line('-n', '--numeric-only [short|long]', 'Output numeric value only (optionally with short/long unit identifier).') +
    line('-h', '--help', 'This help.') +
    line('-V', '--version', 'Print thin provisioning tools version.')
  );
}

// --- C printf of a double, exactly: glibc rounds the exact binary value half to even. ---

/** x = mantissa * 2^exponent exactly, for a finite x > 0. */
function decompose(x: number): { mantissa: bigint; exponent: number } {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const hi = view.getUint32(0);
  const biased = (hi >>> 20) & 0x7ff;
  const fraction = (BigInt(hi & 0xfffff) << 32n) | BigInt(view.getUint32(4));
  return biased === 0
    ? { mantissa: fraction, exponent: -1074 }
    : { mantissa: fraction | (1n << 52n), exponent: biased - 1075 };
}

/** round(x * 10^scale) half to even, exactly. */
function scaledRound(x: number, scale: number): bigint {
  const { mantissa, exponent } = decompose(x);
  let num = mantissa;
  let den = 1n;
  if (exponent >= 0) num <<= BigInt(exponent);
  else den <<= BigInt(-exponent);
  if (scale >= 0) num *= 10n ** BigInt(scale);
  else den *= 10n ** BigInt(-scale);
  const q = num / den;
  const twiceRem = 2n * (num % den);
  return twiceRem > den || (twiceRem === den && (q & 1n) === 1n) ? q + 1n : q;
}

/** printf("%llu", (unsigned long long) x) on x86-64: out-of-range values convert to 0. */
function cU64(x: number): string {
  return Number.isFinite(x) && x < 2 ** 64 ? BigInt(x).toString() : '0';
}

/** printf("%0.2f", x) for x > 0. */
function cFixed2(x: number): string {
  const hundredths = scaledRound(x, 2);
  return `${hundredths / 100n}.${(hundredths % 100n).toString().padStart(2, '0')}`;
}

/** printf("%0.2e", x) for finite x > 0. */
function cExp2(x: number): string {
  let e = Math.floor(Math.log10(x));
  // log10 may be off by one near powers of ten; settle the exponent on the rounded digits.
  let digits = scaledRound(x, 2 - e);
  while (digits >= 1000n) digits = scaledRound(x, 2 - ++e);
  while (digits < 100n) digits = scaledRound(x, 2 - --e);
  const s = digits.toString();
  const sign = e < 0 ? '-' : '+';
  return `${s[0]}.${s.slice(1)}e${sign}${Math.abs(e).toString().padStart(2, '0')}`;
}
