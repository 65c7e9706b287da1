// thin_restore as a library function: thin_dump XML -> binary metadata on a file or device.
import * as fs from 'node:fs';
import { BlockWriter, InputError } from '../io/block-io.js';
import { readMetadataXml } from '../formats/xml-reader.js';
import { SuperblockOverrides } from '../thin/events.js';
import { StreamValidator } from '../thin/validate-stream.js';
import { MetadataWriter } from '../thin/write-metadata.js';

export { OutputTooSmallError } from '../pdata/block-allocator.js';
export type { SuperblockOverrides };

export interface RestoreOptions {
  input: string;
  output: string;
  overrides?: SuperblockOverrides;
  /** Bytes of input read so far, against the input's size. */
  onProgress?: (bytesRead: number, total: number) => void;
}

/** The input must be readable before anything on the output is touched. */
function checkInput(input: string): number {
  let st: fs.Stats;
  try {
    st = fs.statSync(input);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputError(`${input}: ${code === 'ENOENT' ? 'No such file or directory' : (e as Error).message}`);
  }
  if (!st.isFile() && !st.isFIFO() && !st.isCharacterDevice()) throw new InputError(`${input}: Not a regular file`);
  return st.size;
}

/**
 * Writes the metadata the XML describes to `output` (an existing file or block device, which
 * fixes the metadata's size). Block 0 is zeroed first and the superblock written last.
 */
export async function restoreMetadata(opts: RestoreOptions): Promise<void> {
  const total = checkInput(opts.input);
  const out = new BlockWriter(opts.output);
  try {
    const writer = new MetadataWriter(out);
    await readMetadataXml(opts.input, new StreamValidator(writer, opts.overrides ?? {}), {
      onProgress: opts.onProgress && ((n) => opts.onProgress!(n, total)),
    });
    if (!writer.complete) throw new InputError(`${opts.input}: no superblock`);
  } finally {
    out.close();
  }
}
