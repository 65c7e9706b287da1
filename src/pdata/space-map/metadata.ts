// The metadata space map's index: one block of 255 index entries, so at most 255 bitmaps.
import { BlockReader } from '../../io/block-io.js';
import { INDEX_CSUM_XOR, blockChecksum } from '../checksum.js';
import { readBlockNr } from '../le.js';
import { SpaceMapRoot, spaceMapSize } from './root.js';
import {
  ENTRIES_PER_BITMAP, INDEX_ENTRY_SIZE, IndexEntry, SpaceMapError, SpaceMapReader, SpaceMapSink,
  bitmapAtSuperblock, bitmapsFor, decodeIndexEntry,
} from './common.js';

export const INDEX_HEADER_SIZE = 16;
export const MAX_METADATA_BITMAPS = 255;
/** The most metadata blocks a metadata space map can describe. */
export const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;

/**
 * Reads the index block of a metadata space map: the entries of the bitmaps `root.nrBlocks`
 * needs. Throws SpaceMapError when the index block itself is unusable; an entry that points at
 * block 0 is reported to `sink` (thrown without one) and kept, 0 marking it unreadable.
 */
export function readMetadataIndex(io: BlockReader, root: SpaceMapRoot, sink?: SpaceMapSink): IndexEntry[] {
  const loc = root.bitmapRoot;
  if (root.nrBlocks > MAX_METADATA_BLOCKS) {
    throw new SpaceMapError(loc, `metadata space map claims ${root.nrBlocks} blocks, more than the ${MAX_METADATA_BLOCKS} it can describe`);
  }
  sink?.nodeRef?.(loc);
  if (loc >= io.nrBlocks) {
    throw new SpaceMapError(loc, `metadata space map index is beyond the end of the metadata device (${io.nrBlocks} blocks)`);
  }
  const buf = io.read(loc);
  if (buf.readUInt32LE(0) !== blockChecksum(buf, INDEX_CSUM_XOR)) {
    throw new SpaceMapError(loc, 'bad checksum in metadata space map index');
  }
  const blocknr = readBlockNr(buf, 8);
  if (blocknr !== loc) throw new SpaceMapError(loc, `metadata space map index says it is block ${blocknr}`);
  const entries: IndexEntry[] = [];
  for (let i = 0; i < bitmapsFor(spaceMapSize(root)); i++) {
    const e = decodeIndexEntry(buf, INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE);
    if (e.blocknr === 0) {
      const err = new SpaceMapError(loc, bitmapAtSuperblock(i));
      if (!sink) throw err;
      sink.error(err);
    }
    entries.push(e);
  }
  return entries;
}

/** Opens the metadata space map described by `root` for reading. */
export function openMetadataSpaceMap(io: BlockReader, root: SpaceMapRoot, sink?: SpaceMapSink): SpaceMapReader {
  return new SpaceMapReader(io, spaceMapSize(root), readMetadataIndex(io, root, sink), root.refCountRoot);
}

/**
 * Which metadata blocks the space map counts more than once (nodes that trees share), as a
 * predicate for walks that remember shared subtrees. Never throws: a block the space map can't
 * tell about (damaged index or bitmap, or beyond it) counts as shared.
 */
export function sharedMetadataBlocks(io: BlockReader, root: SpaceMapRoot): (block: number) => boolean {
  const nrBlocks = spaceMapSize(root);
  let sm: SpaceMapReader;
  try {
    sm = openMetadataSpaceMap(io, root);
  } catch {
    return () => true;
  }
  // One bit a block: clear for a count of 0 or 1.
  const shared = new Uint8Array(Math.ceil(nrBlocks / 8)).fill(0xff);
  try {
    sm.forEachBitmap({ error: () => {} }, (first, counts) => {
      for (let i = 0; i < counts.length; i++) {
        const b = first + i;
        if (counts[i] < 2) shared[b >>> 3] &= ~(1 << (b & 7));
      }
    });
  } catch {
    // What was read stands; the rest stays shared.
  }
  return (block) => block >= nrBlocks || (shared[block >>> 3] & (1 << (block & 7))) !== 0;
}
