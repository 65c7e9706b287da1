// thin_repair: salvage damaged metadata into a new device or file (options as 0.9.0 and 1.x).
import { repairMetadata } from '../tools/repair.js';
import { SuperblockOverrides, overridesIn } from '../thin/events.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';
import { withOverrideOptions } from './options.js';

const NAME = 'thin_repair';

interface Flags extends SuperblockOverrides {
  input?: string;
  output?: string;
  quiet?: boolean;
}

void runTool(NAME, (argv) => {
  const program = withOverrideOptions(
    newProgram(NAME, 'Repair thin-provisioning metadata, and write it to a different device or file. When the superblock is unreadable, --data-block-size is required.')
      .option('-i, --input <file>', 'the damaged metadata (device or file)')
      .option('-o, --output <file>', 'where to write the repaired metadata (device or existing file)'),
    'of the damaged superblock',
  )
    .option('-q, --quiet', 'print nothing but errors')
    .allowExcessArguments();
  program.parse(argv, { from: 'user' });
  const o = program.opts<Flags>();
  if (o.input === undefined) throw new UsageError('no input file provided (-i)');
  if (o.output === undefined) throw new UsageError('no output file provided (-o)');

  const quiet = !!o.quiet;
  let bar: Progress | undefined;
  try {
    repairMetadata(o.input, o.output, {
      ...overridesIn(o),
      warn: quiet ? undefined : (message) => {
        bar?.stop();
        bar = undefined;
        process.stderr.write(`${NAME}: ${message}\n`);
      },
      scanProgress: (done, total) => {
        bar ??= progressBar('Scanning', total, quiet);
        bar.update(done);
        if (done === total) {
          bar.stop();
          bar = undefined;
        }
      },
    });
  } finally {
    bar?.stop();
  }
  return 0;
});
