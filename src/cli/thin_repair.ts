// thin_repair: salvage damaged metadata into a new device or file (options as 0.9.0 and 1.x).
import { repairMetadata } from '../tools/repair.js';
import { Progress, UsageError, newProgram, parseNatural, progressBar, runTool } from './common.js';

const NAME = 'thin_repair';

interface Flags {
  input?: string;
  output?: string;
  transactionId?: string;
  dataBlockSize?: string;
  nrDataBlocks?: string;
  quiet?: boolean;
}

await runTool(NAME, (argv) => {
  const program = newProgram(NAME, 'Repair thin-provisioning metadata, and write it to a different device or file.')
    .option('-i, --input <file>', 'the damaged metadata (device or file)')
    .option('-o, --output <file>', 'where to write the repaired metadata (device or existing file)')
    .option('--transaction-id <n>', 'the transaction id, if the superblock is damaged or wrong')
    .option('--data-block-size <sectors>', 'the data block size, needed when the superblock is damaged')
    .option('--nr-data-blocks <n>', 'the number of data blocks, if the superblock is damaged or wrong')
    .option('-q, --quiet', 'print nothing but errors')
    .allowExcessArguments();
  program.parse(argv, { from: 'user' });
  const o = program.opts<Flags>();
  if (o.input === undefined) throw new UsageError('no input file provided (-i)');
  if (o.output === undefined) throw new UsageError('no output file provided (-o)');
  const natural = (v: string | undefined, what: string) => (v === undefined ? undefined : parseNatural(v, what));

  const quiet = !!o.quiet;
  let bar: Progress | undefined;
  try {
    repairMetadata(o.input, o.output, {
      transactionId: natural(o.transactionId, '--transaction-id'),
      dataBlockSize: natural(o.dataBlockSize, '--data-block-size'),
      nrDataBlocks: natural(o.nrDataBlocks, '--nr-data-blocks'),
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
