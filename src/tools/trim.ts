// thin_trim as a library function: discard every data block no device maps, so thinly provisioned
// storage under the pool (an SSD, a sparse file) gets the space back. Offline: the metadata is
// only read, and it must pass the whole check first (the data space map is trusted to say what
// is free only when it agrees with the mappings).
import { openMetadataInput } from '../io/open.js';
import { Discarder } from '../io/discard.js';
import { openDiskSpaceMap } from '../pdata/space-map/disk.js';
import { spaceMapSize } from '../pdata/space-map/root.js';
import { dataSpaceMapRoot, readSuperblock } from '../thin/superblock.js';
import { checkMetadata } from './check.js';

export class TrimError extends Error {}

export interface TrimResult {
  /** Data blocks discarded, in how many ranges. */
  blocks: number;
  ranges: number;
}

export interface TrimOptions {
  /** Data blocks scanned so far, of all. */
  onProgress?: (done: number, total: number) => void;
}

export function trimDataDevice(metadataDev: string, dataDev: string, opts: TrimOptions = {}): TrimResult {
  const io = openMetadataInput(metadataDev);
  try {
    const verdict = checkMetadata(io);
    if (!verdict.ok) throw new TrimError(`${metadataDev}: the metadata fails the check (run thin_check); nothing discarded`);
    const sb = readSuperblock(io);
    const root = dataSpaceMapRoot(sb);
    const nrBlocks = spaceMapSize(root);
    const blockBytes = sb.dataBlockSize * 512;
    const wanted = nrBlocks * blockBytes;
    if (!Number.isSafeInteger(wanted)) throw new TrimError(`${metadataDev}: a data device of ${nrBlocks} blocks is beyond what can be trimmed`);
    const data = new Discarder(dataDev);
    try {
      if (data.size < wanted) throw new TrimError(`${dataDev}: unexpected data device size, wanted ${wanted} bytes, found ${data.size}`);
      const fail = (e: Error): never => {
        throw new TrimError(`${metadataDev}: data space map: ${e.message}`);
      };
      const sm = openDiskSpaceMap(io, root, { error: fail });
      const result: TrimResult = { blocks: 0, ranges: 0 };
      // A free run can span bitmaps: it is discarded when a used block (or the end) closes it.
      let freeFrom = -1;
      const close = (end: number) => {
        if (freeFrom < 0) return;
        data.discard(freeFrom * blockBytes, (end - freeFrom) * blockBytes);
        result.blocks += end - freeFrom;
        result.ranges++;
        freeFrom = -1;
      };
      sm.forEachBitmap({ error: fail }, (first, counts) => {
        for (let i = 0; i < counts.length; i++) {
          if (counts[i] === 0) {
            if (freeFrom < 0) freeFrom = first + i;
          } else {
            close(first + i);
          }
        }
        opts.onProgress?.(first + counts.length, nrBlocks);
      });
      close(nrBlocks);
      return result;
    } finally {
      data.close();
    }
  } finally {
    io.close();
  }
}
