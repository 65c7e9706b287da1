// thin_metadata_pack: Pack thin metadata into a compressed file (the upstream 1.x pack format); only blocks in use are kept.
import { PackFormatError, packMetadata } from '../tools/pack.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';

void runTool('thin_metadata_pack', (argv) => {
  const program = newProgram('thin_metadata_pack', 'Pack thin metadata into a compressed file (the upstream 1.x pack format); only blocks in use are kept.')
    .requiredOption('-i, --input <file>', 'metadata device or file')
    .requiredOption('-o, --output <file>', 'packed output file')
    .option('-f, --force', 'overwrite an output that already holds metadata')
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  const o = program.opts<{ input: string; output: string; force?: boolean; quiet?: boolean }>();
  let bar: Progress | undefined;
  try {
    packMetadata(o.input, o.output, {
      force: o.force,
      onProgress: (done, total) => {
        bar ??= progressBar('Packing', total, !!o.quiet);
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
