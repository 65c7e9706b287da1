// thin_metadata_pack: Pack thin metadata into a compressed file (the upstream 1.x pack format); only blocks in use are kept.
import { packMetadata } from '../tools/pack.js';
import { runPackCommand } from './pack-command.js';

runPackCommand({
  name: 'thin_metadata_pack',
  about: 'Pack thin metadata into a compressed file (the upstream 1.x pack format); only blocks in use are kept.',
  inputHelp: 'metadata device or file',
  outputHelp: 'packed output file',
  barLabel: 'Packing',
  run: packMetadata,
});
