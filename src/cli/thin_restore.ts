// thin_restore: rebuild binary thin-pool metadata from thin_dump XML.
import { restoreMetadata } from '../tools/restore.js';
import { Progress, UsageError, newProgram, parseNatural, progressBar, runTool } from './common.js';

async function main(argv: string[]): Promise<number> {
  const program = newProgram('thin_restore', 'Convert XML format metadata to binary.')
    .option('-i, --input <file>', 'input xml file')
    .option('-o, --output <file>', 'output device or file (it must exist and be large enough)')
    .option('--transaction-id <natural>', 'override the transaction id given in the input xml')
    .option('--data-block-size <natural>', 'override the data block size given in the input xml')
    .option('--nr-data-blocks <natural>', 'override the nr data blocks given in the input xml')
    .option('-q, --quiet', 'suppress output messages, return only exit code');
  program.parse(argv, { from: 'user' });
  const o = program.opts<{
    input?: string;
    output?: string;
    transactionId?: string;
    dataBlockSize?: string;
    nrDataBlocks?: string;
    quiet?: boolean;
  }>();
  if (o.input === undefined) throw new UsageError('No input file provided.');
  if (o.output === undefined) throw new UsageError('No output file provided.');
  const natural = (v: string | undefined, what: string) => (v === undefined ? undefined : parseNatural(v, what));
  const overrides = {
    transactionId: natural(o.transactionId, '--transaction-id'),
    dataBlockSize: natural(o.dataBlockSize, '--data-block-size'),
    nrDataBlocks: natural(o.nrDataBlocks, '--nr-data-blocks'),
  };

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
