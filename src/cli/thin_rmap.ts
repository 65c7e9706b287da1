// thin_rmap: which devices and thin blocks map a region of the data device.
import { OutputClosedError } from '../formats/output.js';
import { Region, RmapError, parseRegion, rmapPool } from '../tools/rmap.js';
import { UsageError, newProgram, runTool } from './common.js';

await runTool('thin_rmap', (argv) => {
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
    );
  program.parse(argv, { from: 'user' });
  const input = program.args[0];
  if (input === undefined) throw new UsageError('No input file provided.');
  const { region } = program.opts<{ region: Region[] }>();
  if (region.length === 0) throw new UsageError('No regions provided.');
  try {
    rmapPool(input, region);
  } catch (e) {
    if (e instanceof OutputClosedError) return 1;
    if (e instanceof RmapError) throw new UsageError(e.message);
    throw e;
  }
  return 0;
});
