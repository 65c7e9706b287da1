// thin_delta: the differences between two thin devices' mappings (for incremental backups).
import { Option } from 'commander';
import { DELTA_FORMATS, DeltaDamageError, DeltaDeviceError, DeltaFormat, deltaDevices } from '../tools/delta.js';
import { MetadataSnapError } from '../tools/dump.js';
import { DeltaSide } from '../thin/delta.js';
import { UsageError, newProgram, runTool } from './common.js';
import { blockValue, extractSnapBlock, u64Value } from './options.js';

const TAKES_VALUE = new Set(['--snap1', '--thin1', '--snap2', '--thin2', '--root1', '--root2', '-f', '--format']);

interface Flags {
  snap1?: string;
  thin1?: string;
  snap2?: string;
  thin2?: string;
  root1?: string;
  root2?: string;
  metadataSnap?: boolean;
  verbose?: boolean;
  format: DeltaFormat;
}

/** --thin1/--snap1 (a device) or --root1 (a tree root, as 1.x): exactly one. */
function sideFrom(n: 1 | 2, dev: string | undefined, alias: string | undefined, root: string | undefined): DeltaSide {
  if (dev !== undefined && alias !== undefined && dev !== alias) throw new UsageError(`--snap${n} and --thin${n} name different devices`);
  const id = dev ?? alias;
  if (id !== undefined && root !== undefined) throw new UsageError(`--snap${n} and --root${n} cannot be combined`);
  if (root !== undefined) return { root: blockValue(`--root${n}`, root) };
  if (id === undefined) throw new UsageError(`--snap${n} not specified.`);
  const devId = u64Value(`--snap${n}`, id);
  // Device ids have 24 bits: a larger one names no device (the reference's message).
  if (typeof devId !== 'number') throw new UsageError(`Unable to find mapping tree for snap${n} (${devId})`);
  return { devId };
}

void runTool('thin_delta', (rawArgv) => {
  const { argv, snapBlock } = extractSnapBlock(rawArgv, TAKES_VALUE);
  const program = newProgram('thin_delta', 'Print the differences in the mappings between two thin devices.')
    .argument('[input]', 'metadata device or file')
    .option('--snap1 <dev_id>', 'the first thin device (also --thin1)')
    .addOption(new Option('--thin1 <dev_id>').hideHelp())
    .option('--snap2 <dev_id>', 'the second thin device (also --thin2)')
    .addOption(new Option('--thin2 <dev_id>').hideHelp())
    .option('--root1 <block>', 'the root block of the first mapping tree, instead of --snap1')
    .option('--root2 <block>', 'the root block of the second mapping tree, instead of --snap2')
    .option('-m, --metadata-snap', 'use the held metadata snapshot (-m<block> or --metadata-snap=<block> names its block)')
    .option('--verbose', 'give the data blocks of each range')
    .addOption(new Option('-f, --format <format>', 'output format (json: see docs/json-format.md)').choices(DELTA_FORMATS).default('xml'));
  program.parse(argv, { from: 'user' });
  const o = program.opts<Flags>();
  const input = program.args[0];
  if (input === undefined) throw new UsageError('No input device provided.');
  const left = sideFrom(1, o.snap1, o.thin1, o.root1);
  const right = sideFrom(2, o.snap2, o.thin2, o.root2);
  try {
    deltaDevices(input, {
      left,
      right,
      metadataSnap: o.metadataSnap ? (snapBlock ?? true) : undefined,
      verbose: o.verbose,
      format: o.format,
    });
  } catch (e) {
    if (e instanceof DeltaDeviceError || e instanceof DeltaDamageError || e instanceof MetadataSnapError) {
      throw new UsageError(e.message);
    }
    throw e;
  }
  return 0;
});
