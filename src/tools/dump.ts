// thin_dump as a library function: metadata on disk -> XML or human-readable text; with
// `repair`, what damaged metadata still holds (src/thin/salvage.ts).
import { InputError } from '../io/block-io.js';
import { openMetadataInput, refuseOutputOverInput } from '../io/open.js';
import { HumanReadableWriter } from '../formats/human-readable.js';
import { AtomicFileSink, FdSink, OutputClosedError } from '../formats/output.js';
import { JsonDumpWriter } from '../formats/json-writer.js';
import { XmlWriter } from '../formats/xml-writer.js';
import { U64 } from '../pdata/le.js';
import { DeviceInfo, MetadataVisitor, PoolInfo, SuperblockOverrides, applyOverrides, overridesIn } from '../thin/events.js';
import { readMetadata } from '../thin/read-metadata.js';
import { SalvageOptions, salvageMetadata } from '../thin/salvage.js';

export { DAMAGE_MESSAGE, MetadataDamageError, MetadataSnapError } from '../thin/read-metadata.js';
export { OutputClosedError };

export const DUMP_FORMATS = ['xml', 'human_readable', 'json'] as const;
export type DumpFormat = (typeof DUMP_FORMATS)[number];

export interface DumpOptions extends SuperblockOverrides {
  format?: DumpFormat;
  /** `true`: the metadata snapshot the superblock holds; a number: the snapshot expected there. */
  metadataSnap?: true | number;
  /** Only these devices. */
  devIds?: U64[];
  skipMappings?: boolean;
  /** XML only: leaves several devices share are printed once, as `<def>`s the devices `<ref>`. */
  sharedSubtrees?: boolean;
  /** A file to write (atomically: temp file, then rename); default standard output. */
  output?: string;
  /** Where standard output goes when there is no `output` file. */
  stdoutFd?: number;
  onProgress?: (done: number, total: number) => void;
  /**
   * Dump what damaged live metadata still holds (`thin_dump --repair`), told what was lost;
   * flat, and without `metadataSnap` or `sharedSubtrees`.
   */
  repair?: Pick<SalvageOptions, 'warn' | 'scanProgress'>;
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
 * Only the devices asked for, without their mappings if asked: the salvage emits every device
 * it finds, so `thin_dump --repair --dev-id/--skip-mappings` selects here.
 */
function selected(inner: MetadataVisitor, devIds: ReadonlySet<U64> | undefined, skipMappings: boolean): MetadataVisitor {
  if (!devIds && !skipMappings) return inner;
  let skipping = false;
  return {
    superblockBegin: (pool) => inner.superblockBegin(pool),
    superblockEnd: () => inner.superblockEnd(),
    deviceBegin(dev: DeviceInfo) {
      skipping = devIds !== undefined && !devIds.has(dev.devId);
      if (!skipping) inner.deviceBegin(dev);
    },
    deviceEnd() {
      if (!skipping) inner.deviceEnd();
      skipping = false;
    },
    mapRun(t, d, l, time) {
      if (!skipping && !skipMappings) inner.mapRun(t, d, l, time);
    },
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
  if (opts.output !== undefined) refuseOutputOverInput(input, opts.output);
  const io = openMetadataInput(input);
  try {
    const sink = opts.output === undefined ? new FdSink(opts.stdoutFd ?? 1) : AtomicFileSink.open(opts.output);
    const devIds = opts.devIds && new Set(opts.devIds);
    try {
      if (opts.repair) {
        const visitor = selected(writerFor(format, sink), devIds, !!opts.skipMappings);
        salvageMetadata(io, visitor, { ...overridesIn(opts), ...opts.repair });
      } else {
        readMetadata(io, withOverrides(writerFor(format, sink), opts), {
          metadataSnap: opts.metadataSnap,
          devIds,
          skipMappings: opts.skipMappings,
          sharedSubtrees: opts.sharedSubtrees,
          onProgress: opts.onProgress,
        });
      }
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
