// thin_metadata_unpack: Unpack a file made by thin_metadata_pack into a metadata device or file.
import { unpackMetadata } from '../tools/pack.js';
import { runPackCommand } from './pack-command.js';

runPackCommand({
  name: 'thin_metadata_unpack',
  about: 'Unpack a file made by thin_metadata_pack into a metadata device or file.',
  inputHelp: 'packed input file',
  outputHelp: 'metadata device or file to write',
  barLabel: 'Unpacking',
  run: unpackMetadata,
});
