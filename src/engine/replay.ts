// thin_replay as a library: runs a trace on a pool (metadata file, optional data file) and checks
// the pool against the model after every step. The pool decides, the model predicts: which data
// block each allocation gets, whether a write copies, what every read returns, when the pool
// commits, refuses, runs out of space or changes mode. Any disagreement is a mismatch naming the
// trace line.
//
// IO goes through io-path.ts, a bio at a time, or, between `parallel` and `end`, all at once under
// a seeded scheduler; then serial-order.ts says whether each block ended as some serial order of
// its operations would leave it. Around the IO this file keeps what a pool does over time: its
// commits (messages, flushes, the worker's each second of the virtual clock), its modes (out of
// data space with writes waiting up to the no-space timeout, read-only after an aborted
// transaction, fail), external origins, and the final comparison of the metadata with the model.
import * as fs from 'node:fs';
import { BLOCK_SIZE, BlockReader, BlockWriter, InputError } from '../io/block-io.js';
import { refuseOutputOverInput } from '../io/open.js';
import { CrashError, ForwardingStore } from '../pdata/block-manager.js';
import { U64 } from '../pdata/le.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map/metadata.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { CommitCause, Pool, PoolError, PoolMode } from '../thin/pool.js';
import { readMetadata } from '../thin/read-metadata.js';
import { NEEDS_CHECK_FLAG, readSuperblock } from '../thin/superblock.js';
import { checkMetadata } from '../tools/check.js';
import { SECTOR_BYTES } from './content.js';
import { DataFile } from './data-file.js';
import { Bio, IoHost, IoPath, seededRandom } from './io-path.js';
import { Model, ModelDevice, UNKNOWN } from './model.js';
import { ExternalOrigin } from './origin.js';
import { LineProblem, Problem, ProblemKind, mismatch, refused } from './problem.js';
import { BlockOp, BlockState, UnmappedContent, describeState, serialOrder } from './serial-order.js';
import { PoolLine, TraceError, TraceOp, readTrace } from './trace.js';

export type { Problem, ProblemKind };

export interface ReplayOptions {
  trace: string;
  metadata: string;
  /** The data file; without it the model is kept but no data is written or read. */
  data?: string;
  /** Seeds the interleaving of IO in flight (`parallel` ... `end`); default 1. */
  seed?: number;
  /**
   * Count IO in the deferred set before it locks its cell, as dm-thin did before its fix for
   * discards racing writes: IO in flight can then deadlock.
   */
  preFixDiscardOrdering?: boolean;
  /** Files that are external origins, by device id (for the trace's `external_origin` lines). */
  externalOrigins?: ReadonlyMap<number, string>;
  /** Run our full check after every commit. */
  verifyEveryCommit?: boolean;
  /** Lose every metadata write after the Nth (counting from 1), then reopen and compare. */
  crashAt?: number;
  /** Go on after a refusal or mismatch. */
  keepGoing?: boolean;
  /** Metadata blocks cached (default 8192: 32 MiB, the working set of a million random writes). */
  cacheBlocks?: number;
  /** Sync the metadata at each commit (default true). */
  sync?: boolean;
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  /** Called after every commit, with the trace line that caused it (0 for the format). */
  afterCommit?: (line: number) => void;
}

/** The pool entered `mode` at trace line `line` (0: opening it, or the end of the trace), because of `cause`. */
export interface ModeChange {
  line: number;
  mode: PoolMode;
  cause: string;
}

export interface ReplaySummary {
  trace: string;
  operations: number;
  commits: number;
  dataBlocks: { allocated: number; copied: number; shared: number; freed: number; punched: number; verified: number };
  metadataBlocks: { reads: number; writes: number; used: number; total: number };
  mode: PoolMode;
  /** Every change of the pool's mode, and the no-space timeout, with their trace lines. */
  modes: ModeChange[];
  /** IO in flight: `parallel` blocks run, their bios, and how often a bio waited for a cell or earlier IO. */
  inFlight: { blocks: number; bios: number; waits: number; seed: number };
  problems: Problem[];
  /** The final comparison of the metadata with the model, and our check of it. */
  verification: 'passed' | 'failed';
  crash?: { at: number; happened: boolean; commitsBefore: number };
  seconds: number;
  ok: boolean;
}

/** Problems listed before the rest are only counted (a wrong pool can disagree everywhere). */
const MAX_PROBLEMS = 100;
/** dm-thin's no_space_timeout: how long writes wait for data space before they fail. */
const NO_SPACE_TIMEOUT = 60;

/** The default metadata size: 48 bytes per data block and 4 MiB, as lvm would size it, capped. */
export function defaultMetadataBlocks(nrDataBlocks: number): number {
  return Math.min(MAX_METADATA_BLOCKS, Math.ceil((nrDataBlocks * 48) / BLOCK_SIZE) + 1024);
}

/** The metadata writes a store let through, a simulated crash after the Nth, and failing writes. */
class CountingStore extends ForwardingStore {
  writes = 0;
  crashed = false;
  /** The trace line of `fail_metadata_writes` while writes fail, else 0. */
  failingSince = 0;
  constructor(inner: BlockWriter, private readonly crashAt: number | undefined) {
    super(inner);
  }
  write(b: number, data: Buffer): void {
    this.failIfFailing(b);
    const allowed = this.allow(data.length / BLOCK_SIZE);
    if (allowed > 0) this.inner.write(b, allowed * BLOCK_SIZE === data.length ? data : data.subarray(0, allowed * BLOCK_SIZE));
    this.crashIfDue();
  }
  writeBlocks(b: number, blocks: Buffer[]): void {
    this.failIfFailing(b);
    const allowed = this.allow(blocks.length);
    if (allowed > 0) this.inner.writeBlocks(b, allowed === blocks.length ? blocks : blocks.slice(0, allowed));
    this.crashIfDue();
  }
  private failIfFailing(b: number): void {
    if (this.failingSince) throw new Error(`writing metadata block ${b} failed (fail_metadata_writes at line ${this.failingSince})`);
  }
  /** How many of `n` block writes reach the device before the crash. */
  private allow(n: number): number {
    if (this.crashed) throw new CrashError('crashed');
    const allowed = this.crashAt === undefined ? n : Math.max(0, Math.min(n, this.crashAt - this.writes));
    this.writes += allowed;
    if (allowed < n) this.crashed = true;
    return allowed;
  }
  private crashIfDue(): void {
    if (this.crashed) throw new CrashError(`crash after metadata write ${this.crashAt}`);
  }
  sync(): void {
    if (this.crashed) throw new CrashError('crashed');
    this.inner.sync();
  }
}

function isFormatted(path: string): boolean {
  if (!fs.existsSync(path)) return false;
  const io = new BlockReader(path);
  try {
    if (io.nrBlocks < 1) return false;
    return io.read(0).some((b) => b !== 0);
  } finally {
    io.close();
  }
}

export function replay(opts: ReplayOptions): ReplaySummary {
  return new Replay(opts).run();
}

class Replay implements IoHost {
  pool!: Pool;
  model!: Model;
  data: DataFile | undefined;
  zero = true;
  passdown = true;
  /** error_if_no_space as the pool's table says it. */
  private tableErrorIfNoSpace = false;
  /** The no-space timeout expired: writes needing a block fail at once until the pool is reloaded. */
  private noSpaceTimedOut = false;
  /** When writes waiting for data space fail, on the virtual clock (armed when the pool runs out). */
  private noSpaceDeadline: number | null = null;
  readonly origins = new Map<number, ExternalOrigin>();
  private readonly unusedOriginFiles: Map<number, string>;
  line = 0;
  private store!: CountingStore;
  private io!: IoPath;
  private readonly random: () => number;
  private sectorsPerBlock = 0;
  private blockBytes = 0;
  private clock = 0;
  private lastWorkerCommit = 0;
  private operations = 0;
  private readonly problems: Problem[] = [];
  private problemCount = 0;
  private readonly modes: ModeChange[] = [];
  private readonly inFlight = { blocks: 0, bios: 0 };
  /** The operations of the `parallel` block being read, and its line. */
  private block: TraceOp[] | null = null;
  private blockLine = 0;
  /** IO in flight deadlocked: the replay cannot go on. */
  private deadlocked = false;
  /** The IO of a `parallel` block is running (what waits for space goes again after it). */
  private inFlightRunning = false;
  private readonly started = Date.now();

  constructor(private readonly opts: ReplayOptions) {
    this.random = seededRandom(opts.seed ?? 1);
    this.unusedOriginFiles = new Map(opts.externalOrigins ?? []);
  }

  get errorIfNoSpace(): boolean {
    return this.tableErrorIfNoSpace || this.noSpaceTimedOut;
  }

  run(): ReplaySummary {
    // An external origin is read-only: the pool's own files must not be one.
    for (const file of this.unusedOriginFiles.values()) {
      for (const output of [this.opts.metadata, this.opts.data]) if (output !== undefined) refuseOutputOverInput(file, output);
    }
    const total = fs.existsSync(this.opts.trace) ? fs.statSync(this.opts.trace).size : 0;
    const ops = readTrace(this.opts.trace, (bytes) => this.opts.onProgress?.(bytes, total));
    let first = ops.next();
    let crashed = false;
    let stopped = false;
    try {
      try {
        this.setup(first.done ? undefined : first.value);
        if (!first.done && first.value.kind === 'pool') first = ops.next();
        for (let it = first; !it.done; it = ops.next()) {
          const op = it.value;
          this.line = op.line;
          this.operations++;
          if ((!this.execute(op) && !this.opts.keepGoing) || this.deadlocked) {
            stopped = true;
            break;
          }
        }
        if (!stopped) this.teardown();
      } catch (e) {
        if (!(e instanceof CrashError)) throw e;
        crashed = true;
      }
      const verification = crashed ? this.recoverFromCrash() : this.verifyFinal(stopped);
      return this.summary(verification, crashed);
    } finally {
      for (const o of this.origins.values()) o.close();
    }
  }

  // ---- setup

  private setup(first: TraceOp | undefined): void {
    const poolLine = first?.kind === 'pool' ? (first as PoolLine & { line: number }) : undefined;
    if (poolLine) {
      this.zero = poolLine.zero;
      this.passdown = poolLine.discardPassdown;
      this.tableErrorIfNoSpace = poolLine.errorIfNoSpace;
    }
    const path = this.opts.metadata;
    const poolOpts = {
      cacheBlocks: this.opts.cacheBlocks ?? 8192,
      sync: this.opts.sync,
      onCommit: (cause: CommitCause) => this.onCommit(cause),
      onModeChange: (mode: PoolMode, cause: string) => this.onModeChange(mode, cause),
    };
    if (!isFormatted(path)) {
      if (!poolLine) throw new InputError(`${path}: no pool metadata there, and ${this.opts.trace} has no pool line to format one`);
      this.line = poolLine.line;
      const blocks = Math.min(MAX_METADATA_BLOCKS, poolLine.metadataBlocks ?? defaultMetadataBlocks(poolLine.nrDataBlocks));
      if (!fs.existsSync(path)) fs.writeFileSync(path, '');
      if (fs.statSync(path).isFile() && fs.statSync(path).size < blocks * BLOCK_SIZE) fs.truncateSync(path, blocks * BLOCK_SIZE);
      this.store = new CountingStore(new BlockWriter(path), this.opts.crashAt);
      this.model = new Model(poolLine.nrDataBlocks, poolLine.dataBlockSize, this.opts.data !== undefined);
      try {
        this.pool = Pool.format(this.store, { dataBlockSize: poolLine.dataBlockSize, nrDataBlocks: poolLine.nrDataBlocks }, poolOpts);
      } catch (e) {
        if (e instanceof PoolError) throw new TraceError(this.opts.trace, poolLine.line, e.message);
        throw e;
      }
    } else {
      this.store = new CountingStore(new BlockWriter(path), this.opts.crashAt);
      this.pool = Pool.open(this.store, poolOpts);
      this.model = loadModel(path, this.pool.dataBlockSize, this.opts.data !== undefined);
      if (this.pool.mode !== 'write') this.modes.push({ line: 0, mode: this.pool.mode, cause: 'needs_check is set: the pool opens read-only' });
      if (poolLine) {
        this.line = poolLine.line;
        if (poolLine.dataBlockSize !== this.pool.dataBlockSize) {
          throw new TraceError(this.opts.trace, poolLine.line, `the pool's data block size is ${this.pool.dataBlockSize} sectors, not ${poolLine.dataBlockSize}`);
        }
        if (poolLine.nrDataBlocks < this.pool.nrDataBlocks) {
          throw new TraceError(this.opts.trace, poolLine.line, `the pool has ${this.pool.nrDataBlocks} data blocks; the data device cannot shrink to ${poolLine.nrDataBlocks}`);
        }
        if (poolLine.nrDataBlocks > this.pool.nrDataBlocks) this.resize(poolLine.nrDataBlocks);
      }
    }
    this.sectorsPerBlock = this.pool.dataBlockSize;
    this.blockBytes = this.sectorsPerBlock * SECTOR_BYTES;
    if (this.opts.data) this.data = new DataFile(this.opts.data, this.blockBytes, this.pool.nrDataBlocks);
    this.io = new IoPath(this, this.opts.preFixDiscardOrdering);
  }

  // ---- commits and modes

  /** Every commit the pool makes: the model's transaction ends too. */
  private onCommit(cause: CommitCause): void {
    if (cause === 'metadata-reserve' && this.io?.allocating) {
      this.io.commitAfterAllocation = true;
      return;
    }
    this.committed();
  }

  committed(): void {
    this.model.commit();
    this.io?.writtenSinceCommit.clear();
    this.data?.commitPunches();
    if (this.opts.verifyEveryCommit) this.checkOnDisk('after a commit');
    this.opts.afterCommit?.(this.line);
  }

  private onModeChange(mode: PoolMode, cause: string): void {
    this.modes.push({ line: this.line, mode, cause });
    // dm-thin arms the no-space timeout when the pool runs out of data space and queues IO.
    if (mode === 'out-of-data-space' && !this.errorIfNoSpace && this.noSpaceDeadline === null) this.noSpaceDeadline = this.clock + NO_SPACE_TIMEOUT;
  }

  /** Our full check of the metadata as committed. */
  private checkOnDisk(when: string): boolean {
    const io = new BlockReader(this.opts.metadata);
    const findings: string[] = [];
    let ok: boolean;
    try {
      ok = checkMetadata(io, {
        inFlightDataBlocks: this.model.unmappedAllocations,
        onEvent: (e) => {
          if (e.kind === 'error') findings.push(e.message);
        },
      }).ok;
    } finally {
      io.close();
    }
    if (!ok) this.problem('check', `thin_check fails ${when}: ${findings[0] ?? 'see thin_check'}${findings.length > 1 ? ` (and ${findings.length - 1} more)` : ''}`);
    return ok;
  }

  /** A commit the trace asks for (a flush): only when something changed, as in the kernel. */
  private commitIfChanged(worker: boolean): void {
    if (!this.pool.changed) return;
    this.poolCommit();
    if (worker) this.lastWorkerCommit = this.clock;
  }

  private poolCommit(): void {
    try {
      this.pool.commit();
    } catch (e) {
      throw this.poolFailure(e);
    }
    this.retryWaitingForSpace();
  }

  /**
   * A commit point (`commit`, `status`, a flush): a writable pool commits what changed; a
   * read-only one writes the needs_check flag its abort could not, and fails if it cannot.
   */
  private commitPoint(worker: boolean): void {
    const mode = this.pool.mode;
    if (mode === 'read-only' || mode === 'out-of-metadata-space') {
      try {
        this.pool.flushNeedsCheck();
      } catch (e) {
        throw this.poolFailure(e);
      }
      return;
    }
    if (mode !== 'fail') this.commitIfChanged(worker);
  }

  /** The worker commits on its own once a second has passed since its last commit. */
  private periodicCommit(): void {
    if (this.clock - this.lastWorkerCommit >= 1 && this.pool.mode !== 'fail' && this.pool.changed) this.commitIfChanged(true);
  }

  // ---- problems

  private problem(kind: ProblemKind, message: string, line = this.line): void {
    this.problemCount++;
    if (this.problems.length < MAX_PROBLEMS) this.problems.push({ line, kind, message });
  }

  report(problem: LineProblem, line: number): void {
    this.problem(problem.kind, problem.message, line);
  }

  /** A refusal from the pool: follow a pool that aborted; what to report. */
  poolFailure(e: unknown): LineProblem {
    if (!(e instanceof PoolError)) throw e;
    if (e.reason === 'aborted') {
      // The metadata is back at the last commit: what this transaction freed is mapped again.
      this.model.rollback();
      this.data?.dropPunches();
    }
    if (e.reason === 'refused') return new LineProblem('mismatch', `the pool refused (${e.message}) what the model accepts`);
    return new LineProblem('refused', e.message);
  }

  // ---- operations

  /** Runs one operation; false if it was refused or disagreed with the model. */
  private execute(op: TraceOp): boolean {
    const before = this.problemCount;
    if (this.block && op.kind !== 'end') {
      this.block.push(op);
      return true;
    }
    try {
      this.dispatch(op);
    } catch (e) {
      if (e instanceof LineProblem) this.problem(e.kind, `${opText(op)}: ${e.message}`);
      else if (e instanceof PoolError) this.problem('refused', `${opText(op)}: ${e.message}`);
      else throw e;
    }
    return this.problemCount === before;
  }

  /** Runs an operation among IO in flight: its failure names it. */
  private dispatchNamed(op: TraceOp): void {
    try {
      this.dispatch(op);
    } catch (e) {
      if (e instanceof LineProblem) throw new LineProblem(e.kind, `${opText(op)}: ${e.message}`);
      if (e instanceof PoolError) throw new LineProblem('refused', `${opText(op)}: ${e.message}`);
      throw e;
    }
  }

  private dispatch(op: TraceOp): void {
    switch (op.kind) {
      case 'pool':
        refused('pool must be the first operation');
        break;
      case 'create_thin':
        return this.message(this.model.device(op.dev) ? `device ${op.dev} already exists` : null, () => this.pool.createThin(op.dev), () => this.model.createThin(op.dev));
      case 'create_snap': {
        const refusal = this.model.device(op.dev) ? `device ${op.dev} already exists` : !this.model.device(op.origin) ? `origin device ${op.origin} does not exist` : null;
        return this.message(refusal, () => this.pool.createSnap(op.dev, op.origin), () => this.model.createSnap(op.dev, op.origin));
      }
      case 'delete':
        return this.message(this.model.device(op.dev) ? null : `device ${op.dev} does not exist`, () => this.pool.deleteDevice(op.dev), () => this.model.deleteDevice(op.dev));
      case 'merge': {
        const { dev, origin } = op;
        const refusal = dev === origin ? `device ${dev} cannot be merged into itself` : !this.model.device(dev) ? `snapshot device ${dev} does not exist` : !this.model.device(origin) ? `origin device ${origin} does not exist` : null;
        return this.message(refusal, () => this.pool.mergeSnapshot(dev, origin), () => this.model.merge(dev, origin));
      }
      case 'set_transaction_id': {
        const refusal = op.current === this.model.transactionId ? null : `transaction id is ${this.model.transactionId}, not ${op.current}`;
        return this.message(refusal, () => this.pool.setTransactionId(op.current, op.next), () => this.model.setTransactionId(op.next));
      }
      case 'reserve_metadata_snap':
        // Commits first, then refuses a second one.
        return this.message(this.model.held ? 'a metadata snapshot is already held' : null, () => this.pool.reserveMetadataSnap(), () => this.model.reserveMetadataSnap(), this.model.held ? 1 : 2);
      case 'release_metadata_snap':
        return this.message(this.model.held ? null : 'no metadata snapshot is held', () => this.pool.releaseMetadataSnap(), () => this.model.releaseMetadataSnap());
      case 'write':
        for (let i = 0; i < op.count; i++) this.serialIo(this.io.bio(op, 'write', op.dev, op.block + i, 0, this.sectorsPerBlock));
        return this.afterIo();
      case 'write_sectors':
        this.sectorRanges(op.sector, op.count, (block, begin, end) => this.serialIo(this.io.bio(op, 'write', op.dev, block, begin, end)));
        return this.afterIo();
      case 'read':
        for (let i = 0; i < op.count; i++) this.serialIo(this.io.bio(op, 'read', op.dev, op.block + i, 0, this.sectorsPerBlock));
        return this.afterIo();
      case 'discard':
        this.serialIo(this.io.bio(op, 'discard', op.dev, op.block, 0, this.sectorsPerBlock, op.count));
        return this.afterIo();
      case 'discard_sectors': {
        const bio = this.sectorDiscard(op, op.dev, op.sector, op.count);
        if (bio) this.serialIo(bio);
        return this.afterIo();
      }
      case 'commit':
        return this.commitPoint(true);
      case 'status':
        return this.commitPoint(false);
      case 'flush':
        return this.flush(op.dev);
      case 'sleep':
        return this.sleep(op.seconds);
      case 'resize_data':
        return this.resizeOp(op.blocks);
      case 'external_origin':
        return this.externalOrigin(op.dev, op.blocks);
      case 'fail_metadata_writes':
        this.store.failingSince = op.line;
        return;
      case 'heal_metadata_writes':
        this.store.failingSince = 0;
        return;
      case 'parallel':
        this.block = [];
        this.blockLine = op.line;
        return;
      case 'end':
        return this.runParallel();
    }
  }

  /**
   * A pool message: refused exactly when the model says so (`refusal`), and committing as the
   * kernel's do (`commits` times when it succeeds).
   */
  private message(refusal: string | null, poolFn: () => void, modelFn: () => void, commits = 1): void {
    const before = this.pool.commits;
    try {
      poolFn();
    } catch (e) {
      if (e instanceof PoolError && refusal !== null) refused(e.message);
      throw this.poolFailure(e);
    }
    if (refusal !== null) mismatch(`the pool accepted it, but the model refuses: ${refusal}`);
    // The pool's own commit(s) ended the model's transaction before this change: it is committed too.
    modelFn();
    this.model.commit();
    if (this.pool.commits - before !== commits) mismatch(`the pool committed ${this.pool.commits - before} times, the kernel commits ${commits}`);
    this.retryWaitingForSpace();
  }

  /** A flush through a device: commits if the device changed; fails if an abort lost its changes. */
  private flush(devId: number): void {
    if (!this.model.device(devId)) refused(`device ${devId} does not exist`);
    if (this.pool.mode === 'fail') refused('the pool has failed: all IO fails');
    if (this.pool.lostChanges(devId)) refused(`the pool aborted its transaction: what was written through device ${devId} since the commit before is lost`);
    if (this.pool.deviceChanged(devId)) {
      this.poolCommit();
      this.lastWorkerCommit = this.clock;
    } else {
      this.commitPoint(true);
    }
  }

  private resize(blocks: number): void {
    this.pool.resizeData(blocks);
    this.model.nrDataBlocks = blocks;
    this.data?.grow(blocks);
  }

  /** Growing the data device: a pool reload, which also ends the no-space timeout. */
  private resizeOp(blocks: number): void {
    if (blocks < this.model.nrDataBlocks) {
      try {
        this.pool.resizeData(blocks);
      } catch (e) {
        if (e instanceof PoolError) refused(e.message);
        throw e;
      }
      mismatch(`the pool shrank the data device to ${blocks} blocks`);
    }
    this.noSpaceDeadline = null;
    this.noSpaceTimedOut = false;
    try {
      this.resize(blocks);
    } catch (e) {
      throw this.poolFailure(e);
    }
    if (this.pool.mode === 'out-of-data-space' && !this.errorIfNoSpace) this.noSpaceDeadline = this.clock + NO_SPACE_TIMEOUT;
    this.retryWaitingForSpace();
  }

  /**
   * The virtual clock moves on: the worker commits on each tick (each whole second) a second or
   * more after its last commit when something changed, and writes waiting for data space fail
   * once the no-space timeout expires.
   */
  private sleep(seconds: number): void {
    const end = this.clock + seconds;
    for (;;) {
      const tick = this.pool.changed && this.pool.mode !== 'fail' ? Math.ceil(Math.max(this.lastWorkerCommit + 1, this.clock)) : Infinity;
      const deadline = this.noSpaceDeadline ?? Infinity;
      const next = Math.min(tick, deadline);
      if (next > end) break;
      this.clock = next;
      if (next === deadline) this.noSpaceTimeout();
      else this.commitIfChanged(true);
    }
    this.clock = end;
  }

  /** dm-thin's no_space_timeout: waiting writes fail, and from now on writes needing a block fail at once. */
  private noSpaceTimeout(): void {
    this.noSpaceDeadline = null;
    if (this.pool.mode !== 'out-of-data-space' || this.errorIfNoSpace) return;
    this.noSpaceTimedOut = true;
    const failed = this.io.failWaitingForSpace(`out of data space: waited ${NO_SPACE_TIMEOUT} s for the data device to grow (no_space_timeout, line ${this.line}), then failed`);
    this.modes.push({ line: this.line, mode: 'out-of-data-space', cause: `no_space_timeout: ${failed.length} waiting writes failed; writes that need a block now fail at once` });
    for (const b of failed) this.bioProblem(b);
  }

  /** Writes that waited for data space go again once the pool is back in write mode. */
  private retryWaitingForSpace(): void {
    if (this.pool.mode !== 'write' || this.io.waitingForSpace.length === 0 || this.inFlightRunning) return;
    const bios = this.io.retryWaitingForSpace();
    this.io.run();
    for (const b of bios) if (b.state === 'failed') this.bioProblem(b);
    this.io.settle();
  }

  /** Device `devId` reads its unmapped blocks through to a read-only external origin from now on. */
  private externalOrigin(devId: number, blocks: number): void {
    const dev = this.model.device(devId);
    if (!dev) {
      if (this.pool.details(devId)) mismatch(`device ${devId} should not exist, but the pool has it`);
      refused(`device ${devId} does not exist`);
    }
    if (dev.origin) refused(`device ${devId} already has an external origin (line ${dev.origin.line})`);
    if (dev.table.size > 0) refused(`device ${devId} maps ${dev.table.size} blocks: an external origin goes on a device with no IO yet`);
    const file = this.unusedOriginFiles.get(devId);
    this.unusedOriginFiles.delete(devId);
    const origin = file !== undefined ? ExternalOrigin.file(devId, this.line, file) : ExternalOrigin.generated(devId, this.line, blocks, this.sectorsPerBlock);
    this.origins.set(this.line, origin);
    dev.origin = origin;
  }

  /** Runs one bio to completion; its failure is counted for the operation's report. */
  private serialIo(bio: Bio): void {
    this.io.runSerial(bio);
    if (bio.problem && this.blockProblems++ === 0) this.firstBlockProblem = bio.problem;
  }

  private blockProblems = 0;
  private firstBlockProblem: LineProblem | undefined;

  /**
   * After an IO operation: a block that failed does not stop the others (each is its own bio in
   * the kernel); the operation reports its first failure and how many blocks failed.
   */
  private afterIo(): void {
    const failed = this.blockProblems;
    const first = this.firstBlockProblem;
    this.blockProblems = 0;
    this.firstBlockProblem = undefined;
    this.io.settle();
    this.periodicCommit();
    if (first) throw new LineProblem(first.kind, failed > 1 ? `${first.message} (${failed} blocks failed)` : first.message);
  }

  /** A discard in sectors: only the whole blocks inside it (the partial ends keep their mappings); null if none. */
  private sectorDiscard(op: TraceOp, dev: number, sector: number, count: number): Bio | null {
    const begin = Math.ceil(sector / this.sectorsPerBlock);
    const end = Math.floor((sector + count) / this.sectorsPerBlock);
    return end > begin ? this.io.bio(op, 'discard', dev, begin, 0, this.sectorsPerBlock, end - begin) : null;
  }

  /** Splits a sector range into per-block pieces. */
  private sectorRanges(sector: number, count: number, fn: (block: number, begin: number, end: number) => void): void {
    const spb = this.sectorsPerBlock;
    for (let s = sector; s < sector + count; ) {
      const block = Math.floor(s / spb);
      const begin = s - block * spb;
      const end = Math.min(spb, begin + (sector + count - s));
      fn(block, begin, end);
      s += end - begin;
    }
  }

  // ---- IO in flight

  /**
   * Runs the operations of a `parallel` block all at once, their steps interleaved by the seeded
   * scheduler; a snapshot suspends its origin (waits for the origin's IO in flight, holds new IO)
   * as lvm2 does. Then: no deadlock, and every block as some serial order of its operations.
   */
  private runParallel(): void {
    const ops = this.block!;
    this.block = null;
    const io = this.io;
    const bios: Bio[] = [];
    const snapshots: Array<{ op: TraceOp & { kind: 'create_snap' }; done: boolean }> = [];
    for (const op of ops) if (op.kind === 'create_snap') io.hold(op.dev);
    for (const op of ops) {
      this.line = op.line;
      const spb = this.sectorsPerBlock;
      switch (op.kind) {
        case 'write':
        case 'read':
          for (let i = 0; i < op.count; i++) bios.push(io.bio(op, op.kind, op.dev, op.block + i, 0, spb));
          break;
        case 'write_sectors':
          this.sectorRanges(op.sector, op.count, (block, begin, end) => bios.push(io.bio(op, 'write', op.dev, block, begin, end)));
          break;
        case 'discard':
          bios.push(io.bio(op, 'discard', op.dev, op.block, 0, spb, op.count));
          break;
        case 'discard_sectors': {
          const bio = this.sectorDiscard(op, op.dev, op.sector, op.count);
          if (bio) bios.push(bio);
          break;
        }
        case 'create_snap': {
          const snap = { op, done: false };
          snapshots.push(snap);
          io.task(op.line, () => {
            io.hold(op.origin);
            io.whenQuiet(op.origin, op.line, () => {
              try {
                this.dispatchNamed(op);
                snap.done = true;
              } finally {
                io.release(op.origin);
                io.release(op.dev);
              }
            });
          });
          break;
        }
        default:
          io.task(op.line, () => this.dispatchNamed(op));
      }
    }
    this.line = this.blockLine;
    // The worker's periodic commit can fall among the IO when a second has passed.
    if (this.clock - this.lastWorkerCommit >= 1) {
      const tick = (): void => {
        if (this.pool.changed && this.pool.mode !== 'fail') this.commitIfChanged(true);
        else if (io.runnable > 0) io.task(this.blockLine, tick);
      };
      io.task(this.blockLine, tick);
    }
    const blocks = this.touchedBlocks(bios, snapshots.map((s) => s.op));
    const initial = this.blockStates(blocks);
    for (const b of bios) io.submit(b);
    this.inFlightRunning = true;
    try {
      io.run(this.random);
    } finally {
      this.inFlightRunning = false;
    }
    this.inFlight.blocks++;
    this.inFlight.bios += bios.length;
    const stuck = io.describeStuck();
    if (stuck.length > 0) {
      this.problem('deadlock', `deadlock: nothing can run, ${stuck.length} IO in flight wait for each other: ${stuck.join('; ')}`, this.blockLine);
      io.abandon();
      this.deadlocked = true;
      return;
    }
    for (const b of bios) {
      if (b.state === 'failed') this.bioProblem(b);
    }
    this.checkSerialOrders(blocks, initial, bios, snapshots.filter((s) => s.done).map((s) => s.op));
    io.settle();
    this.line = this.blockLine;
    this.periodicCommit();
    this.retryWaitingForSpace();
  }

  /** The virtual blocks IO in flight touches, each with the devices involved (snapshots bring their origin's). */
  private touchedBlocks(bios: Bio[], snaps: Array<{ dev: number; origin: number }>): Map<number, Set<number>> {
    const blocks = new Map<number, Set<number>>();
    for (const b of bios) {
      const n = b.kind === 'discard' ? b.count : 1;
      for (let v = b.block; v < b.block + n; v++) {
        const devs = blocks.get(v) ?? new Set<number>();
        devs.add(b.dev);
        blocks.set(v, devs);
      }
    }
    for (const devs of blocks.values()) {
      for (let grew = true; grew; ) {
        grew = false;
        for (const s of snaps) {
          if ((devs.has(s.dev) || devs.has(s.origin)) && !(devs.has(s.dev) && devs.has(s.origin))) {
            devs.add(s.dev);
            devs.add(s.origin);
            grew = true;
          }
        }
      }
    }
    return blocks;
  }

  /** Each involved device's state at each block, as the model (and the IO just run) has it. */
  private blockStates(blocks: Map<number, Set<number>>): Map<number, Map<number, BlockState>> {
    const out = new Map<number, Map<number, BlockState>>();
    for (const [v, devs] of blocks) {
      const states = new Map<number, BlockState>();
      for (const dev of devs) {
        const d = this.model.device(dev);
        if (!d) continue;
        const mapped = d.table.find(v) >= 0;
        states.set(dev, { mapped, content: mapped ? this.io.contentOf(dev, v) : UNKNOWN });
      }
      out.set(v, states);
    }
    return out;
  }

  /** Each touched block must have ended as some serial order of its operations would leave it. */
  private checkSerialOrders(blocks: Map<number, Set<number>>, initial: Map<number, Map<number, BlockState>>, bios: Bio[], snaps: Array<{ dev: number; origin: number; line: number }>): void {
    const spb = this.sectorsPerBlock;
    const final = this.blockStates(blocks);
    const opsAt = new Map<number, BlockOp[]>();
    const add = (v: number, op: BlockOp): void => {
      const list = opsAt.get(v) ?? [];
      list.push(op);
      opsAt.set(v, list);
    };
    for (const b of bios) {
      if (b.state !== 'done') continue;
      if (b.kind === 'discard') for (let v = b.block; v < b.block + b.count; v++) add(v, { kind: 'discard', line: b.line, dev: b.dev, begin: 0, end: spb });
      else add(b.block, { kind: b.kind, line: b.line, dev: b.dev, begin: b.begin, end: b.end, result: b.result });
    }
    for (const [v, devs] of blocks) {
      const ops = opsAt.get(v) ?? [];
      for (const s of snaps) if (devs.has(s.dev)) ops.push({ kind: 'snapshot', line: s.line, dev: s.dev, origin: s.origin, begin: 0, end: spb });
      const unmapped = new Map<number, UnmappedContent>();
      for (const dev of devs) {
        if (!this.model.device(dev)) continue;
        unmapped.set(dev, { read: this.model.unmappedContent(dev, v), provision: this.model.provisionContent(dev, v, this.zero) });
      }
      if (serialOrder(spb, initial.get(v)!, unmapped, ops, final.get(v)!)) continue;
      const opsText = ops.map((o) => `${o.kind} of device ${o.dev} (line ${o.line})`).join(', ');
      const ends = [...final.get(v)!].map(([dev, s]) => `device ${dev} ${describeState(s, spb)}`).join('; ');
      this.problem('mismatch', `block ${v}: no serial order of ${opsText} leaves it as the IO in flight did (${ends})`, this.blockLine);
    }
  }

  // ---- the end

  /** Removing the pool commits, as the kernel's does (a read-only one writes a pending needs_check). */
  private teardown(): void {
    const before = this.line;
    this.line = 0;
    try {
      for (const b of this.io.failWaitingForSpace('out of data space: still waiting for the data device to grow when the trace ended')) {
        this.bioProblem(b);
      }
      for (const [dev, file] of this.unusedOriginFiles) this.problem('refused', `--external-origin ${dev}=${file}: the trace has no external_origin ${dev} line`);
      this.commitPoint(false);
    } catch (e) {
      if (!(e instanceof LineProblem)) throw e;
      this.problem(e.kind, `the pool's removal: ${e.message}`);
    }
    this.line = before;
    this.data?.flushPunches();
  }

  /**
   * The metadata against the model at the end. A replay stopped at a refusal leaves the metadata
   * at its last commit, which is then what the model must be.
   */
  private verifyFinal(stopped: boolean): 'passed' | 'failed' {
    if (stopped) {
      this.model.rollback();
      this.data?.dropPunches();
      this.data?.flushPunches();
    }
    this.store.close();
    this.data?.close();
    const before = this.problemCount;
    this.line = 0;
    this.compareOnDisk();
    this.checkOnDisk('at the end');
    return this.problemCount === before ? 'passed' : 'failed';
  }

  /** After a crash: the metadata on disk must be the last commit, and pass the check. */
  private recoverFromCrash(): 'passed' | 'failed' {
    this.store.close();
    this.data?.close();
    const before = this.problemCount;
    this.line = 0;
    // Nothing was committed: the format itself was interrupted before its superblock.
    if (!this.pool) return isFormatted(this.opts.metadata) ? this.crashFailure('the format was interrupted, yet block 0 holds a superblock') : 'passed';
    this.model.rollback();
    try {
      const reopened = Pool.open(new BlockWriter(this.opts.metadata));
      reopened.close();
    } catch (e) {
      this.problem('mismatch', `after the crash the pool cannot be opened: ${(e as Error).message}`);
      return 'failed';
    }
    this.compareOnDisk();
    this.checkOnDisk('after the crash');
    if (this.opts.data) this.verifyAllData();
    return this.problemCount === before ? 'passed' : 'failed';
  }

  /**
   * After a crash, every committed mapping whose data block the lost transaction wrote holds what
   * the model says: only in-place writes may have reached a committed block.
   */
  private verifyAllData(): void {
    this.data = new DataFile(this.opts.data!, this.blockBytes, this.model.nrDataBlocks);
    try {
      for (const [devId, dev] of this.model.devices) {
        dev.table.forEach((block, slot) => {
          const dataBlock = dev.table.dataAt(slot);
          if (!this.io.writtenSinceCommit.has(dataBlock)) return;
          try {
            this.io.verifyBlock(devId, block, dataBlock, this.model.contentOf(devId, block), 0, this.sectorsPerBlock);
          } catch (e) {
            if (!(e instanceof LineProblem)) throw e;
            this.problem(e.kind, `after the crash: ${e.message}`);
          }
        });
      }
    } finally {
      this.data.close();
    }
  }

  private crashFailure(message: string): 'failed' {
    this.problem('mismatch', message);
    return 'failed';
  }

  /** The metadata on disk, read with the read path, against the model: every device and mapping. */
  private compareOnDisk(): void {
    const io = new BlockReader(this.opts.metadata);
    try {
      const sb = readSuperblock(io);
      const model = this.model;
      if (sb.time !== model.time) this.problem('mismatch', `the superblock's time is ${sb.time}, the model's ${model.time}`);
      if (sb.transactionId !== model.transactionId) this.problem('mismatch', `the superblock's transaction id is ${sb.transactionId}, the model's ${model.transactionId}`);
      const aborted = this.pool.needsCheckOnDisk;
      if (((sb.flags & NEEDS_CHECK_FLAG) !== 0) !== aborted) this.problem('mismatch', `needs_check is ${sb.flags & NEEDS_CHECK_FLAG ? 'set' : 'clear'}, but should be ${aborted ? 'set' : 'clear'}`);
      this.compareDevices(io, model.devices, undefined);
      if ((sb.heldRoot !== 0) !== (model.held !== null)) this.problem('mismatch', `a metadata snapshot is ${sb.heldRoot ? '' : 'not '}held, but the model says otherwise`);
      else if (model.held) this.compareDevices(io, model.held, true);
    } finally {
      io.close();
    }
  }

  private compareDevices(io: BlockReader, devices: Map<number, ModelDevice>, metadataSnap: true | undefined): void {
    const where = metadataSnap ? 'the metadata snapshot: ' : '';
    const seen = new Set<number>();
    let dev: ModelDevice | undefined;
    let devId = -1;
    let count = 0;
    let reported = 0;
    const report = (message: string): void => {
      if (reported++ < 10) this.problem('mismatch', `${where}${message}`);
    };
    const visitor: MetadataVisitor = {
      superblockBegin(_p: PoolInfo) {},
      superblockEnd() {},
      deviceBegin(d: DeviceInfo) {
        devId = d.devId;
        seen.add(d.devId);
        dev = devices.get(d.devId);
        count = 0;
        if (!dev) {
          report(`device ${d.devId} is in the metadata but not in the model`);
          return;
        }
        if (d.transaction !== dev.transactionId || d.creationTime !== dev.creationTime || d.snapTime !== dev.snapTime) {
          report(`device ${d.devId}: transaction ${d.transaction}, created at ${d.creationTime}, snapshotted at ${d.snapTime}; the model says ${dev.transactionId}, ${dev.creationTime}, ${dev.snapTime}`);
        }
        if (d.mappedBlocks !== dev.table.size) report(`device ${d.devId}: mapped_blocks is ${d.mappedBlocks}, the model maps ${dev.table.size}`);
      },
      deviceEnd() {
        if (dev && count !== dev.table.size) report(`device ${devId} maps ${count} blocks, the model ${dev.table.size}`);
      },
      mapRun(thinBegin: U64, data: number, length: number, time: number) {
        if (!dev) return;
        if (typeof thinBegin === 'bigint') {
          report(`device ${devId} maps block ${thinBegin}, beyond the 2^53 blocks the model keeps`);
          return;
        }
        const thin = thinBegin;
        for (let i = 0; i < length; i++) {
          const slot = dev.table.find(thin + i);
          if (slot < 0) report(`device ${devId} maps block ${thin + i} to data block ${data + i}, the model leaves it unmapped`);
          else if (dev.table.dataAt(slot) !== data + i || dev.table.timeAt(slot) !== time) {
            report(`device ${devId} block ${thin + i}: data block ${data + i} at time ${time}, the model says ${dev.table.dataAt(slot)} at time ${dev.table.timeAt(slot)}`);
          }
        }
        count += length;
      },
    };
    try {
      readMetadata(io, visitor, { metadataSnap });
    } catch (e) {
      report(`the metadata cannot be read: ${(e as Error).message.split('\n')[0]}`);
      return;
    }
    for (const id of devices.keys()) if (!seen.has(id)) report(`device ${id} is in the model but not in the metadata`);
  }

  /** A bio's failure, reported at its own line. */
  private bioProblem(b: Bio): void {
    this.problem(b.problem!.kind, `${opText(b.op)}: ${b.problem!.message}`, b.line);
  }

  private summary(verification: 'passed' | 'failed', crashed: boolean): ReplaySummary {
    const shared = this.model?.sharedDataBlocks ?? 0;
    const io = this.pool?.io ?? { reads: 0, writes: 0 };
    const problems = this.problems;
    if (this.problemCount > problems.length) {
      problems.push({ line: 0, kind: 'mismatch', message: `... and ${this.problemCount - problems.length} more problems` });
    }
    const commits = this.pool?.commits ?? 0;
    const crash = this.opts.crashAt === undefined ? undefined : { at: this.opts.crashAt, happened: crashed, commitsBefore: commits };
    return {
      trace: this.opts.trace,
      operations: this.operations,
      commits,
      dataBlocks: { ...(this.model?.stats ?? { allocated: 0, copied: 0, freed: 0 }), shared, punched: this.data?.punched ?? 0, verified: this.io?.verifiedBlocks ?? 0 },
      metadataBlocks: { reads: io.reads, writes: this.store?.writes ?? 0, used: this.pool?.usedMetadataBlocks ?? 0, total: this.store?.nrBlocks ?? 0 },
      mode: this.pool?.mode ?? 'write',
      modes: this.modes,
      inFlight: { ...this.inFlight, waits: this.io?.waits ?? 0, seed: this.opts.seed ?? 1 },
      problems,
      verification,
      crash,
      seconds: (Date.now() - this.started) / 1000,
      ok: this.problemCount === 0 && verification === 'passed',
    };
  }
}

/** An operation as the trace spells it, for messages. */
export function opText(op: TraceOp): string {
  const { kind, line: _line, ...fields } = op;
  return [kind, ...Object.values(fields).map(String)].join(' ');
}

/** The model of a pool already on disk: what its metadata (and held snapshot) say, content unknown. */
function loadModel(path: string, sectorsPerBlock: number, content: boolean): Model {
  const io = new BlockReader(path);
  try {
    const sb = readSuperblock(io);
    let model!: Model;
    const load = (devices: Map<number, ModelDevice>, metadataSnap: true | undefined): void => {
      let dev!: ModelDevice;
      readMetadata(io, {
        superblockBegin(p: PoolInfo) {
          if (!metadataSnap) {
            model = new Model(Number(p.nrDataBlocks), sectorsPerBlock, content);
            model.time = p.time;
            model.transactionId = p.transaction;
          }
        },
        superblockEnd() {},
        deviceBegin(d: DeviceInfo) {
          dev = { table: model.newTable(), mixed: new Map(), transactionId: d.transaction, creationTime: d.creationTime, snapTime: d.snapTime, changed: false };
          (metadataSnap ? devices : model.devices).set(d.devId, dev);
        },
        deviceEnd() {},
        mapRun(thin: U64, data: number, length: number, time: number) {
          if (typeof thin === 'bigint') throw new InputError(`${path}: a device maps block ${thin}; thin_replay keeps blocks below 2^53`);
          for (let i = 0; i < length; i++) dev.table.set(thin + i, UNKNOWN, data + i, time);
        },
      }, { metadataSnap });
    };
    load(new Map(), undefined);
    if (sb.heldRoot !== 0) {
      const held = new Map<number, ModelDevice>();
      load(held, true);
      model.held = held;
    }
    model.recount();
    return model;
  } finally {
    io.close();
  }
}
