// thin_trim: discard the data blocks no thin device uses (offline: the pool must be inactive).
import { TrimError, trimDataDevice } from '../tools/trim.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';

void runTool('thin_trim', (argv) => {
  const program = newProgram('thin_trim', 'Discard the unused data blocks of an inactive pool (holes in a data file).')
    .requiredOption('--metadata-dev <file>', 'the pool metadata device or file')
    .requiredOption('--data-dev <file>', 'the pool data device or file')
    .option('--pool-inactive', 'accepted for compatibility: the data device is always opened exclusively')
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  const o = program.opts<{ metadataDev: string; dataDev: string; quiet?: boolean }>();
  let bar: Progress | undefined;
  try {
    trimDataDevice(o.metadataDev, o.dataDev, {
      onProgress: (done, total) => {
        bar ??= progressBar('Trimming', total, !!o.quiet);
        bar.update(done);
      },
    });
  } catch (e) {
    if (e instanceof TrimError) throw new UsageError(e.message);
    throw e;
  } finally {
    bar?.stop();
  }
  return 0;
});
