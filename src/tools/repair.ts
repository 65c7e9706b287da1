// thin_repair as library functions: salvage what damaged metadata still holds
// (src/thin/salvage.ts) and write it as new metadata (`thin_dump --repair` prints it: dump.ts).
import { openMetadataInput, openMetadataOutput, refuseOutputOverInput } from '../io/open.js';
import { MetadataVisitor, SuperblockOverrides } from '../thin/events.js';
import { MetadataWriter, checkDataSpaceMapFits } from '../thin/write-metadata.js';
import { SalvageError, SalvageOptions, SalvageResult, salvageMetadata } from '../thin/salvage.js';

export { SalvageError };
export type { SalvageResult, SuperblockOverrides };

export interface RepairOptions extends SalvageOptions {
  /** Told how many devices have been written. */
  onDevice?: (count: number) => void;
}

/**
 * thin_repair: salvages `input` and writes the result as new metadata on `output`. Everything
 * that can be refused is refused before the output is touched; then the writer zeroes the
 * output's superblock first and writes the new one last, so an interrupted repair leaves nothing
 * that looks valid.
 */
export function repairMetadata(input: string, output: string, opts: RepairOptions = {}): SalvageResult {
  refuseOutputOverInput(input, output);
  const io = openMetadataInput(input);
  try {
    const out = openMetadataOutput(output);
    try {
      if (opts.nrDataBlocks !== undefined) checkDataSpaceMapFits(opts.nrDataBlocks, out);
      return salvageMetadata(io, new MetadataWriter(out, { onDevice: opts.onDevice }), opts);
    } finally {
      out.close();
    }
  } finally {
    io.close();
  }
}

/** Salvages `input` into any visitor (the on-disk writer, the XML writer, a test's collector). */
export function salvageFile(input: string, visitor: MetadataVisitor, opts: SalvageOptions = {}): SalvageResult {
  const io = openMetadataInput(input);
  try {
    return salvageMetadata(io, visitor, opts);
  } finally {
    io.close();
  }
}
