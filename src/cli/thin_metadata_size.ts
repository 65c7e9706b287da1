// thin_metadata_size: estimate the metadata device size for a pool (options as the 0.9.0 tool).
import { TOOLS_VERSION, UsageError, runTool } from './common.js';
import {
  MetadataSizeError,
  estimateMetadataSize,
  formatEstimate,
  helpText,
  parseMetadataSizeArgs,
} from '../tools/metadata-size.js';

const NAME = 'thin_metadata_size';

void runTool(NAME, (argv) => {
  let command;
  try {
    command = parseMetadataSizeArgs(argv);
  } catch (e) {
    if (e instanceof MetadataSizeError) throw new UsageError(e.message);
    throw e;
  }
  if (command.kind === 'help') process.stdout.write(helpText(NAME));
  else if (command.kind === 'version') process.stdout.write(`${TOOLS_VERSION}\n`);
  else process.stdout.write(formatEstimate(NAME, command.request, estimateMetadataSize(command.request)));
  return 0;
});
