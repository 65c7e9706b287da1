// thin_metadata_unpack: Unpack a file made by thin_metadata_pack into a metadata device or file.
import { PackFormatError, unpackMetadata } from '../tools/pack.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';

void runTool('thin_metadata_unpack', (argv) => {
  const program = newProgram('thin_metadata_unpack', 'Unpack a file made by thin_metadata_pack into a metadata device or file.')
    .requiredOption('-i, --input <file>', 'packed input file')
    .requiredOption('-o, --output <file>', 'metadata device or file to write')
    .option('-f, --force', 'overwrite an output that already holds metadata')
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  const o = program.opts<{ input: string; output: string; force?: boolean; quiet?: boolean }>();
  let bar: Progress | undefined;
  try {
    unpackMetadata(o.input, o.output, {
      force: o.force,
      onProgress: (done, total) => {
        bar ??= progressBar('Unpacking', total, !!o.quiet);
        bar.update(done);
      },
    });
  } catch (e) {
    if (e instanceof PackFormatError) throw new UsageError(e.message);
    throw e;
  } finally {
    bar?.stop();
  }
  return 0;
});
