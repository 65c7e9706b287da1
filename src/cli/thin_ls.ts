// thin_ls: list the thin devices of a pool, with their sizes and how much of them is shared.
import { MetadataSnapError } from '../tools/dump.js';
import { LS_FIELDS, LsError, parseLsFields, lsPool } from '../tools/ls.js';
import { UsageError, mappingProgress, newProgram, runTool } from './common.js';
import { extractSnapBlock } from './options.js';

const TAKES_VALUE = new Set(['-o', '--format']);

interface Flags {
  format?: string;
  headers: boolean;
  metadataSnap?: boolean;
  quiet?: boolean;
}

void runTool('thin_ls', (rawArgv) => {
  const { argv, snapBlock } = extractSnapBlock(rawArgv, TAKES_VALUE);
  const program = newProgram('thin_ls', 'List the thin devices of a pool.')
    .argument('[input]', 'metadata device or file')
    .option('-o, --format <fields>', `comma-separated fields, from: ${LS_FIELDS.join(', ')}; add json for JSON (docs/json-format.md)`)
    .option('--no-headers', "don't print the header line")
    .option('-m, --metadata-snap', 'use the held metadata snapshot')
    .option('-q, --quiet', 'no progress bar');
  program.parse(argv, { from: 'user' });
  const o = program.opts<Flags>();
  const input = program.args[0];
  if (input === undefined) throw new UsageError('No input file provided.');
  const progress = mappingProgress('Listing', !!o.quiet);
  try {
    const asked = o.format === undefined ? undefined : parseLsFields(o.format);
    lsPool(input, {
      fields: asked?.fields,
      json: asked?.json,
      headers: o.headers,
      metadataSnap: o.metadataSnap ? (snapBlock ?? true) : undefined,
      onProgress: progress.onProgress,
    });
  } catch (e) {
    if (e instanceof LsError || e instanceof MetadataSnapError) throw new UsageError(e.message);
    throw e;
  } finally {
    progress.stop();
  }
  return 0;
});
