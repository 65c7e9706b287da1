// What every command shares: one-line errors without stack traces, exit codes, version, progress.
import { createRequire } from 'node:module';
import { Command, CommanderError } from 'commander';
import { OutputClosedError } from '../formats/output.js';

export const TOOLS_VERSION: string = (
  createRequire(import.meta.url)('../../package.json') as { version: string }
).version;

/** A command line the tool cannot run; printed as one line, exit status 1. */
export class UsageError extends Error {}

/**
 * The reader of standard output went away (`thin_dump | head -1`, as lvconvert reads it): end
 * silently, killed by SIGPIPE as the 0.9.0 tools are (docs/decisions.md). Node ignores SIGPIPE;
 * adding and removing a listener puts back the default action.
 */
function endByClosedPipe(): void {
  process.exitCode = 1;
  const ignore = (): void => {};
  process.on('SIGPIPE', ignore);
  process.off('SIGPIPE', ignore);
  process.kill(process.pid, 'SIGPIPE');
}

/**
 * Runs a command's main function: prints any error as one line on stderr and exits 1 (never 2,
 * which lvm2 takes for "thin_check is not installed" and skips the check). Stack traces are never
 * shown (set THIN_TOOLS_DEBUG=1 to see them).
 */
export async function runTool(name: string, main: (argv: string[]) => Promise<number> | number): Promise<void> {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') return endByClosedPipe();
    process.stderr.write(`${name}: standard output: ${e.message}\n`);
    process.exit(1);
  });
  let status: number;
  try {
    status = await main(process.argv.slice(2));
  } catch (e) {
    if (e instanceof OutputClosedError) return endByClosedPipe();
    if (e instanceof CommanderError) {
      status = e.exitCode === 0 ? 0 : 1;
    } else {
      const err = e as Error;
      if (process.env.THIN_TOOLS_DEBUG) console.error(err.stack);
      process.stderr.write(`${name}: ${err.message.split('\n')[0]}\n`);
      status = 1;
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

/** Progress reporter; a no-op unless stderr is a terminal and the user didn't ask for quiet. */
export interface Progress {
  update(done: number): void;
  stop(): void;
}

export function progressBar(label: string, total: number, quiet: boolean): Progress {
  if (quiet || !process.stderr.isTTY || total <= 0) return { update() {}, stop() {} };
  // Loaded only when a bar is shown: cli-progress and the modules under it cost about 10 ms of
  // start-up, which lvm2 would otherwise pay at every pool activation (docs/benchmarks.md).
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof import('cli-progress');
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% | {value}/{total}`, stream: process.stderr, clearOnComplete: true, fps: 5 },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  return { update: (done) => bar.update(done), stop: () => bar.stop() };
}

/** Below this many mappings a run is over before a progress bar would be seen. */
const MAPPINGS_WORTH_A_BAR = 1_000_000;

/**
 * Progress of a tool that prints to standard output: a bar on stderr when it is a terminal,
 * the output is not that terminal, the work is large and the user didn't ask for quiet.
 */
export function mappingProgress(label: string, quiet: boolean): { onProgress?: (done: number, total: number) => void; stop(): void } {
  if (quiet || process.stdout.isTTY) return { stop() {} };
  let bar: Progress | undefined;
  return {
    onProgress: (done, total) => {
      bar ??= progressBar(label, total >= MAPPINGS_WORTH_A_BAR ? total : 0, false);
      bar.update(Math.min(done, total));
    },
    stop: () => bar?.stop(),
  };
}
