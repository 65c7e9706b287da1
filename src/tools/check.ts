// thin_check as a library: validates a pool's metadata and streams what it finds.
// Stages follow the reference tools (superblock, devices tree, mapping tree, space map counts);
// on top of 0.9.0 it checks mapped_blocks, data blocks against nr_data_blocks and the data
// space map's counts, as the upstream 1.x tools do.
import { BlockReader, BLOCK_SIZE } from '../io/block-io.js';
import { BTreeError } from '../pdata/btree/walk.js';
import { U64 } from '../pdata/le.js';
import { RefCounts } from '../pdata/ref-counts.js';
import {
  ENTRIES_PER_BITMAP, IndexEntry, SpaceMapError, SpaceMapReader, SpaceMapSink,
} from '../pdata/space-map/common.js';
import { openDiskSpaceMap } from '../pdata/space-map/disk.js';
import { MAX_METADATA_BLOCKS, openMetadataSpaceMap, sharedMetadataBlocks } from '../pdata/space-map/metadata.js';
import { SpaceMapRoot, spaceMapSize } from '../pdata/space-map/root.js';
import { DeviceDetailsEntry, readDeviceDetails, readDeviceRoots } from '../thin/mapping-tree.js';
import { PoolLimits, PoolWalkFindings, PoolWalker, deviceListDefects } from '../thin/pool-walk.js';
import { SpaceMapTransaction } from '../thin/space-map-transaction.js';
import {
  NEEDS_CHECK_FLAG, SUPERBLOCK_LOCATION, Superblock, SuperblockError, dataSpaceMapRoot, metadataSpaceMapRoot,
  readSuperblock, MAX_DATA_BLOCK_SIZE, MIN_DATA_BLOCK_SIZE, validDataBlockSize,
} from '../thin/superblock.js';

export type Severity = 'fatal' | 'non-fatal';

/** What the check reports, in order: stage titles, findings (nested by depth) and the pool info. */
export type CheckEvent =
  | { kind: 'stage'; title: string }
  | { kind: 'error'; severity: Severity; depth: number; message: string }
  | { kind: 'detail'; depth: number; message: string }
  | { kind: 'info'; transactionId: U64; metadataFreeBlocks: number };

export interface CheckProgress {
  /** Metadata blocks referenced so far, against the metadata space map's allocated count. */
  done: number;
  total: number;
}

export interface CheckOptions {
  superBlockOnly?: boolean;
  /** Check the devices tree and the top level of the mapping tree only. */
  skipMappings?: boolean;
  /** Leaks (blocks counted but unreferenced) don't fail the check. */
  ignoreNonFatal?: boolean;
  /** Check the held metadata snapshot instead of the live metadata (no space map counts). */
  metadataSnap?: boolean;
  /**
   * Data blocks a live pool had allocated for IO still in flight when it committed: counted once
   * in the space map though no mapping holds them yet (thin_replay's own checks).
   */
  inFlightDataBlocks?: Iterable<number>;
  overrideMappingRoot?: number;
  overrideDetailsRoot?: number;
  onEvent?: (e: CheckEvent) => void;
  onProgress?: (p: CheckProgress) => void;
}

export interface CheckResult {
  ok: boolean;
  fatalErrors: number;
  nonFatalErrors: number;
  /** The live superblock, when it could be read. */
  superblock?: Superblock;
}

/** Differences listed per space map before the rest are only counted. */
const MAX_LISTED_DIFFERENCES = 32;
/** Out-of-range mappings listed per device before the rest are only counted. */
const MAX_LISTED_BAD_MAPPINGS = 4;
const PROGRESS_EVERY = 1024;

const METADATA_BLOCK_SECTORS = BLOCK_SIZE / 512;

class Reporter {
  fatal = 0;
  nonFatal = 0;
  constructor(private readonly emit: (e: CheckEvent) => void) {}

  stage(title: string): void {
    this.emit({ kind: 'stage', title });
  }

  error(depth: number, message: string, severity: Severity = 'fatal'): void {
    if (severity === 'fatal') this.fatal++;
    else this.nonFatal++;
    this.emit({ kind: 'error', severity, depth, message });
  }

  /** A fatal finding already summarised by another line. */
  countFatal(): void {
    this.fatal++;
  }

  detail(depth: number, message: string): void {
    this.emit({ kind: 'detail', depth, message });
  }

  info(transactionId: U64, metadataFreeBlocks: number): void {
    this.emit({ kind: 'info', transactionId, metadataFreeBlocks });
  }
}

/** Sizes and flags of a superblock that the kernel would refuse; returns the findings. */
function superblockDefects(sb: Superblock, io: BlockReader): string[] {
  const out: string[] = [];
  if (sb.version < 1 || sb.version > 2) out.push(`unsupported metadata version ${sb.version} (expected 1 or 2)`);
  if (sb.incompatFlags !== 0) out.push(`unknown incompatible feature flags 0x${sb.incompatFlags.toString(16)}`);
  if (sb.metadataBlockSize !== METADATA_BLOCK_SECTORS) {
    out.push(`metadata block size is ${sb.metadataBlockSize} sectors, expected ${METADATA_BLOCK_SECTORS}`);
  }
  const dbs = sb.dataBlockSize;
  if (!validDataBlockSize(dbs)) {
    out.push(`data block size ${dbs} sectors is not a multiple of ${MIN_DATA_BLOCK_SIZE} between ${MIN_DATA_BLOCK_SIZE} and ${MAX_DATA_BLOCK_SIZE}`);
  }
  let msm: SpaceMapRoot;
  let dsm: SpaceMapRoot;
  try {
    msm = metadataSpaceMapRoot(sb);
    dsm = dataSpaceMapRoot(sb);
  } catch (e) {
    out.push(`space map root is garbage: ${(e as Error).message}`);
    return out;
  }
  if (msm.nrBlocks > io.nrBlocks) {
    out.push(`metadata space map covers ${msm.nrBlocks} blocks but the metadata device holds only ${io.nrBlocks} (truncated?)`);
  }
  if (msm.nrBlocks > MAX_METADATA_BLOCKS) {
    out.push(`metadata space map covers ${msm.nrBlocks} blocks, more than the ${MAX_METADATA_BLOCKS} it can describe`);
  }
  if (msm.nrAllocated > msm.nrBlocks) {
    out.push(`metadata space map has ${msm.nrAllocated} blocks allocated out of ${msm.nrBlocks}`);
  }
  if (dsm.nrAllocated > dsm.nrBlocks) {
    out.push(`data space map has ${dsm.nrAllocated} blocks allocated out of ${dsm.nrBlocks}`);
  }
  for (const [what, b] of [
    ['mapping tree root', sb.dataMappingRoot],
    ['device details root', sb.deviceDetailsRoot],
    ['metadata space map index', msm.bitmapRoot],
    ['metadata ref-count tree root', msm.refCountRoot],
    ['data space map index root', dsm.bitmapRoot],
    ['data ref-count tree root', dsm.refCountRoot],
  ] as const) {
    if (b === SUPERBLOCK_LOCATION || b >= msm.nrBlocks) out.push(`${what} is block ${b}, outside the metadata (1-${spaceMapSize(msm) - 1})`);
  }
  return out;
}

/**
 * Checks the metadata read through `io`. Never writes. Findings arrive through `onEvent` as they
 * are made; the result says whether the pool passed.
 */
export function checkMetadata(io: BlockReader, opts: CheckOptions = {}): CheckResult {
  const rep = new Reporter(opts.onEvent ?? (() => {}));
  const result = (superblock?: Superblock): CheckResult => ({
    ok: rep.fatal === 0 && (rep.nonFatal === 0 || !!opts.ignoreNonFatal),
    fatalErrors: rep.fatal,
    nonFatalErrors: rep.nonFatal,
    superblock,
  });

  // ---- superblock
  rep.stage('examining superblock');
  let sb: Superblock;
  try {
    sb = readSuperblock(io, SUPERBLOCK_LOCATION);
  } catch (e) {
    if (!(e instanceof SuperblockError)) throw e;
    rep.error(1, 'superblock is corrupt');
    rep.detail(2, e.message);
    return result();
  }
  for (const defect of superblockDefects(sb, io)) {
    rep.error(1, 'superblock is corrupt');
    rep.detail(2, defect);
  }
  if (rep.fatal > 0) return result(sb);
  // Sound after superblockDefects: both below MAX_METADATA_BLOCKS.
  const msmRoot = metadataSpaceMapRoot(sb);
  const nrMetadataBlocks = Number(msmRoot.nrBlocks);
  const metadataAllocated = Number(msmRoot.nrAllocated);
  rep.info(sb.transactionId, nrMetadataBlocks - metadataAllocated);

  let target = sb;
  if (opts.metadataSnap) {
    if (sb.heldRoot === 0) {
      rep.error(1, 'no metadata snapshot is held (held_root is 0); run without -m');
      return result(sb);
    }
    try {
      target = readSuperblock(io, sb.heldRoot);
    } catch (e) {
      if (!(e instanceof SuperblockError)) throw e;
      rep.error(1, `superblock is corrupt: the metadata snapshot's copy at block ${sb.heldRoot}`);
      rep.detail(2, e.message);
      return result(sb);
    }
  }
  const mappingRoot = opts.overrideMappingRoot ?? target.dataMappingRoot;
  const detailsRoot = opts.overrideDetailsRoot ?? target.deviceDetailsRoot;
  if (opts.superBlockOnly) return result(sb);

  // ---- devices tree and top level of the mapping tree (full reads: they are small)
  rep.stage('examining devices tree');
  const details = detailsById(readDeviceDetails(io, detailsRoot, (err) => {
    rep.error(1, `missing devices: dev ids ${err.keys} of the device details tree`);
    rep.detail(2, err.message);
  }));

  rep.stage(opts.skipMappings ? 'examining top level of mapping tree' : 'examining mapping tree');
  const roots = readDeviceRoots(io, mappingRoot, (err) => {
    rep.error(1, `missing all mappings for devices: dev ids ${err.keys} of the mapping tree's top level`);
    rep.detail(2, err.message);
  });
  if (opts.skipMappings) {
    // Without the walk there are no counts to judge mapped_blocks by, only the device sets.
    const walker = new PoolWalker(io, { nrDataBlocks: 0, time: sb.time }, NO_COUNTS, () => true);
    for (const defect of deviceListDefects(details, roots, walker, new Set())) rep.error(1, defect);
    return result(sb);
  }

  // ---- every device's mappings, counting references as we go
  const live = !opts.metadataSnap;
  const metaCounts = live ? new MetadataCounts(nrMetadataBlocks) : undefined;
  const dataCounts = live ? new RefCounts() : undefined;
  let lastProgress = 0;
  const nrDataBlocks = spaceMapSize(dataSpaceMapRoot(sb));
  const walker = new PoolWalker(io, { nrDataBlocks, time: sb.time }, {
    metadataRef(block) {
      if (!metaCounts) return;
      metaCounts.inc(block);
      if (opts.onProgress && metaCounts.references - lastProgress >= PROGRESS_EVERY) {
        lastProgress = metaCounts.references;
        opts.onProgress({ done: lastProgress, total: metadataAllocated });
      }
    },
    dataRefs: (first, n) => dataCounts?.incRange(first, n),
  }, sharedMetadataBlocks(io, msmRoot));

  metaCounts?.inc(SUPERBLOCK_LOCATION);
  // Damage in the two small trees was reported by the full reads above.
  const findings = mappingFindings(rep, '', false, walker.limits);
  const damaged = walker.walkPool(mappingRoot, detailsRoot, findings);
  findings.finish();
  for (const defect of deviceListDefects(details, roots, walker, damaged)) rep.error(1, defect);
  if (!live || rep.fatal > 0) return result(sb);

  // ---- space map counts
  rep.stage('checking space map counts');
  if (sb.heldRoot !== 0) {
    metaCounts!.inc(sb.heldRoot);
    checkHeldSnapshot(io, rep, walker, sb.heldRoot);
    if (rep.fatal > 0) return result(sb);
  }
  for (const b of opts.inFlightDataBlocks ?? []) dataCounts?.inc(b);
  checkSpaceMaps(io, rep, sb, metaCounts!, dataCounts!);
  opts.onProgress?.({ done: metadataAllocated, total: metadataAllocated });
  return result(sb);
}

const NO_COUNTS = { metadataRef() {}, dataRefs() {} };

function detailsById(entries: DeviceDetailsEntry[]): Map<number, DeviceDetailsEntry> {
  return new Map(entries.map((d) => [d.devId, d]));
}

/**
 * How the check reports what a pool walk finds. `where` prefixes findings in the held snapshot;
 * `topTrees` reports damage in the details tree and the top level too (for the live metadata,
 * the full reads report those).
 */
function mappingFindings(rep: Reporter, where: string, topTrees: boolean, limits: PoolLimits): PoolWalkFindings & { finish(): void } {
  const beyond = new Map<number, number>();
  const newer = new Map<number, number>();
  /** The first few of a device's bad mappings of one kind are listed, the rest counted. */
  const listed = (seen: Map<number, number>, devId: number, message: () => string): void => {
    const n = (seen.get(devId) ?? 0) + 1;
    seen.set(devId, n);
    if (n <= MAX_LISTED_BAD_MAPPINGS) rep.error(1, message());
  };
  const ignore = (): void => {};
  return {
    detailsDamage: topTrees ? (err) => {
      rep.error(1, `${where}missing devices: dev ids ${err.keys} of the device details tree`);
      rep.detail(2, err.message);
    } : ignore,
    topLevelDamage: topTrees ? (err) => {
      rep.error(1, `${where}missing all mappings for devices: dev ids ${err.keys} of the mapping tree's top level`);
      rep.detail(2, err.message);
    } : ignore,
    deviceDamage(devId, err) {
      rep.error(1, `${where}thin device ${devId} is missing mappings: thin blocks ${err.keys}`);
      rep.detail(2, err.message);
    },
    beyondDataDevice(devId, thinBlock, dataBlock, leaf) {
      listed(beyond, devId, () => `${where}thin device ${devId} maps thin block ${thinBlock} to data block ${dataBlock}, ` +
        `beyond the end of the data device (${limits.nrDataBlocks} blocks) (leaf block ${leaf})`);
    },
    newerThanPool(devId, thinBlock, time, leaf) {
      listed(newer, devId, () => `${where}thin device ${devId} maps thin block ${thinBlock} at time ${time}, ` +
        `later than the pool's time ${limits.time} (leaf block ${leaf})`);
    },
    /** The unlisted bad mappings, one line a device and kind. */
    finish() {
      for (const [seen, what] of [[beyond, 'beyond the end of the data device'], [newer, "later than the pool's time"]] as const) {
        for (const [devId, n] of seen) {
          if (n > MAX_LISTED_BAD_MAPPINGS) rep.error(1, `${where}thin device ${devId} has ${n - MAX_LISTED_BAD_MAPPINGS} more mappings ${what}`);
        }
      }
    },
  };
}

/** The held metadata snapshot: its superblock copy and the trees it keeps alive. */
function checkHeldSnapshot(io: BlockReader, rep: Reporter, walker: PoolWalker, heldRoot: number): void {
  const where = `metadata snapshot (block ${heldRoot}): `;
  let snap: Superblock;
  try {
    snap = readSuperblock(io, heldRoot);
  } catch (e) {
    if (!(e instanceof SuperblockError)) throw e;
    rep.error(1, `${where}superblock copy is corrupt`);
    rep.detail(2, e.message);
    return;
  }
  const findings = mappingFindings(rep, where, true, walker.limits);
  const damaged = walker.walkPool(snap.dataMappingRoot, snap.deviceDetailsRoot, findings);
  findings.finish();
  if (rep.fatal > 0) return;
  // Full reads for the device lists: the walk above skipped leaves shared with the live trees.
  const details = detailsById(readDeviceDetails(io, snap.deviceDetailsRoot, () => {}));
  const roots = readDeviceRoots(io, snap.dataMappingRoot, () => {});
  for (const defect of deviceListDefects(details, roots, walker, damaged)) rep.error(1, `${where}${defect}`);
}

/** Expected counts of metadata blocks, and references to blocks the space map doesn't cover. */
class MetadataCounts {
  readonly counts = new RefCounts();
  /** block -> times referenced, for blocks at or past nr_blocks. */
  readonly outside = new Map<number, number>();
  references = 0;

  constructor(readonly nrBlocks: number) {}

  inc(block: number): void {
    this.references++;
    if (block < this.nrBlocks) this.counts.inc(block);
    else this.outside.set(block, (this.outside.get(block) ?? 0) + 1);
  }
}

/** Runs of consecutive blocks whose (expected, actual) counts differ the same way, listed with a cap. */
class DifferenceList {
  private start = -1;
  private end = -1;
  private expected = 0;
  private actual = 0;
  listed = 0;
  unlisted = 0;
  leaked = 0;

  constructor(private readonly rep: Reporter, private readonly kind: 'metadata' | 'data') {}

  add(block: number, expected: number, actual: number): void {
    if (expected === 0 && actual === 1) this.leaked++;
    if (this.start >= 0 && block === this.end + 1 && expected === this.expected && actual === this.actual) {
      this.end = block;
      return;
    }
    this.flush();
    this.start = this.end = block;
    this.expected = expected;
    this.actual = actual;
  }

  flush(): void {
    if (this.start < 0) return;
    const leak = this.expected === 0 && this.actual === 1;
    const blocks = this.start === this.end ? `${this.kind} block ${this.start}` : `${this.kind} blocks ${this.start}-${this.end}`;
    const n = this.end - this.start + 1;
    if (this.listed < MAX_LISTED_DIFFERENCES) {
      this.listed++;
      const message = leak
        ? `${blocks}: counted once in the space map but referenced by nothing (leaked)`
        : `reference counts differ for ${blocks}: expected ${this.expected}, but the space map says ${this.actual}`;
      // Leaks are reported by the summary below; only real differences count as fatal here.
      if (leak) this.rep.detail(1, message);
      else this.rep.error(1, message);
    } else {
      if (!leak) this.rep.countFatal();
      this.unlisted += n;
    }
    this.start = -1;
  }

  finish(): void {
    this.flush();
    if (this.unlisted > 0) this.rep.detail(1, `... and ${this.unlisted} more ${this.kind} blocks whose counts differ`);
    if (this.leaked > 0) {
      this.rep.error(1, `${this.leaked} ${this.kind} blocks have leaked (the space map counts them but nothing references them)`, 'non-fatal');
    }
  }
}

/**
 * Compares one on-disk space map with the counts computed from the trees, reading its bitmaps and
 * its ref-count tree side by side in block order.
 */
function compareSpaceMap(
  rep: Reporter,
  kind: 'metadata' | 'data',
  sm: SpaceMapReader,
  expectedRange: (first: number, n: number) => Uint32Array,
  sink: SpaceMapSink,
): number {
  const diffs = new DifferenceList(rep, kind);
  let allocated = 0;
  const overflow = sm.overflowEntries(sink);
  // Tree entries whose bitmap entry is not 3: only in damaged metadata, listed after the counts.
  const unmatched: [number, number][] = [];
  const passOverflowBefore = (block: number): void => {
    for (; overflow.block < block; overflow.next()) unmatched.push([overflow.block, overflow.count]);
  };
  sm.forEachBitmap(sink, (first, counts, bitmapBlock) => {
    const expectedCounts = expectedRange(first, counts.length);
    allocated += nonZero(counts);
    for (let i = needsLook(counts, expectedCounts, 0); i < counts.length; i = needsLook(counts, expectedCounts, i + 1)) {
      let actual = counts[i];
      const expected = expectedCounts[i];
      const block = first + i;
      if (actual === 3) {
        passOverflowBefore(block);
        if (overflow.block !== block) {
          rep.error(1, `${kind} block ${block}: its bitmap (block ${bitmapBlock}) says 3 or more references, but the ref-count tree has no entry for it`);
          continue;
        }
        actual = overflow.count;
        overflow.next();
      }
      if (expected !== actual) diffs.add(block, expected, actual);
    }
  });
  diffs.finish();
  passOverflowBefore(Infinity);
  for (const [block, count] of unmatched) {
    rep.error(1, `${kind} block ${block}: the ref-count tree holds a count of ${count}, but its bitmap entry is not 3 (or the block is outside the space map)`);
  }
  return allocated;
}

/**
 * The hot loops of the comparison, each a small function of typed arrays: V8 optimises them at
 * the first bitmap, and the rare cases (counts of 3, differences) run outside them, so a case
 * first met late no longer throws the optimised loop away.
 */
function nonZero(counts: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < counts.length; i++) n += counts[i] !== 0 ? 1 : 0;
  return n;
}

/** The first entry from `i` whose count differs from the expected one or is 3 (see the tree). */
function needsLook(counts: Uint8Array, expected: Uint32Array, i: number): number {
  for (; i < counts.length; i++) {
    const actual = counts[i];
    if (actual !== expected[i] || actual === 3) return i;
  }
  return i;
}

function checkSpaceMaps(io: BlockReader, rep: Reporter, sb: Superblock, metaCounts: MetadataCounts, dataCounts: RefCounts): void {
  const msmRoot = metadataSpaceMapRoot(sb);
  const dsmRoot = dataSpaceMapRoot(sb);
  const sinkFor = (name: string, count: boolean): SpaceMapSink => ({
    nodeRef: count ? (b) => metaCounts.inc(b) : undefined,
    error: (err: SpaceMapError | BTreeError) => {
      rep.error(1, `${name} is damaged`);
      rep.detail(2, err.message);
    },
  });

  // First count every block the space maps occupy, so the comparison below sees all references.
  let metadataSm: SpaceMapReader;
  try {
    metadataSm = openMetadataSpaceMap(io, msmRoot, sinkFor('metadata space map', true));
  } catch (e) {
    if (!(e instanceof SpaceMapError)) throw e;
    rep.error(1, 'metadata space map is damaged');
    rep.detail(2, e.message);
    return;
  }
  metadataSm.visitOverflowTree(sinkFor('metadata space map ref-count tree', true));
  const dataSm = openDiskSpaceMap(io, dsmRoot, sinkFor('data space map index', true));
  dataSm.visitOverflowTree(sinkFor('data space map ref-count tree', true));
  for (const e of [...metadataSm.index, ...dataSm.index] as IndexEntry[]) if (e.blocknr !== 0) metaCounts.inc(e.blocknr);
  if (rep.fatal > 0) return;

  for (const [block, n] of metaCounts.outside) {
    rep.error(1, `metadata block ${block} is referenced ${n} time(s) but lies outside the metadata space map (${msmRoot.nrBlocks} blocks)`);
  }
  const expected = new Uint32Array(ENTRIES_PER_BITMAP);
  const expectedFrom = (counts: RefCounts) => (first: number, n: number): Uint32Array => {
    const out = expected.subarray(0, n);
    counts.fillBitmap(first / ENTRIES_PER_BITMAP, out);
    return out;
  };
  compareSpaceMap(rep, 'metadata', metadataSm, expectedFrom(metaCounts.counts), sinkFor('metadata space map', false));
  const dataAllocated = compareSpaceMap(rep, 'data', dataSm, expectedFrom(dataCounts), sinkFor('data space map', false));
  if (rep.fatal > 0) return;
  // The metadata space map's nr_allocated is not compared: the 0.9.0 thin_restore/thin_repair
  // leave it one above its bitmaps, the kernel only reports it as free space, and the reference
  // tools accept such metadata, so failing it would fail pools they wrote.
  if (dataAllocated !== dsmRoot.nrAllocated) {
    rep.error(1, `data space map root says ${dsmRoot.nrAllocated} blocks are allocated, but its bitmaps count ${dataAllocated}`);
  }
}

/**
 * Clears NEEDS_CHECK in the superblock of the metadata at `path`: thin_check's only write, made
 * only after a passing check, and committed as the kernel commits (nothing else changes: the
 * superblock is written with only its flags and checksum different, then synced). Opened as
 * every output is: a block device exclusively, so never under a live pool. Returns false if the
 * flag wasn't set.
 */
export function clearNeedsCheckFlag(path: string): boolean {
  const tx = new SpaceMapTransaction(path);
  try {
    const flags = tx.superblock.flags;
    if ((flags & NEEDS_CHECK_FLAG) === 0) return false;
    tx.commit(flags & ~NEEDS_CHECK_FLAG);
    return true;
  } finally {
    tx.close();
  }
}
