// thin_delta as a library function: the differences between two thin devices, as XML or JSON.
import { openMetadataInput } from '../io/open.js';
import { lookupBTree } from '../pdata/btree/lookup.js';
import { BTreeError } from '../pdata/btree/walk.js';
import { FdSink } from '../formats/output.js';
import { DeltaXmlWriter, VerboseDeltaXmlWriter } from '../formats/delta-xml.js';
import { JsonDeltaWriter } from '../formats/json-writer.js';
import { DeltaSide, DeltaVisitor, diffDeviceTrees } from '../thin/delta.js';
import { TOP_LEVEL_VALUE_SIZE } from '../thin/mapping-tree.js';
import { selectSuperblock } from '../thin/read-metadata.js';
import { dataSpaceMapRoot, readHeldRootU64 } from '../thin/superblock.js';

export const DELTA_FORMATS = ['xml', 'json'] as const;
export type DeltaFormat = (typeof DELTA_FORMATS)[number];

export interface DeltaOptions {
  left: DeltaSide;
  right: DeltaSide;
  /** `true`: the metadata snapshot the superblock holds; a number: the snapshot expected there. */
  metadataSnap?: true | number;
  verbose?: boolean;
  format?: DeltaFormat;
  /** Where the output goes (default standard output). */
  stdoutFd?: number;
}

/** A device asked for is not in the pool (the reference's wording). */
export class DeltaDeviceError extends Error {}

/** The mapping trees are damaged; nothing was printed. */
export class DeltaDamageError extends Error {}

function writerFor(opts: DeltaOptions, sink: FdSink): DeltaVisitor {
  if (opts.format === 'json') return new JsonDeltaWriter(sink, !!opts.verbose);
  return opts.verbose ? new VerboseDeltaXmlWriter(sink) : new DeltaXmlWriter(sink);
}

/**
 * Prints the differences between two devices' mappings. Output is buffered: when damage stops
 * the walk before the first megabyte went out, nothing is printed (as the reference, which
 * prints nothing on damage); past that, the lines so far are out and the XML is left unclosed.
 */
export function deltaDevices(input: string, opts: DeltaOptions): void {
  const io = openMetadataInput(input);
  try {
    const sb = selectSuperblock(io, opts.metadataSnap);
    const rootOf = (side: DeltaSide, name: string): number => {
      if ('root' in side) return side.root;
      let found;
      try {
        found = lookupBTree(io, sb.dataMappingRoot, TOP_LEVEL_VALUE_SIZE, side.devId);
      } catch (e) {
        throw damage(e);
      }
      if (!found) throw new DeltaDeviceError(`Unable to find mapping tree for ${name} (${side.devId})`);
      return found.node.valueBlock(found.index);
    };
    const leftRoot = rootOf(opts.left, 'snap1');
    const rightRoot = rootOf(opts.right, 'snap2');
    const sink = new FdSink(opts.stdoutFd ?? 1);
    const out = writerFor(opts, sink);
    out.begin({
      time: sb.time,
      transaction: sb.transactionId,
      dataBlockSize: sb.dataBlockSize,
      // The snapshot's copy of the superblock has no space maps: the reference prints 0.
      nrDataBlocks: opts.metadataSnap === undefined ? dataSpaceMapRoot(sb).nrBlocks : 0,
      // The superblock read sits at its own blocknr (readSuperblock checks it): no second lookup.
      metadataSnap: sb.heldRoot ? readHeldRootU64(io, sb.blocknr) : undefined,
      left: opts.left,
      right: opts.right,
    });
    try {
      diffDeviceTrees(io, leftRoot, rightRoot, out, !!opts.verbose);
    } catch (e) {
      throw damage(e);
    }
    out.end();
    sink.flush();
  } finally {
    io.close();
  }
}

function damage(e: unknown): unknown {
  if (!(e instanceof BTreeError)) return e;
  return new DeltaDamageError(`damage in mapping tree, please run thin_check: ${e.message}`);
}
