// One definition of every option's value: the range it takes and the one-line error for anything
// else, used by every tool that has the option. Values are checked as the command line is parsed,
// so a bad one stops the tool before any work.
import { Command } from 'commander';
import { U64, U64_MAX, parseU64 } from '../pdata/le.js';
import { MAX_DATA_BLOCK_SIZE, MIN_DATA_BLOCK_SIZE, validDataBlockSize } from '../thin/superblock.js';
import { UsageError } from './common.js';

/** A u64 (a transaction id, a number of data blocks, a device id): 0 to 2^64-1, exact. */
export function u64Value(option: string, value: string): U64 {
  const v = parseU64(value);
  if (v === null) throw new UsageError(`${option}: '${value}' is not a whole number from 0 to ${U64_MAX}`);
  return v;
}

/** A count or a seed: a whole number below 2^53. */
export function countValue(option: string, value: string): number {
  const v = parseU64(value);
  if (typeof v !== 'number') throw new UsageError(`${option}: '${value}' is not a whole number below 2^53`);
  return v;
}

/** A metadata block number (any real one is far below 2^53; past the device's end is found later). */
export function blockValue(option: string, value: string): number {
  const v = parseU64(value);
  if (typeof v !== 'number') throw new UsageError(`${option}: '${value}' is not a metadata block number`);
  return v;
}

/**
 * -m takes its block only attached (`-m5`, `--metadata-snap=5`), as with getopt's optional
 * arguments; commander would swallow a following path instead, so attached blocks are taken out
 * here and -m is left as a plain flag. `takesValue`: the command's options that take a separate
 * value, so a value is never mistaken for -m.
 */
export function extractSnapBlock(argv: string[], takesValue: ReadonlySet<string>): { argv: string[]; snapBlock?: number } {
  const out: string[] = [];
  let snapBlock: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (takesValue.has(a)) {
      out.push(a);
      if (i + 1 < argv.length) out.push(argv[++i]);
      continue;
    }
    const m = /^(?:-m|--metadata-snap=)(.*)$/s.exec(a);
    if (m && m[1] !== '') {
      snapBlock = blockValue('--metadata-snap', m[1]);
      out.push('-m');
      continue;
    }
    out.push(a);
  }
  return { argv: out, snapBlock };
}

/** A data block size in sectors, as the kernel takes it. */
export function dataBlockSizeValue(value: string): number {
  const v = parseU64(value);
  if (typeof v !== 'number' || !validDataBlockSize(v)) {
    throw new UsageError(
      `--data-block-size: '${value}' is not a multiple of ${MIN_DATA_BLOCK_SIZE} sectors from ${MIN_DATA_BLOCK_SIZE} to ${MAX_DATA_BLOCK_SIZE}`,
    );
  }
  return v;
}

/** Adds --transaction-id, --data-block-size and --nr-data-blocks; `source` says what they override. */
export function withOverrideOptions(program: Command, source: string): Command {
  return program
    .option('--transaction-id <natural>', `override the transaction id ${source}`, (v) => u64Value('--transaction-id', v))
    .option('--data-block-size <sectors>', `override the data block size ${source}`, dataBlockSizeValue)
    .option('--nr-data-blocks <natural>', `override the number of data blocks ${source}`, (v) => u64Value('--nr-data-blocks', v));
}

/**
 * Refuses options given together that cannot be honoured together, in the 1.x tools' words (each
 * pair by long names). An option ignored in silence would let the user believe it took effect.
 */
export function refuseConflicts(program: Command, pairs: [string, string][]): void {
  const given = (long: string): boolean => {
    const option = program.options.find((o) => o.long === long);
    if (!option) throw new Error(`no option ${long}`);
    return program.getOptionValue(option.attributeName()) !== undefined;
  };
  for (const [a, b] of pairs) {
    if (given(a) && given(b)) throw new UsageError(`the argument '${a}' cannot be used with '${b}'`);
  }
}

