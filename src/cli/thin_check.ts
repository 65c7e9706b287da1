// thin_check: validate a pool's metadata (options, output and exit codes as the reference tools).
import { openMetadataInput } from '../io/open.js';
import { checkMetadata, clearNeedsCheckFlag, CheckEvent } from '../tools/check.js';
import { RepairRefusedError, repairSpaceMaps } from '../tools/check-repair.js';
import { NEEDS_CHECK_FLAG } from '../thin/superblock.js';
import { Progress, newProgram, progressBar, runTool } from './common.js';
import { blockValue, refuseConflicts } from './options.js';

const NAME = 'thin_check';

interface Flags {
  quiet?: boolean;
  metadataSnap?: boolean;
  superBlockOnly?: boolean;
  skipMappings?: boolean;
  ignoreNonFatalErrors?: boolean;
  clearNeedsCheckFlag?: boolean;
  autoRepair?: boolean;
  overrideMappingRoot?: number;
  overrideDetailsRoot?: number;
}

void runTool(NAME, (argv) => {
  const program = newProgram(NAME, 'Validates thin provisioning metadata on a device or file.')
    .argument('<input>', 'metadata device or file')
    .option('-q, --quiet', 'suppress output messages, return only exit code')
    .option('-m, --metadata-snap', 'check the held metadata snapshot instead of the live metadata')
    .option('--super-block-only', 'only check the superblock')
    .option('--skip-mappings', "don't check the mappings of each device")
    .option('--ignore-non-fatal-errors', "don't fail on leaked blocks")
    .option('--clear-needs-check-flag', 'clear the needs_check flag if the check passes')
    .option('--auto-repair', 'rewrite the space maps when only their counts are wrong (leaks included)')
    .option('--override-mapping-root <block>', 'check the mapping tree at this block instead', (v) => blockValue('--override-mapping-root', v))
    .option('--override-details-root <block>', 'check the device details tree at this block instead', (v) => blockValue('--override-details-root', v));
  program.parse(argv, { from: 'user' });
  const flags = program.opts<Flags>();
  const input = program.args[0];

  // Both write the live metadata, after a check of all of it.
  refuseConflicts(program, [
    ...['--metadata-snap', '--override-mapping-root', '--override-details-root', '--super-block-only', '--skip-mappings', '--ignore-non-fatal-errors']
      .map((other): [string, string] => ['--auto-repair', other]),
    ...['--metadata-snap', '--override-mapping-root', '--override-details-root']
      .map((other): [string, string] => ['--clear-needs-check-flag', other]),
  ]);

  // As in 0.9.0, the later of --super-block-only and --skip-mappings says how far the check goes.
  if (flags.superBlockOnly && flags.skipMappings) {
    if (argv.lastIndexOf('--skip-mappings') > argv.lastIndexOf('--super-block-only')) flags.superBlockOnly = false;
    else flags.skipMappings = false;
  }

  const quiet = !!flags.quiet;
  let bar: Progress | undefined;
  const stopBar = (): void => {
    bar?.stop();
    bar = undefined;
  };
  const onEvent = (e: CheckEvent): void => {
    if (quiet) return;
    if (e.kind === 'info') {
      process.stdout.write(`TRANSACTION_ID=${e.transactionId}\nMETADATA_FREE_BLOCKS=${e.metadataFreeBlocks}\n`);
      return;
    }
    stopBar();
    const indent = e.kind === 'stage' ? '' : '  '.repeat(e.depth);
    process.stderr.write(`${indent}${e.kind === 'stage' ? e.title : e.message}\n`);
  };

  const io = openMetadataInput(input);
  let result;
  try {
    result = checkMetadata(io, {
      superBlockOnly: flags.superBlockOnly,
      skipMappings: flags.skipMappings,
      ignoreNonFatal: flags.ignoreNonFatalErrors,
      metadataSnap: flags.metadataSnap,
      overrideMappingRoot: flags.overrideMappingRoot,
      overrideDetailsRoot: flags.overrideDetailsRoot,
      onEvent,
      onProgress: (p) => {
        bar ??= progressBar('checking', p.total, quiet);
        bar.update(p.done);
      },
    });
  } finally {
    stopBar();
    io.close();
  }

  if (flags.autoRepair && (result.fatalErrors > 0 || result.nonFatalErrors > 0)) {
    return autoRepair(input, quiet);
  }
  if (!result.ok) return 1;
  if ((flags.clearNeedsCheckFlag || flags.autoRepair) && result.superblock && (result.superblock.flags & NEEDS_CHECK_FLAG) !== 0) {
    clearNeedsCheckFlag(input);
    if (!quiet) process.stderr.write('Cleared needs_check flag\n');
  }
  return 0;
});

function autoRepair(input: string, quiet: boolean): number {
  const say = (line: string): void => {
    if (!quiet) process.stderr.write(`${line}\n`);
  };
  let r;
  try {
    r = repairSpaceMaps(input);
  } catch (e) {
    if (!(e instanceof RepairRefusedError)) throw e;
    say(`auto-repair refused, the metadata is unchanged: ${e.message}`);
    return 1;
  }
  say(`repaired the space maps (${r.countsChanged.metadata} metadata and ${r.countsChanged.data} data block counts set right, ` +
    `${r.blocksWritten} metadata blocks written): metadata blocks allocated ${r.metadataAllocated.before} -> ${r.metadataAllocated.after}, ` +
    `data blocks allocated ${r.dataAllocated.before} -> ${r.dataAllocated.after}`);
  if (r.clearedNeedsCheck) say('Cleared needs_check flag');
  if (!r.recheck.ok) say('the repaired metadata still fails the check');
  return r.recheck.ok ? 0 : 1;
}
