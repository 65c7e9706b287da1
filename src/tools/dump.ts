// thin_dump as a library function: metadata on disk -> XML or human-readable text.
import { BlockReader, InputError, sameFile } from '../io/block-io.js';
import { HumanReadableWriter } from '../formats/human-readable.js';
import { AtomicFileSink, FdSink, OutputClosedError } from '../formats/output.js';
import { JsonDumpWriter } from '../formats/json-writer.js';
import { XmlWriter } from '../formats/xml-writer.js';
import { MetadataVisitor, PoolInfo, SuperblockOverrides, applyOverrides } from '../thin/events.js';
import { readMetadata } from '../thin/read-metadata.js';

export { DAMAGE_MESSAGE, MetadataDamageError, MetadataSnapError } from '../thin/read-metadata.js';
export { OutputClosedError };

export const DUMP_FORMATS = ['xml', 'human_readable', 'json'] as const;
export type DumpFormat = (typeof DUMP_FORMATS)[number];

export interface DumpOptions extends SuperblockOverrides {
  format?: DumpFormat;
  /** `true`: the metadata snapshot the superblock holds; a number: the snapshot expected there. */
  metadataSnap?: true | number;
  devIds?: number[];
  skipMappings?: boolean;
  /** XML only: leaves several devices share are printed once, as `<def>`s the devices `<ref>`. */
  sharedSubtrees?: boolean;
  /** A file to write (atomically: temp file, then rename); default standard output. */
  output?: string;
  /** Where standard output goes when there is no `output` file. */
  stdoutFd?: number;
  onProgress?: (done: number, total: number) => void;
}

/** The writer of a dump format (thin_dump and thin_dump --repair). */
export function writerFor(format: DumpFormat, sink: FdSink): MetadataVisitor {
  switch (format) {
    case 'xml':
      return new XmlWriter(sink);
    case 'human_readable':
      return new HumanReadableWriter(sink);
    case 'json':
      return new JsonDumpWriter(sink);
  }
}

/** Replaces superblock fields the user overrode (for metadata whose superblock is wrong). */
function withOverrides(inner: MetadataVisitor, opts: SuperblockOverrides): MetadataVisitor {
  if (opts.transactionId === undefined && opts.dataBlockSize === undefined && opts.nrDataBlocks === undefined) {
    return inner;
  }
  return {
    superblockBegin(pool: PoolInfo) {
      inner.superblockBegin(applyOverrides(pool, opts));
    },
    superblockEnd: () => inner.superblockEnd(),
    deviceBegin: (dev) => inner.deviceBegin(dev),
    deviceEnd: () => inner.deviceEnd(),
    mapRun: (t, d, l, time) => inner.mapRun(t, d, l, time),
    defBegin: inner.defBegin && ((name) => inner.defBegin!(name)),
    defEnd: inner.defEnd && (() => inner.defEnd!()),
    ref: inner.ref && ((name) => inner.ref!(name)),
  };
}

/**
 * Dumps the metadata at `input`. Text printed before an error is still written to standard
 * output (as the reference does); an output file is only put in place when the dump succeeds.
 */
export function dumpMetadata(input: string, opts: DumpOptions = {}): void {
  const format = opts.format ?? 'xml';
  if (!DUMP_FORMATS.includes(format)) throw new InputError(`unknown format '${format}'`);
  if (opts.sharedSubtrees && format !== 'xml') throw new InputError('shared subtrees can only be dumped as xml');
  if (opts.output !== undefined && sameFile(opts.output, input)) {
    throw new InputError(`${opts.output}: the output file is the input metadata`);
  }
  const io = new BlockReader(input);
  try {
    if (io.nrBlocks === 0) throw new InputError(`${input}: too small to hold a superblock`);
    const sink = opts.output === undefined ? new FdSink(opts.stdoutFd ?? 1) : AtomicFileSink.open(opts.output);
    try {
      readMetadata(io, withOverrides(writerFor(format, sink), opts), {
        metadataSnap: opts.metadataSnap,
        devIds: opts.devIds ? new Set(opts.devIds) : undefined,
        skipMappings: opts.skipMappings,
        sharedSubtrees: opts.sharedSubtrees,
        onProgress: opts.onProgress,
      });
    } catch (e) {
      if (sink instanceof AtomicFileSink) sink.abort();
      else if (!(e instanceof OutputClosedError)) sink.flush();
      throw e;
    }
    if (sink instanceof AtomicFileSink) sink.commit();
    else sink.flush();
  } finally {
    io.close();
  }
}
