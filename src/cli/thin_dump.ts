// thin_dump: print thin-pool metadata as XML (for thin_restore) or as human-readable text.
import { Option } from 'commander';
import { U64 } from '../pdata/le.js';
import { SuperblockOverrides, overridesIn } from '../thin/events.js';
import { DAMAGE_MESSAGE, DUMP_FORMATS, DumpFormat, MetadataDamageError, dumpMetadata } from '../tools/dump.js';
import { Progress, newProgram, progressBar, runTool } from './common.js';
import { extractSnapBlock, refuseConflicts, u64Value, withOverrideOptions } from './options.js';

/** Below this many mappings a dump is over before a progress bar would be seen. */
const PROGRESS_THRESHOLD = 1_000_000;

/** Options that take a separate value, so the -m scan doesn't mistake a value for an option. */
const TAKES_VALUE = new Set(['-f', '--format', '-o', '--output', '--dev-id', '--transaction-id', '--data-block-size', '--nr-data-blocks']);

async function main(rawArgv: string[]): Promise<number> {
  const { argv, snapBlock } = extractSnapBlock(rawArgv, TAKES_VALUE);
  const base = newProgram('thin_dump', 'Dump thin-provisioning metadata to standard output or a file.')
    .argument('<input>', 'metadata device or file')
    .addOption(new Option('-f, --format <format>', 'output format').choices(DUMP_FORMATS).default('xml'))
    .option('-m, --metadata-snap', 'dump the metadata snapshot (-m<block> or --metadata-snap=<block> names its block)')
    .option('--dev-id <id>', 'dump only this device (repeatable)', (v: string, prev: U64[]) => [...prev, u64Value('--dev-id', v)], [] as U64[])
    .option('--skip-mappings', 'do not dump the mappings')
    .option(
      '--shared-subtrees',
      'xml only: print leaves that devices (snapshots) share once, as <def>s the devices <ref> (the 1.x shared form); restoring it writes them once',
    )
    .option('-o, --output <file>', 'write to this file instead of standard output');
  const program = withOverrideOptions(base, 'of the superblock')
    .option('-r, --repair', 'repair the metadata while dumping it')
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  // The repair reads the live metadata whole and prints it flat.
  refuseConflicts(program, [['--repair', '--metadata-snap'], ['--repair', '--shared-subtrees']]);
  const o = program.opts<SuperblockOverrides & {
    format: DumpFormat;
    metadataSnap?: boolean;
    devId: U64[];
    skipMappings?: boolean;
    sharedSubtrees?: boolean;
    output?: string;
    repair?: boolean;
    quiet?: boolean;
  }>();
  const input = program.args[0];
  const warn = o.quiet ? undefined : (m: string) => process.stderr.write(`thin_dump: ${m}\n`);

  // A bar only when the dump text isn't going to the same terminal.
  const showProgress = !o.quiet && (o.output !== undefined || !process.stdout.isTTY);
  let bar: Progress | undefined;
  try {
    dumpMetadata(input, {
      format: o.format,
      metadataSnap: o.metadataSnap ? (snapBlock ?? true) : undefined,
      devIds: o.devId.length ? o.devId : undefined,
      skipMappings: o.skipMappings,
      sharedSubtrees: o.sharedSubtrees,
      ...overridesIn(o),
      output: o.output,
      repair: o.repair ? { warn } : undefined,
      onProgress: showProgress
        ? (done, total) => {
            bar ??= progressBar('Dumping', total >= PROGRESS_THRESHOLD ? total : 0, false);
            bar.update(done);
          }
        : undefined,
    });
  } catch (e) {
    if (e instanceof MetadataDamageError) {
      if (process.env.THIN_TOOLS_DEBUG) process.stderr.write(`${e.detail}\n`);
      process.stderr.write(`${DAMAGE_MESSAGE}\n`);
      return 1;
    }
    throw e;
  } finally {
    bar?.stop();
  }
  return 0;
}

void runTool('thin_dump', main);
