// thin_replay as a library: runs a trace on a pool (metadata file, optional data file) and checks
// the pool against the model after every step. The pool decides, the model predicts: which data
// block each allocation gets, whether a write copies, what every read returns, when the pool
// commits, refuses or runs out of space. Any disagreement is a mismatch naming the trace line.
//
// The IO path is a sequence of steps (look up, allocate, copy or zero, insert), each a method, so
// a scheduler could interleave the steps of IO in flight; here they run one block at a time.
import * as fs from 'node:fs';
import { BLOCK_SIZE, BlockReader, BlockWriter, InputError } from '../io/block-io.js';
import { BlockStore, CrashError } from '../pdata/block-manager.js';
import { U64 } from '../pdata/le.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map/metadata.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { CommitCause, Mapping, Pool, PoolError, PoolMode } from '../thin/pool.js';
import { readMetadata } from '../thin/read-metadata.js';
import { NEEDS_CHECK_FLAG, readSuperblock } from '../thin/superblock.js';
import { checkMetadata } from '../tools/check.js';
import { SECTOR_BYTES, describeSector, fillContent } from './content.js';
import { DataFile } from './data-file.js';
import { Model, ModelDevice, Segment, UNKNOWN, ZEROES, overlay } from './model.js';
import { PoolLine, TraceError, TraceOp, readTrace } from './trace.js';

export interface ReplayOptions {
  trace: string;
  metadata: string;
  /** The data file; without it the model is kept but no data is written or read. */
  data?: string;
  /** Seeds the interleaving of parallel IO (reported; the serial path does not use it). */
  seed?: number;
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

export type ProblemKind = 'refused' | 'mismatch' | 'unsupported' | 'check';

export interface Problem {
  line: number;
  kind: ProblemKind;
  message: string;
}

export interface ReplaySummary {
  trace: string;
  operations: number;
  commits: number;
  dataBlocks: { allocated: number; copied: number; shared: number; freed: number; punched: number; verified: number };
  metadataBlocks: { reads: number; writes: number; used: number; total: number };
  mode: PoolMode;
  problems: Problem[];
  /** The final comparison of the metadata with the model, and our check of it. */
  verification: 'passed' | 'failed';
  crash?: { at: number; happened: boolean; commitsBefore: number };
  seconds: number;
  ok: boolean;
}

/** Problems listed before the rest are only counted (a wrong pool can disagree everywhere). */
const MAX_PROBLEMS = 100;

/** The default metadata size: 48 bytes per data block and 4 MiB, as lvm would size it, capped. */
export function defaultMetadataBlocks(nrDataBlocks: number): number {
  return Math.min(MAX_METADATA_BLOCKS, Math.ceil((nrDataBlocks * 48) / BLOCK_SIZE) + 1024);
}

/** The metadata writes a store let through, and a simulated crash after the Nth. */
class CountingStore implements BlockStore {
  writes = 0;
  crashed = false;
  constructor(private readonly inner: BlockWriter, private readonly crashAt: number | undefined) {}
  get path(): string {
    return this.inner.path;
  }
  get nrBlocks(): number {
    return this.inner.nrBlocks;
  }
  readInto(b: number, buf: Buffer): Buffer {
    return this.inner.readInto(b, buf);
  }
  write(b: number, data: Buffer): void {
    const allowed = this.allow(data.length / BLOCK_SIZE);
    if (allowed > 0) this.inner.write(b, allowed * BLOCK_SIZE === data.length ? data : data.subarray(0, allowed * BLOCK_SIZE));
    this.crashIfDue();
  }
  writeBlocks(b: number, blocks: Buffer[]): void {
    const allowed = this.allow(blocks.length);
    if (allowed > 0) this.inner.writeBlocks(b, allowed === blocks.length ? blocks : blocks.slice(0, allowed));
    this.crashIfDue();
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
  close(): void {
    this.inner.close();
  }
}

/** A problem at a trace line, thrown to end the operation. */
class LineProblem extends Error {
  constructor(readonly kind: ProblemKind, message: string) {
    super(message);
  }
}

function mismatch(message: string): never {
  throw new LineProblem('mismatch', message);
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

class Replay {
  private pool!: Pool;
  private model!: Model;
  private store!: CountingStore;
  private data?: DataFile;
  private zero = true;
  private passdown = true;
  private errorIfNoSpace = false;
  private sectorsPerBlock = 0;
  private blockBytes = 0;
  private block!: Buffer;
  private expected!: Buffer;
  private clock = 0;
  private lastWorkerCommit = 0;
  private operations = 0;
  private readonly problems: Problem[] = [];
  private problemCount = 0;
  private line = 0;
  private blockProblems = 0;
  /** Blocks read back from the data file and compared with the model. */
  private verifiedBlocks = 0;
  /** Data blocks written since the last commit: after a crash, the committed ones must be intact. */
  private readonly writtenSinceCommit = new Set<number>();
  private firstBlockProblem: LineProblem | undefined;
  /** A commit made right after an allocation: the model commits once it has the allocation too. */
  private commitAfterAllocation = false;
  private allocating = false;
  private readonly started = Date.now();

  constructor(private readonly opts: ReplayOptions) {}

  run(): ReplaySummary {
    const total = fs.existsSync(this.opts.trace) ? fs.statSync(this.opts.trace).size : 0;
    const ops = readTrace(this.opts.trace, (bytes) => this.opts.onProgress?.(bytes, total));
    let first = ops.next();
    let crashed = false;
    let stopped = false;
    try {
      this.setup(first.done ? undefined : first.value);
      if (!first.done && first.value.kind === 'pool') first = ops.next();
      for (let it = first; !it.done; it = ops.next()) {
        const op = it.value;
        this.line = op.line;
        this.operations++;
        if (!this.execute(op) && !this.opts.keepGoing) {
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
  }

  // ---- setup

  private setup(first: TraceOp | undefined): void {
    const poolLine = first?.kind === 'pool' ? (first as PoolLine & { line: number }) : undefined;
    if (poolLine) {
      this.zero = poolLine.zero;
      this.passdown = poolLine.discardPassdown;
      this.errorIfNoSpace = poolLine.errorIfNoSpace;
    }
    const path = this.opts.metadata;
    const poolOpts = { cacheBlocks: this.opts.cacheBlocks ?? 8192, sync: this.opts.sync, onCommit: (cause: CommitCause) => this.onCommit(cause) };
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
    this.block = Buffer.alloc(this.blockBytes);
    this.expected = Buffer.alloc(this.blockBytes);
    if (this.opts.data) this.data = new DataFile(this.opts.data, this.blockBytes, this.pool.nrDataBlocks);
  }

  // ---- commits

  /** Every commit the pool makes: the model's transaction ends too. */
  private onCommit(cause: CommitCause): void {
    if (cause === 'metadata-reserve' && this.allocating) {
      this.commitAfterAllocation = true;
      return;
    }
    this.committed();
  }

  private committed(): void {
    this.model.commit();
    this.writtenSinceCommit.clear();
    this.data?.commitPunches();
    if (this.opts.verifyEveryCommit) this.checkOnDisk('after a commit');
    this.opts.afterCommit?.(this.line);
  }

  /** Our full check of the metadata as committed. */
  private checkOnDisk(when: string): boolean {
    const io = new BlockReader(this.opts.metadata);
    const findings: string[] = [];
    let ok: boolean;
    try {
      ok = checkMetadata(io, { onEvent: (e) => { if (e.kind === 'error') findings.push(e.message); } }).ok;
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
      this.poolFailure(e);
    }
  }

  /** The worker commits on its own once a second has passed since its last commit. */
  private periodicCommit(): void {
    if (this.clock - this.lastWorkerCommit >= 1 && this.pool.mode !== 'fail' && this.pool.changed) this.commitIfChanged(true);
  }

  // ---- problems

  private problem(kind: ProblemKind, message: string): void {
    this.problemCount++;
    if (this.problems.length < MAX_PROBLEMS) this.problems.push({ line: this.line, kind, message });
  }

  /** A refusal from the pool: the model must agree it refuses, and follow a pool that aborted. */
  private poolFailure(e: unknown, predicted?: string): never {
    if (!(e instanceof PoolError)) throw e;
    if (e.reason === 'aborted') {
      // The metadata is back at the last commit: what this transaction freed is mapped again.
      this.model.rollback();
      this.data?.dropPunches();
    }
    if (predicted === undefined && e.reason !== 'aborted' && e.reason !== 'read-only' && e.reason !== 'no-data-space') {
      throw new LineProblem('mismatch', `the pool refused (${e.message}) what the model accepts`);
    }
    throw new LineProblem('refused', e.message);
  }

  // ---- operations

  /** Runs one operation; false if it was refused or disagreed with the model. */
  private execute(op: TraceOp): boolean {
    const before = this.problemCount;
    try {
      this.dispatch(op);
    } catch (e) {
      if (e instanceof LineProblem) this.problem(e.kind, `${opText(op)}: ${e.message}`);
      else if (e instanceof PoolError) this.problem('refused', `${opText(op)}: ${e.message}`);
      else throw e;
    }
    return this.problemCount === before;
  }

  private dispatch(op: TraceOp): void {
    switch (op.kind) {
      case 'pool':
        throw new LineProblem('refused', 'pool must be the first operation');
      case 'create_thin':
        return this.message(this.model.device(op.dev) ? `device ${op.dev} already exists` : null, () => this.pool.createThin(op.dev), () => this.model.createThin(op.dev));
      case 'create_snap': {
        const refusal = this.model.device(op.dev) ? `device ${op.dev} already exists` : !this.model.device(op.origin) ? `origin device ${op.origin} does not exist` : null;
        return this.message(refusal, () => this.pool.createSnap(op.dev, op.origin), () => this.model.createSnap(op.dev, op.origin));
      }
      case 'delete':
        return this.message(this.model.device(op.dev) ? null : `device ${op.dev} does not exist`, () => this.pool.deleteDevice(op.dev), () => this.model.deleteDevice(op.dev));
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
        for (let i = 0; i < op.count; i++) this.io(() => this.writeBlock(op.dev, op.block + i, 0, this.sectorsPerBlock));
        return this.afterIo();
      case 'write_sectors':
        this.sectorRanges(op.sector, op.count, (block, begin, end) => this.io(() => this.writeBlock(op.dev, block, begin, end)));
        return this.afterIo();
      case 'read':
        for (let i = 0; i < op.count; i++) this.io(() => this.readBlock(op.dev, op.block + i, 0, this.sectorsPerBlock));
        return this.afterIo();
      case 'discard':
        this.discard(op.dev, op.block, op.block + op.count);
        return this.afterIo();
      case 'discard_sectors': {
        // Only the whole blocks inside the range are discarded; partial ones keep their mapping.
        const begin = Math.ceil(op.sector / this.sectorsPerBlock);
        const end = Math.floor((op.sector + op.count) / this.sectorsPerBlock);
        if (end > begin) this.discard(op.dev, begin, end);
        return this.afterIo();
      }
      case 'commit':
        return this.commitIfChanged(true);
      case 'flush':
        if (!this.model.device(op.dev)) throw new LineProblem('refused', `device ${op.dev} does not exist`);
        if (this.pool.deviceChanged(op.dev)) {
          this.poolCommit();
          this.lastWorkerCommit = this.clock;
        }
        return;
      case 'status':
        return this.commitIfChanged(false);
      case 'sleep':
        return this.sleep(op.seconds);
      case 'resize_data':
        return this.resizeOp(op.blocks);
      case 'external_origin':
      case 'fail_metadata_writes':
      case 'heal_metadata_writes':
      case 'merge':
      case 'parallel':
      case 'end':
        throw new LineProblem('unsupported', `${op.kind} is not supported yet by this engine`);
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
      if (e instanceof PoolError && refusal !== null) throw new LineProblem('refused', e.message);
      this.poolFailure(e);
    }
    if (refusal !== null) mismatch(`the pool accepted it, but the model refuses: ${refusal}`);
    // The pool's own commit(s) ended the model's transaction before this change: it is committed too.
    modelFn();
    this.model.commit();
    if (this.pool.commits - before !== commits) mismatch(`the pool committed ${this.pool.commits - before} times, the kernel commits ${commits}`);
  }

  private resize(blocks: number): void {
    this.pool.resizeData(blocks);
    this.model.nrDataBlocks = blocks;
    this.data?.grow(blocks);
  }

  private resizeOp(blocks: number): void {
    if (blocks < this.model.nrDataBlocks) {
      try {
        this.pool.resizeData(blocks);
      } catch (e) {
        if (e instanceof PoolError) throw new LineProblem('refused', e.message);
        throw e;
      }
      mismatch(`the pool shrank the data device to ${blocks} blocks`);
    }
    try {
      this.resize(blocks);
    } catch (e) {
      this.poolFailure(e);
    }
  }

  private sleep(seconds: number): void {
    const end = this.clock + seconds;
    // The waker ticks each second; with changes pending, the first tick a second after the
    // worker's last commit commits them.
    const due = Math.ceil(Math.max(this.lastWorkerCommit + 1, this.clock));
    if (this.pool.changed && due <= end && this.pool.mode !== 'fail') {
      this.clock = due;
      this.commitIfChanged(true);
    }
    this.clock = end;
  }

  /**
   * Runs one block's IO. A block that fails does not stop the others (each is its own bio in the
   * kernel); the operation reports its first failure and how many blocks failed.
   */
  private io(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof LineProblem)) throw e;
      if (this.blockProblems++ === 0) this.firstBlockProblem = e;
    }
  }

  private afterIo(): void {
    const failed = this.blockProblems;
    const first = this.firstBlockProblem;
    this.blockProblems = 0;
    this.firstBlockProblem = undefined;
    this.periodicCommit();
    if (first) throw new LineProblem(first.kind, failed > 1 ? `${first.message} (${failed} blocks failed)` : first.message);
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

  // ---- the IO path

  /** Step 1: the pool's mapping of a block, which must be the model's. */
  private lookup(devId: number, block: number): { mapping: Mapping | null; dev: ModelDevice } {
    const dev = this.model.device(devId);
    if (this.pool.mode === 'fail') throw new LineProblem('refused', 'the pool has failed: all IO fails');
    let mapping: Mapping | null;
    try {
      mapping = this.pool.lookup(devId, block);
    } catch (e) {
      if (!(e instanceof PoolError)) throw e;
      if (!dev) throw new LineProblem('refused', e.message);
      return mismatch(`the pool says ${e.message}, but the model has device ${devId}`);
    }
    if (!dev) mismatch(`device ${devId} should not exist, but the pool has it`);
    const slot = dev!.table.find(block);
    if ((mapping === null) !== (slot < 0)) {
      mismatch(mapping ? `block ${block} is mapped to data block ${mapping.dataBlock}, but the model has it unmapped` : `block ${block} is unmapped, but the model maps it to data block ${dev!.table.dataAt(slot)}`);
    }
    if (mapping) {
      const t = dev!.table;
      if (mapping.dataBlock !== t.dataAt(slot) || mapping.time !== t.timeAt(slot)) {
        mismatch(`block ${block} maps to data block ${mapping.dataBlock} at time ${mapping.time}, but the model says ${t.dataAt(slot)} at time ${t.timeAt(slot)}`);
      }
      if (mapping.shared !== t.timeAt(slot) < dev!.snapTime) mismatch(`block ${block}: the pool and the model disagree on whether it is shared`);
    }
    return { mapping, dev: dev! };
  }

  private writeBlock(devId: number, block: number, begin: number, end: number): void {
    const { mapping } = this.lookup(devId, block);
    const whole = begin === 0 && end === this.sectorsPerBlock;
    if (mapping && !mapping.shared) {
      // Written where it is: the block is this device's alone since its last snapshot.
      this.writeData(mapping.dataBlock, block, begin, end);
      this.model.overwrite(devId, block, begin, end, this.line);
      return;
    }
    const copyFrom = mapping?.dataBlock;
    const dataBlock = this.allocate(copyFrom !== undefined);
    this.prepareData(dataBlock, block, begin, end, copyFrom);
    if (whole) return this.insert(devId, block, dataBlock, this.line);
    const old = copyFrom !== undefined ? this.model.content(devId, block) : [{ begin: 0, end: this.sectorsPerBlock, line: this.zero ? ZEROES : UNKNOWN }];
    this.insert(devId, block, dataBlock, overlay(old, begin, end, this.line, this.sectorsPerBlock));
  }

  /** Step 2: a new data block, the one the model says the kernel's cursor gives. */
  private allocate(copy: boolean): number {
    const mode = this.pool.mode;
    if (mode !== 'write') {
      if (mode === 'out-of-data-space') this.outOfDataSpace('the pool is out of data space');
      throw new LineProblem('refused', this.pool.modeError().message);
    }
    const predicted = this.model.nextAllocation();
    const commits = this.pool.commits;
    let b: number;
    this.allocating = true;
    try {
      b = this.pool.allocDataBlock();
    } catch (e) {
      if (e instanceof PoolError && e.reason === 'no-data-space') {
        if (!('outOfSpace' in predicted)) mismatch(`the pool is out of data space, but the model would allocate data block ${predicted.block}`);
        const committed = this.pool.commits - commits;
        const expected = predicted.outOfSpace === 'commit-first' ? 1 : 0;
        if (committed !== expected) mismatch(`running out of data space, the pool committed ${committed} times; the kernel commits ${expected}`);
        this.outOfDataSpace(e.message);
      }
      this.poolFailure(e);
    } finally {
      this.allocating = false;
    }
    this.model.allocated(b, copy);
    if (this.commitAfterAllocation) {
      this.commitAfterAllocation = false;
      this.committed();
    }
    if ('outOfSpace' in predicted) mismatch(`the pool allocated data block ${b}, but the model says it is out of data space (${predicted.outOfSpace})`);
    if (predicted.block !== b) mismatch(`the pool allocated data block ${b}, but the kernel's cursor gives ${predicted.block}`);
    this.data?.cancelPunch(b);
    return b;
  }

  private outOfDataSpace(message: string): never {
    if (!this.errorIfNoSpace) {
      throw new LineProblem('unsupported', `${message}; queueing IO until the data device grows (error_if_no_space=off) is not supported yet, use error_if_no_space=on`);
    }
    throw new LineProblem('refused', message);
  }

  /** Step 3: the new block's data: copied from the shared one, or zeroed around a partial write. */
  private prepareData(dataBlock: number, block: number, begin: number, end: number, copyFrom: number | undefined): void {
    const data = this.data;
    if (!data) return;
    this.writtenSinceCommit.add(dataBlock);
    const whole = begin === 0 && end === this.sectorsPerBlock;
    if (whole) {
      this.writeData(dataBlock, block, begin, end);
    } else if (copyFrom !== undefined) {
      data.read(copyFrom, 0, this.block, 0, this.blockBytes);
      fillContent(this.block, begin * SECTOR_BYTES, this.line, block, begin, end - begin);
      data.write(dataBlock, 0, this.block, 0, this.blockBytes);
    } else if (this.zero) {
      this.block.fill(0);
      fillContent(this.block, begin * SECTOR_BYTES, this.line, block, begin, end - begin);
      data.write(dataBlock, 0, this.block, 0, this.blockBytes);
    } else {
      this.writeData(dataBlock, block, begin, end);
    }
  }

  private writeData(dataBlock: number, block: number, begin: number, end: number): void {
    if (!this.data) return;
    this.writtenSinceCommit.add(dataBlock);
    const at = begin * SECTOR_BYTES;
    fillContent(this.block, at, this.line, block, begin, end - begin);
    this.data.write(dataBlock, at, this.block, at, (end - begin) * SECTOR_BYTES);
  }

  /** Step 4: the mapping, inserted at the pool's time. */
  private insert(devId: number, block: number, dataBlock: number, content: number | Segment[]): void {
    try {
      this.pool.insertMapping(devId, block, dataBlock);
    } catch (e) {
      // The block stays allocated but unmapped, as the kernel leaves it when its pool turns read-only here.
      this.poolFailure(e);
    }
    this.model.map(devId, block, dataBlock, content);
  }

  private readBlock(devId: number, block: number, begin: number, end: number): void {
    const { mapping } = this.lookup(devId, block);
    if (!mapping || !this.data) return;
    this.verifyContent(devId, block, mapping.dataBlock, begin, end);
  }

  /** Reads sectors [begin, end) of a mapped block from the data file and compares them with the model. */
  private verifyContent(devId: number, block: number, dataBlock: number, begin: number, end: number): void {
    const at = begin * SECTOR_BYTES;
    this.data!.read(dataBlock, at, this.block, at, (end - begin) * SECTOR_BYTES);
    this.verifiedBlocks++;
    const mapping = { dataBlock };
    for (const seg of this.model.content(devId, block)) {
      const from = Math.max(seg.begin, begin);
      const to = Math.min(seg.end, end);
      if (from >= to || seg.line === UNKNOWN) continue;
      if (seg.line === ZEROES) this.expected.fill(0, from * SECTOR_BYTES, to * SECTOR_BYTES);
      else fillContent(this.expected, from * SECTOR_BYTES, seg.line, block, from, to - from);
      if (this.block.compare(this.expected, from * SECTOR_BYTES, to * SECTOR_BYTES, from * SECTOR_BYTES, to * SECTOR_BYTES) === 0) continue;
      for (let s = from; s < to; s++) {
        const o = s * SECTOR_BYTES;
        if (this.block.compare(this.expected, o, o + SECTOR_BYTES, o, o + SECTOR_BYTES) !== 0) {
          const want = seg.line === ZEROES ? 'zeroes' : `what line ${seg.line} wrote`;
          mismatch(`device ${devId} block ${block} sector ${s} (data block ${mapping.dataBlock}) holds ${describeSector(this.block, o, block)}, but should hold ${want}`);
        }
      }
    }
  }

  private discard(devId: number, begin: number, end: number): void {
    const mode = this.pool.mode;
    if (mode === 'fail') throw new LineProblem('refused', 'the pool has failed: all IO fails');
    // A read-only pool completes discards without doing anything.
    if (mode === 'read-only' || mode === 'out-of-metadata-space') return;
    const dev = this.model.device(devId);
    const expected = dev ? countInRange(dev, begin, end) : 0;
    const shared: number[] = [];
    // Found inside the pool's removal, reported once it is done (it must not be interrupted).
    const wrong: string[] = [];
    let removed = 0;
    try {
      removed = this.pool.removeRange(devId, begin, end, (m) => {
        if (!dev) return;
        const slot = typeof m.thinBlock === 'number' ? dev.table.find(m.thinBlock) : -1;
        if (slot < 0) {
          wrong.push(`the pool unmapped block ${m.thinBlock}, which the model does not map`);
          return;
        }
        if (dev.table.dataAt(slot) !== m.dataBlock || dev.table.timeAt(slot) !== m.time) {
          wrong.push(`block ${m.thinBlock} mapped data block ${m.dataBlock} at time ${m.time}, but the model says ${dev.table.dataAt(slot)} at time ${dev.table.timeAt(slot)}`);
        }
        this.model.unmap(devId, m.thinBlock as number);
        if (!this.passdown || !this.data) return;
        // Passed down unless it may be shared (mapped before the last snapshot) and still is.
        if (m.time < dev.snapTime) shared.push(m.dataBlock);
        else this.data.punch(m.dataBlock);
      });
    } catch (e) {
      if (e instanceof PoolError && !dev) throw new LineProblem('refused', e.message);
      this.poolFailure(e);
    }
    if (!dev) mismatch(`device ${devId} should not exist, but the pool discarded from it`);
    if (wrong.length > 0) mismatch(wrong[0]);
    if (removed !== expected) mismatch(`the pool unmapped ${removed} blocks, the model ${expected}`);
    for (const b of shared) {
      const free = this.pool.dataBlockCount(b) === 0;
      if (free === this.model.inUse(b)) mismatch(`data block ${b}: the pool's count says ${free ? 'free' : 'in use'}, the model disagrees`);
      if (free) this.data!.punch(b);
    }
  }

  // ---- the end

  /** Removing the pool commits, as the kernel's does. */
  private teardown(): void {
    const m = this.pool.mode;
    if (m === 'write' || m === 'out-of-data-space') {
      const before = this.line;
      this.line = 0;
      this.commitIfChanged(false);
      this.line = before;
    }
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
          if (!this.writtenSinceCommit.has(dev.table.dataAt(slot))) return;
          try {
            this.verifyContent(devId, block, dev.table.dataAt(slot), 0, this.sectorsPerBlock);
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
      dataBlocks: { ...(this.model?.stats ?? { allocated: 0, copied: 0, freed: 0 }), shared, punched: this.data?.punched ?? 0, verified: this.verifiedBlocks },
      metadataBlocks: { reads: io.reads, writes: this.store?.writes ?? 0, used: this.pool?.usedMetadataBlocks ?? 0, total: this.store?.nrBlocks ?? 0 },
      mode: this.pool?.mode ?? 'write',
      problems,
      verification,
      crash,
      seconds: (Date.now() - this.started) / 1000,
      ok: this.problemCount === 0 && verification === 'passed',
    };
  }
}

function countInRange(dev: ModelDevice, begin: number, end: number): number {
  let n = 0;
  if (end - begin < dev.table.size) {
    for (let b = begin; b < end; b++) if (dev.table.find(b) >= 0) n++;
  } else {
    dev.table.forEach((k) => {
      if (k >= begin && k < end) n++;
    });
  }
  return n;
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
