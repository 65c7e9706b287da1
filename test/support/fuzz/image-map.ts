// What each block of a metadata image is (superblock, node of which tree, space-map block), so
// mutations can aim at the blocks that matter and re-seal a block with the checksum of its kind.
// Built with our own walkers on the sound source images; damage in a source (the corrupted
// kernel images) just leaves the blocks behind it unclassified.
import { BlockReader } from '../../../src/io/block-io.js';
import { walkBTree } from '../../../src/pdata/btree/walk.js';
import { BITMAP_CSUM_XOR, BTREE_CSUM_XOR, INDEX_CSUM_XOR, SUPERBLOCK_CSUM_XOR, blockChecksum } from '../../../src/pdata/checksum.js';
import { REF_COUNT_VALUE_SIZE } from '../../../src/pdata/space-map/common.js';
import { readDiskIndex } from '../../../src/pdata/space-map/disk.js';
import { readMetadataIndex } from '../../../src/pdata/space-map/metadata.js';
import { DEVICE_DETAILS_SIZE } from '../../../src/thin/device-details.js';
import { MAPPING_VALUE_SIZE, readDeviceRoots } from '../../../src/thin/mapping-tree.js';
import { dataSpaceMapRoot, metadataSpaceMapRoot, readSuperblock } from '../../../src/thin/superblock.js';

export const BLOCK_ROLES = [
  'superblock', 'held-superblock', 'top-node', 'device-root', 'device-internal', 'device-leaf',
  'details-node', 'metadata-index', 'metadata-bitmap', 'data-index-node', 'data-bitmap', 'ref-count-node',
] as const;
export type BlockRole = (typeof BLOCK_ROLES)[number];

/** The live superblock's numbers that make values "interesting" (limits of the pool). */
export interface PoolFacts {
  nrDataBlocks: number;
  time: number;
  dataBlockSize: number;
  transactionId: bigint;
}

export interface ImageMap {
  nrBlocks: number;
  role: Map<number, BlockRole>;
  byRole: Map<BlockRole, number[]>;
  /** Mapped data blocks seen in the leaves (a sample), to make values collide with real ones. */
  dataBlocks: number[];
  devIds: number[];
  facts?: PoolFacts;
  hasMetadataSnap: boolean;
}

export function saltOf(role: BlockRole): number {
  switch (role) {
    case 'superblock':
    case 'held-superblock':
      return SUPERBLOCK_CSUM_XOR;
    case 'metadata-index':
      return INDEX_CSUM_XOR;
    case 'metadata-bitmap':
    case 'data-bitmap':
      return BITMAP_CSUM_XOR;
    default:
      return BTREE_CSUM_XOR;
  }
}

/** The salt a block is sealed with now, if any: how an unclassified block is re-sealed. */
export function currentSalt(block: Buffer): number | undefined {
  const stored = block.readUInt32LE(0);
  return [SUPERBLOCK_CSUM_XOR, BTREE_CSUM_XOR, BITMAP_CSUM_XOR, INDEX_CSUM_XOR].find((s) => blockChecksum(block, s) === stored);
}

const ignore = (): void => {};

export function mapImage(file: string): ImageMap {
  const io = new BlockReader(file);
  const role = new Map<number, BlockRole>();
  const dataBlocks: number[] = [];
  const devIds = new Set<number>();
  const mark = (b: number, r: BlockRole): void => {
    if (b < io.nrBlocks && !role.has(b)) role.set(b, r);
  };
  let facts: PoolFacts | undefined;
  let hasMetadataSnap = false;

  const mapPool = (location: number, sbRole: BlockRole): number => {
    let sb;
    try {
      sb = readSuperblock(io, location);
    } catch {
      return 0;
    }
    mark(location, sbRole);
    const tryPart = (fn: () => void): void => {
      try {
        fn();
      } catch {
        // a damaged part of a damaged source: its blocks stay unclassified
      }
    };
    tryPart(() => {
      const roots = readDeviceRoots(io, sb.dataMappingRoot, ignore, (b) => mark(b, 'top-node'));
      for (const dev of roots) {
        devIds.add(dev.devId);
        mark(dev.root, 'device-root');
        const leaves = new Set<number>();
        const refs: number[] = [];
        walkBTree(io, dev.root, MAPPING_VALUE_SIZE, {
          leaf(node) {
            leaves.add(node.block);
            if (dataBlocks.length < 4096 && node.nrEntries > 0) {
              dataBlocks.push(node.buf.readUInt32LE(node.valueOffset(0) + 4) * 256 + (node.buf.readUInt32LE(node.valueOffset(0)) >>> 24));
            }
          },
          nodeRef: (b) => refs.push(b),
          error: ignore,
        }, { allowUnderfull: true });
        for (const b of refs) mark(b, leaves.has(b) ? 'device-leaf' : 'device-internal');
      }
    });
    tryPart(() => walkBTree(io, sb.deviceDetailsRoot, DEVICE_DETAILS_SIZE, { leaf: ignore, nodeRef: (b) => mark(b, 'details-node'), error: ignore }));
    tryPart(() => {
      const root = metadataSpaceMapRoot(sb);
      mark(root.bitmapRoot, 'metadata-index');
      for (const e of readMetadataIndex(io, root)) mark(e.blocknr, 'metadata-bitmap');
      walkBTree(io, root.refCountRoot, REF_COUNT_VALUE_SIZE, { leaf: ignore, nodeRef: (b) => mark(b, 'ref-count-node'), error: ignore });
    });
    tryPart(() => {
      const root = dataSpaceMapRoot(sb);
      for (const e of readDiskIndex(io, root, { error: ignore, nodeRef: (b) => mark(b, 'data-index-node') })) {
        if (e.blocknr !== 0) mark(e.blocknr, 'data-bitmap');
      }
      walkBTree(io, root.refCountRoot, REF_COUNT_VALUE_SIZE, { leaf: ignore, nodeRef: (b) => mark(b, 'ref-count-node'), error: ignore });
    });
    if (location === 0) {
      facts = {
        nrDataBlocks: Number(dataSpaceMapRoot(sb).nrBlocks),
        time: sb.time,
        dataBlockSize: sb.dataBlockSize,
        transactionId: BigInt(sb.transactionId),
      };
    }
    return sb.heldRoot;
  };

  try {
    const held = mapPool(0, 'superblock');
    if (held !== 0 && held < io.nrBlocks) {
      hasMetadataSnap = true;
      mapPool(held, 'held-superblock');
    }
  } finally {
    io.close();
  }
  const byRole = new Map<BlockRole, number[]>();
  for (const [b, r] of role) {
    if (!byRole.has(r)) byRole.set(r, []);
    byRole.get(r)!.push(b);
  }
  return { nrBlocks: io.nrBlocks, role, byRole, dataBlocks, devIds: [...devIds].sort((a, b) => a - b), facts, hasMetadataSnap };
}
