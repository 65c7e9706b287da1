// thin_extract: copy one thin volume out of a pool's data device into a plain image file.
import { ExtractError, extractVolume } from '../tools/extract.js';
import { DAMAGE_MESSAGE, MetadataDamageError, MetadataSnapError } from '../tools/dump.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';
import { extractSnapBlock, u64Value } from './options.js';

/** A u64 option whose value must also be a byte offset or device id we can use (below 2^53). */
function safeValue(option: string, value: string): number {
  const v = u64Value(option, value);
  if (typeof v !== 'number') throw new UsageError(`${option}: ${value} is too large`);
  return v;
}

const TAKES_VALUE = new Set(['--metadata', '--data', '--dev-id', '-o', '--output', '--size']);

void runTool('thin_extract', (rawArgv) => {
  const { argv, snapBlock } = extractSnapBlock(rawArgv, TAKES_VALUE);
  const program = newProgram('thin_extract', "Copy one thin volume out of a pool's data device into an image file (unmapped ranges as holes).")
    .requiredOption('--metadata <file>', 'the pool metadata device or file')
    .requiredOption('--data <file>', 'the pool data device or file')
    .requiredOption('--dev-id <id>', 'the thin device to extract')
    .requiredOption('-o, --output <file>', 'the image file to write')
    .option('-m, --metadata-snap', 'read the mappings from the held metadata snapshot (-m<block> names its block)')
    .option('--size <bytes>', "the image's size (the volume's); default: up to its last mapped block")
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  const o = program.opts<{ metadata: string; data: string; devId: string; output: string; metadataSnap?: boolean; size?: string; quiet?: boolean }>();
  let bar: Progress | undefined;
  try {
    extractVolume(o.metadata, o.data, o.output, {
      devId: safeValue('--dev-id', o.devId),
      metadataSnap: o.metadataSnap ? (snapBlock ?? true) : undefined,
      size: o.size === undefined ? undefined : safeValue('--size', o.size),
      onProgress: (done, total) => {
        bar ??= progressBar('Extracting', total, !!o.quiet);
        bar.update(done);
      },
    });
  } catch (e) {
    if (e instanceof MetadataDamageError) throw new UsageError(`${DAMAGE_MESSAGE.split('\n')[0]} ${e.detail}`);
    if (e instanceof ExtractError || e instanceof MetadataSnapError) throw new UsageError(e.message);
    throw e;
  } finally {
    bar?.stop();
  }
  return 0;
});
