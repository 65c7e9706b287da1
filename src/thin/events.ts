// The stream every tool shares: dump produces it from disk, restore builds disk from it,
// repair produces it from salvaged nodes. Mappings arrive sorted by thin block, as runs.
// Fields that are u64 on disk are U64s (exact to 2^64-1).
import { U64 } from '../pdata/le.js';

export interface PoolInfo {
  uuid: string;
  time: number;
  transaction: U64;
  flags: number;
  version: number;
  dataBlockSize: number;
  nrDataBlocks: U64;
  /** Block of the held metadata snapshot, when the source names one. */
  metadataSnap?: number;
}

/** The --transaction-id, --data-block-size and --nr-data-blocks options: replace the source's values. */
export interface SuperblockOverrides {
  transactionId?: U64;
  dataBlockSize?: number;
  nrDataBlocks?: U64;
}

/** Just the overrides among `o` (a tool's options), none of its other fields. */
export function overridesIn(o: SuperblockOverrides): SuperblockOverrides {
  return { transactionId: o.transactionId, dataBlockSize: o.dataBlockSize, nrDataBlocks: o.nrDataBlocks };
}

export function applyOverrides(pool: PoolInfo, o: SuperblockOverrides): PoolInfo {
  return {
    ...pool,
    transaction: o.transactionId ?? pool.transaction,
    dataBlockSize: o.dataBlockSize ?? pool.dataBlockSize,
    nrDataBlocks: o.nrDataBlocks ?? pool.nrDataBlocks,
  };
}

export interface DeviceInfo {
  devId: number;
  mappedBlocks: U64;
  transaction: U64;
  creationTime: number;
  snapTime: number;
}

export interface MetadataVisitor {
  superblockBegin(pool: PoolInfo): void;
  superblockEnd(): void;
  deviceBegin(dev: DeviceInfo): void;
  deviceEnd(): void;
  /** `length` consecutive thin blocks from `thinBegin` map to data blocks from `dataBegin`, all at `time`. */
  mapRun(thinBegin: U64, dataBegin: number, length: number, time: number): void;
  /** Shared-subtree form: a named run of mappings defined once (`<def>`), then referenced. */
  defBegin?(name: string): void;
  defEnd?(): void;
  ref?(name: string): void;
}
