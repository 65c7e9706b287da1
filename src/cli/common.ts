// What every command shares: one-line errors without stack traces, exit codes, version, progress.
import { createRequire } from 'node:module';
import { Command, CommanderError } from 'commander';
import cliProgress from 'cli-progress';
import { SuperblockOverrides } from '../thin/events.js';

export const TOOLS_VERSION: string = (
  createRequire(import.meta.url)('../../package.json') as { version: string }
).version;

/** An error already phrased for the user; printed as one line, exit status `status`. */
export class UsageError extends Error {
  constructor(message: string, readonly status = 1) {
    super(message);
  }
}

/**
 * Runs a command's main function: prints any error as one line on stderr and exits non-zero.
 * Stack traces are never shown (set THIN_TOOLS_DEBUG=1 to see them).
 */
export async function runTool(name: string, main: (argv: string[]) => Promise<number> | number): Promise<void> {
  let status: number;
  try {
    status = await main(process.argv.slice(2));
  } catch (e) {
    if (e instanceof CommanderError) {
      status = e.exitCode === 0 ? 0 : 1;
    } else {
      const err = e as Error;
      if (process.env.THIN_TOOLS_DEBUG) console.error(err.stack);
      process.stderr.write(`${name}: ${err.message.split('\n')[0]}\n`);
      status = e instanceof UsageError ? e.status : 1;
    }
  }
  process.exitCode = status;
}

/** A commander program with the suite's conventions: -h/--help, -V/--version, usage errors exit 1. */
export function newProgram(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .version(TOOLS_VERSION, '-V, --version', 'print the version')
    .helpOption('-h, --help', 'print this help')
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(`${name}: ${str.replace(/^error: /, '')}`) });
}

/** Parses a non-negative integer option ("natural" in the reference tools' help). */
export function parseNatural(value: string, what: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`${what}: '${value}' is not a non-negative integer`);
  }
  return Number(value);
}

/** Adds --transaction-id, --data-block-size and --nr-data-blocks; `source` says what they override. */
export function withOverrideOptions(program: Command, source: string): Command {
  return program
    .option('--transaction-id <natural>', `override the transaction id ${source}`)
    .option('--data-block-size <sectors>', `override the data block size ${source}`)
    .option('--nr-data-blocks <natural>', `override the number of data blocks ${source}`);
}

/** The raw values of the options withOverrideOptions adds. */
export interface OverrideFlags {
  transactionId?: string;
  dataBlockSize?: string;
  nrDataBlocks?: string;
}

/** The overrides given on the command line, checked to be non-negative integers. */
export function overridesFrom(o: OverrideFlags): SuperblockOverrides {
  const natural = (v: string | undefined, what: string) => (v === undefined ? undefined : parseNatural(v, what));
  return {
    transactionId: natural(o.transactionId, '--transaction-id'),
    dataBlockSize: natural(o.dataBlockSize, '--data-block-size'),
    nrDataBlocks: natural(o.nrDataBlocks, '--nr-data-blocks'),
  };
}

/** Progress reporter; a no-op unless stderr is a terminal and the user didn't ask for quiet. */
export interface Progress {
  update(done: number): void;
  stop(): void;
}

export function progressBar(label: string, total: number, quiet: boolean): Progress {
  if (quiet || !process.stderr.isTTY || total <= 0) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% | {value}/{total}`, stream: process.stderr, clearOnComplete: true, fps: 5 },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  return { update: (done) => bar.update(done), stop: () => bar.stop() };
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
      snapBlock = parseNatural(m[1], 'metadata snapshot block');
      out.push('-m');
      continue;
    }
    out.push(a);
  }
  return { argv: out, snapBlock };
}
