// thin_rmap: which devices and thin blocks map a region of the data device.
import { Region, RmapError, parseRegion, rmapPool } from '../tools/rmap.js';
import { UsageError, mappingProgress, newProgram, runTool } from './common.js';

void runTool('thin_rmap', (argv) => {
  const program = newProgram('thin_rmap', 'Print which thin devices and blocks map regions of the data device.')
    .argument('[input]', 'metadata device or file')
    .option(
      '--region <begin..end>',
      'data blocks begin to end-1 (repeatable; overlapping regions are merged)',
      (v: string, prev: Region[]) => {
        try {
          return [...prev, parseRegion(v)];
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
      },
      [] as Region[],
    )
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  const input = program.args[0];
  if (input === undefined) throw new UsageError('No input file provided.');
  const { region, quiet } = program.opts<{ region: Region[]; quiet?: boolean }>();
  if (region.length === 0) throw new UsageError('No regions provided.');
  const progress = mappingProgress('Reverse mapping', !!quiet);
  try {
    rmapPool(input, region, 1, progress.onProgress);
  } catch (e) {
    if (e instanceof RmapError) throw new UsageError(e.message);
    throw e;
  } finally {
    progress.stop();
  }
  return 0;
});
