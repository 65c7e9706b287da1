// thin_repair and `thin_dump --repair` as library functions: salvage what damaged metadata
// still holds (src/thin/salvage.ts) and write it as new metadata or print it.
import * as fs from 'node:fs';
import { BlockReader, BlockWriter, InputError, sameFile } from '../io/block-io.js';
import { AtomicFileSink, FdSink } from '../formats/output.js';
import { MetadataVisitor, SuperblockOverrides } from '../thin/events.js';
import { MetadataWriter } from '../thin/write-metadata.js';
import { SalvageError, SalvageResult, salvageMetadata } from '../thin/salvage.js';
import { validDataBlockSize } from '../thin/superblock.js';
import { DumpFormat, writerFor } from './dump.js';

export { SalvageError };
export type { SalvageResult, SuperblockOverrides };

export interface SalvageRunOptions extends SuperblockOverrides {
  warn?: (message: string) => void;
  scanProgress?: (done: number, total: number) => void;
}

function checkOverrides(o: SuperblockOverrides): void {
  if (o.dataBlockSize !== undefined && !validDataBlockSize(o.dataBlockSize)) {
    throw new InputError(
      `data block size ${o.dataBlockSize} is invalid: it must be a multiple of 128 sectors between 128 and 2097152`,
    );
  }
}

/**
 * Opens the output for writing. A block device is opened exclusively (as the 1.x tools do), so
 * metadata a live pool holds open is refused with "Device or resource busy" instead of being
 * rewritten under the kernel. The output must exist: a device, or a file already sized.
 */
function openOutput(output: string): BlockWriter {
  let st: fs.Stats;
  try {
    st = fs.statSync(output);
  } catch {
    throw new InputError(`${output}: output file does not exist; it must be a block device or an existing file large enough for the metadata`);
  }
  if (st.isBlockDevice()) {
    try {
      fs.closeSync(fs.openSync(output, fs.constants.O_RDWR | fs.constants.O_EXCL));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new InputError(`${output}: ${code === 'EBUSY' ? 'Device or resource busy (is the pool active?)' : (e as Error).message}`);
    }
  } else if (!st.isFile()) {
    throw new InputError(`${output}: not a regular file or block device`);
  }
  return new BlockWriter(output);
}

export interface RepairOptions extends SalvageRunOptions {
  /** Told how many devices have been written. */
  onDevice?: (count: number) => void;
}

/**
 * thin_repair: salvages `input` and writes the result as new metadata on `output`. The writer
 * zeroes the output's superblock first and writes the new one last, so an interrupted repair
 * leaves nothing that looks valid.
 */
export function repairMetadata(input: string, output: string, opts: RepairOptions = {}): SalvageResult {
  if (sameFile(input, output)) {
    throw new InputError(`${output}: the output is the input metadata; repair writes to a different device or file`);
  }
  checkOverrides(opts);
  const io = openInput(input);
  try {
    const out = openOutput(output);
    try {
      return salvageMetadata(io, new MetadataWriter(out, { onDevice: opts.onDevice }), opts);
    } finally {
      out.close();
    }
  } finally {
    io.close();
  }
}

/** Opens damaged metadata for salvage; an empty or tiny file can't be metadata. */
function openInput(input: string): BlockReader {
  const io = new BlockReader(input);
  if (io.nrBlocks === 0) {
    io.close();
    throw new InputError(`${input}: too small to be thin-pool metadata`);
  }
  return io;
}

/** Salvages `input` into any visitor (the on-disk writer, the XML writer, a test's collector). */
export function salvageFile(input: string, visitor: MetadataVisitor, opts: SalvageRunOptions = {}): SalvageResult {
  checkOverrides(opts);
  const io = openInput(input);
  try {
    return salvageMetadata(io, visitor, opts);
  } finally {
    io.close();
  }
}

export interface DumpRepairedOptions extends SalvageRunOptions {
  format?: DumpFormat;
  /** A file to write atomically; default standard output. */
  output?: string;
  stdoutFd?: number;
}

/** `thin_dump --repair`: the salvaged metadata printed as XML (or human-readable text). */
export function dumpRepaired(input: string, opts: DumpRepairedOptions = {}): SalvageResult {
  if (opts.output !== undefined && sameFile(opts.output, input)) {
    throw new InputError(`${opts.output}: the output file is the input metadata`);
  }
  checkOverrides(opts);
  const io = openInput(input);
  try {
    const sink = opts.output === undefined ? new FdSink(opts.stdoutFd ?? 1) : AtomicFileSink.open(opts.output);
    const writer = writerFor(opts.format ?? 'xml', sink);
    let result: SalvageResult;
    try {
      result = salvageMetadata(io, writer, opts);
    } catch (e) {
      if (sink instanceof AtomicFileSink) sink.abort();
      throw e;
    }
    if (sink instanceof AtomicFileSink) sink.commit();
    else sink.flush();
    return result;
  } finally {
    io.close();
  }
}
