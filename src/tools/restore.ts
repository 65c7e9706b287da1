// thin_restore as a library function: thin_dump XML -> binary metadata on a file or device.
import * as fs from 'node:fs';
import { InputError, openFile } from '../io/block-io.js';
import { openMetadataOutput, refuseOutputOverInput } from '../io/open.js';
import { readMetadataXml } from '../formats/xml-reader.js';
import { SuperblockOverrides } from '../thin/events.js';
import { StreamValidator } from '../thin/validate-stream.js';
import { MetadataWriter, checkDataSpaceMapFits } from '../thin/write-metadata.js';

export { OutputTooSmallError } from '../pdata/block-allocator.js';
export type { SuperblockOverrides };

export interface RestoreOptions {
  input: string;
  output: string;
  overrides?: SuperblockOverrides;
  /** Bytes of input read so far, against the input's size. */
  onProgress?: (bytesRead: number, total: number) => void;
}

/**
 * Writes the metadata the XML describes to `output` (an existing file or block device, which
 * fixes the metadata's size). The input, the output and the overrides are checked before the
 * output is touched; then block 0 is zeroed first and the superblock written last.
 */
export async function restoreMetadata(opts: RestoreOptions): Promise<void> {
  const overrides = opts.overrides ?? {};
  const input = openFile(opts.input, 'stream');
  try {
    refuseOutputOverInput(opts.input, opts.output);
    const out = openMetadataOutput(opts.output);
    try {
      if (overrides.nrDataBlocks !== undefined) checkDataSpaceMapFits(overrides.nrDataBlocks, out);
      const writer = new MetadataWriter(out);
      await readMetadataXml(input, new StreamValidator(writer, overrides), {
        onProgress: opts.onProgress && ((n) => opts.onProgress!(n, input.size)),
      });
      if (!writer.complete) throw new InputError(`${opts.input}: no superblock`);
    } finally {
      out.close();
    }
  } finally {
    fs.closeSync(input.fd);
  }
}
