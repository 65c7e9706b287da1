// thin_restore: rebuild binary thin-pool metadata from thin_dump XML.
import { restoreMetadata } from '../tools/restore.js';
import { SuperblockOverrides, overridesIn } from '../thin/events.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';
import { withOverrideOptions } from './options.js';

async function main(argv: string[]): Promise<number> {
  const program = withOverrideOptions(
    newProgram('thin_restore', 'Convert XML format metadata to binary.')
      .option('-i, --input <file>', 'input xml file')
      .option('-o, --output <file>', 'output device or file (it must exist and be large enough)'),
    'given in the input xml',
  ).option('-q, --quiet', 'suppress output messages, return only exit code');
  program.parse(argv, { from: 'user' });
  const o = program.opts<SuperblockOverrides & { input?: string; output?: string; quiet?: boolean }>();
  if (o.input === undefined) throw new UsageError('No input file provided.');
  if (o.output === undefined) throw new UsageError('No output file provided.');
  const overrides = overridesIn(o);

  let bar: Progress | undefined;
  try {
    await restoreMetadata({
      input: o.input,
      output: o.output,
      overrides,
      onProgress: (done, total) => {
        bar ??= progressBar('Restoring', total, o.quiet ?? false);
        bar.update(done);
      },
    });
  } finally {
    bar?.stop();
  }
  return 0;
}

void runTool('thin_restore', main);
