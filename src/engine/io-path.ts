// The IO path, as dm-thin runs it: each piece of IO is a bio that goes through small steps (lock
// its block, look up the mapping, allocate, copy or zero, insert the mapping, do the data IO,
// complete), each step atomic, as a kernel context runs it. A scheduler runs the steps: in order
// for the trace's serial IO (each bio to completion before the next, as the kernel's worker does
// for sorted IO), in a seeded random order for IO in flight at once (`parallel` ... `end`).
//
// The kernel's locking comes with it (dm-thin.c, dm-bio-prison-v1.c): a cell per virtual block
// and per data block; a bio that finds a cell held waits in it and is processed again when the
// holder releases it. Copy-on-write and zeroing are steps of their own that other IO interleaves
// with. Every bio issued to the data device is counted in the all-IO deferred set (reads of shared
// blocks also in the shared-read one); a discard unmaps only once the IO counted before it has
// completed, a copy-on-write inserts its mapping only once earlier reads of shared blocks have.
// `preFixOrdering` counts a bio in the deferred set before it locks its cell, as dm-thin did
// before its fix (Linux 3.6, "dm thin: fix race between simultaneous io and discards to same
// block"): then a discard holding the cell waits for a write that waits for the cell.
//
// Each step checks the pool against the model (mappings, allocations). Content is followed
// symbolically through the data steps (what each data block holds, as Content), so reads can say
// what they returned and the model's mappings get the content the steps gave them.
import { Pool, PoolError, RemovedMapping } from '../thin/pool.js';
import { SECTOR_BYTES, describeSector, fillContent } from './content.js';
import { DataFile } from './data-file.js';
import { BlockTable, Content, Model, UNKNOWN, ZEROES, overlay, segments } from './model.js';
import { ExternalOrigin } from './origin.js';
import { BioPrison, Cell, CellSpace, DeferredEntry, DeferredSet } from './prison.js';
import { LineProblem, mismatch, refused } from './problem.js';
import { TraceOp } from './trace.js';

export type BioKind = 'read' | 'write' | 'discard';

/** Data IO goes through a buffer of at most this many sectors (blocks reach 1 GiB). */
const CHUNK_SECTORS = 2048;

export class Bio {
  /** Its entries in the deferred sets, from when it is issued to the data device until it completes. */
  allIo: DeferredEntry<Work> | null = null;
  sharedRead: DeferredEntry<Work> | null = null;
  /** Cells it holds. */
  readonly cells: Array<Cell<Bio>> = [];
  state: 'new' | 'running' | 'waiting' | 'queued' | 'done' | 'failed' = 'new';
  /** Why it waits (deadlock reports). */
  waitingIn: Cell<Bio> | null = null;
  waitingOn: { set: 'all IO' | 'shared reads'; generation: number } | null = null;
  /** Counted among its device's IO in flight (a suspend waits for these). */
  entered = false;
  /** What a read returned, as content of its block (sectors outside [begin, end) unspecified). */
  result: Content | undefined;
  problem: LineProblem | undefined;
  /** Set when it waited in a cell or a deferred set: the scheduler's interleavings at work. */
  waited = false;

  /**
   * A read or write of sectors [begin, end) of virtual block `block`; a discard of whole blocks
   * [block, block + count).
   */
  constructor(readonly op: TraceOp, readonly kind: BioKind, readonly dev: number, readonly block: number, readonly begin: number, readonly end: number, readonly count = 1) {}

  /** The trace line it comes from. */
  get line(): number {
    return this.op.line;
  }

  get finished(): boolean {
    return this.state === 'done' || this.state === 'failed';
  }

  toString(): string {
    const what = this.kind === 'discard' ? (this.count === 1 ? `block ${this.block}` : `blocks ${this.block}..${this.block + this.count - 1}`) : `block ${this.block}`;
    return `${this.kind} of device ${this.dev} ${what} (line ${this.line})`;
  }
}

/** A block being provisioned or copied for a write (dm_thin_new_mapping). */
interface NewMapping {
  bio: Bio;
  dataBlock: number;
  /** The cell held until the mapping is inserted: the virtual one (provisioning) or the data one (copy-on-write). */
  cell: Cell<Bio>;
  /** Preparation still to finish: the quiesce, the copy or zeroing, the bio's own whole-block write. */
  pending: number;
  /** The bio wrote the whole new block itself (no copy or zeroing): it completes when the mapping is in. */
  overwrite: boolean;
}

/** What waits in a deferred set. */
type Work = { kind: 'discard'; bio: Bio; mappings: RemovedMapping[] } | { kind: 'quiesced'; m: NewMapping };

/** What the IO path needs of the replay around it. */
export interface IoHost {
  readonly pool: Pool;
  readonly model: Model;
  readonly data: DataFile | undefined;
  readonly zero: boolean;
  readonly passdown: boolean;
  /** Whether a write that needs a block fails at once when there is none (else it waits). */
  readonly errorIfNoSpace: boolean;
  /** External origins, by the trace line that attached them (their content's name). */
  readonly origins: ReadonlyMap<number, ExternalOrigin>;
  /** The trace line being run (commits and reports name it). */
  line: number;
  /** Follows a pool failure (an aborted transaction rolls the model back); returns what to report. */
  poolFailure(e: unknown): LineProblem;
  /** A commit the pool made inside an allocation: the model has the allocation now. */
  committed(): void;
  /** A step of no bio (a message, a commit among IO in flight) failed. */
  report(problem: LineProblem, line: number): void;
}

interface Task {
  bio: Bio | null;
  line: number;
  run: () => void;
}

export class IoPath {
  private readonly prison = new BioPrison<Bio>();
  private readonly allIo = new DeferredSet<Work>();
  private readonly sharedReads = new DeferredSet<Work>();
  private tasks: Array<Task | undefined> = [];
  private head = 0;
  /** The interleaving of IO in flight; null: in order. */
  private random: (() => number) | null = null;
  /** What data blocks touched by the IO being run hold (symbolic), seeded from the model. */
  private readonly dataContent = new Map<number, Content>();
  /** Bios not finished (nor waiting for data space). */
  private readonly live = new Set<Bio>();
  /** Bios waiting for data space (error_if_no_space=off), in arrival order. */
  readonly waitingForSpace: Bio[] = [];
  /** Devices whose new IO is held (suspended for a snapshot, or not created yet), with what waits. */
  private readonly heldDevices = new Map<number, Bio[]>();
  private readonly inFlightByDev = new Map<number, number>();
  private readonly quiesceWaiters = new Map<number, Array<() => void>>();
  /** A commit the pool made inside an allocation, reported once the model has it. */
  allocating = false;
  commitAfterAllocation = false;
  /** Blocks read back from the data file and compared with the model. */
  verifiedBlocks = 0;
  /** Bios that waited for a cell or earlier IO. */
  waits = 0;
  /** Data blocks written since the last commit: after a crash, the committed ones must be intact. */
  readonly writtenSinceCommit = new Set<number>();
  private readonly chunk: Buffer;
  private readonly expected: Buffer;
  private readonly spb: number;

  constructor(private readonly host: IoHost, private readonly preFixOrdering = false) {
    this.spb = host.model.sectorsPerBlock;
    const bytes = Math.min(this.spb, CHUNK_SECTORS) * SECTOR_BYTES;
    this.chunk = Buffer.alloc(bytes);
    this.expected = Buffer.alloc(bytes);
  }

  // ---- running

  /** A new bio for trace operation `op`. */
  bio(op: TraceOp, kind: BioKind, dev: number, block: number, begin: number, end: number, count = 1): Bio {
    return new Bio(op, kind, dev, block, begin, end, count);
  }

  /** What device `dev`'s mapped block holds, as the IO just run left it. */
  contentOf(dev: number, block: number): Content {
    const table = this.host.model.device(dev)!.table;
    return this.dataContent.get(table.dataAt(table.find(block))) ?? this.host.model.contentOf(dev, block);
  }

  submit(bio: Bio): void {
    this.live.add(bio);
    bio.state = 'running';
    this.queue(bio, () => this.map(bio));
  }

  /** A step of no bio (a message, a commit) to run among the IO, at trace line `line`. */
  task(line: number, run: () => void): void {
    this.tasks.push({ bio: null, line, run });
  }

  /** Steps queued and not yet run. */
  get runnable(): number {
    return this.tasks.length - this.head;
  }

  /**
   * Runs steps until none is runnable: in order, or (with `random`) in a random order. What is
   * left unfinished then (not waiting for data space) is deadlocked: see `stuck`.
   */
  run(random: (() => number) | null = null): void {
    this.random = random;
    const line = this.host.line;
    try {
      while (this.head < this.tasks.length) {
        if (this.random) {
          const i = this.head + Math.floor(this.random() * (this.tasks.length - this.head));
          const t = this.tasks[i];
          this.tasks[i] = this.tasks[this.head];
          this.tasks[this.head] = t;
        }
        const t = this.tasks[this.head]!;
        this.tasks[this.head++] = undefined;
        this.host.line = t.line;
        this.step(t);
      }
    } finally {
      this.tasks = [];
      this.head = 0;
      this.random = null;
      this.host.line = line;
    }
  }

  private step(t: Task): void {
    try {
      t.run();
    } catch (e) {
      let problem: LineProblem;
      if (e instanceof LineProblem) problem = e;
      else if (e instanceof PoolError) problem = this.host.poolFailure(e);
      else throw e;
      if (t.bio) this.fail(t.bio, problem);
      else this.host.report(problem, t.line);
    }
  }

  private queue(bio: Bio, run: () => void): void {
    this.tasks.push({ bio, line: bio.line, run });
  }

  /** Bios that can never finish: nothing is runnable and they wait (empty unless deadlocked). */
  get stuck(): Bio[] {
    return [...this.live].filter((b) => !b.finished && b.state !== 'queued');
  }

  /** Why each stuck bio waits, for the deadlock report. */
  describeStuck(): string[] {
    return this.stuck.map((b) => {
      if (b.waitingIn) return `${b} waits for the ${b.waitingIn.space} cell of device ${b.waitingIn.dev} block ${b.waitingIn.block}, held by ${b.waitingIn.holder}`;
      if (b.waitingOn) {
        const { set, generation } = b.waitingOn;
        const earlier = [...this.live].filter((o) => {
          const e = set === 'all IO' ? o.allIo : o.sharedRead;
          return o !== b && e !== null && e.generation <= generation;
        });
        const what = b.kind === 'discard' ? 'unmapping' : 'inserting its new mapping';
        return `${b} waits for ${earlier.length} earlier IO to finish before ${what} (the ${set} deferred set): ${earlier.join('; ')}`;
      }
      if (this.heldDevices.get(b.dev)?.includes(b)) return `${b} waits for device ${b.dev} to be resumed`;
      return `${b} waits`;
    });
  }

  /** Forgets what the IO just run touched (content is the model's again). */
  settle(): void {
    this.dataContent.clear();
    for (const b of this.live) if (b.finished) this.live.delete(b);
  }

  /** Unfinished bios are abandoned (after a deadlock): their locks go with them. */
  abandon(): void {
    for (const b of this.live) {
      b.state = 'failed';
      this.live.delete(b);
    }
    this.heldDevices.clear();
  }

  // ---- devices held (suspended for a snapshot, or created by one)

  /** New IO to `dev` waits until `release(dev)`. */
  hold(dev: number): void {
    if (!this.heldDevices.has(dev)) this.heldDevices.set(dev, []);
  }

  release(dev: number): void {
    const held = this.heldDevices.get(dev);
    if (!held) return;
    this.heldDevices.delete(dev);
    for (const b of held) this.queue(b, () => this.map(b));
  }

  /** Runs `fn` as a step once no IO to `dev` is in flight (a suspend's wait). */
  whenQuiet(dev: number, line: number, fn: () => void): void {
    if ((this.inFlightByDev.get(dev) ?? 0) === 0) this.task(line, fn);
    else {
      const list = this.quiesceWaiters.get(dev) ?? [];
      list.push(() => this.task(line, fn));
      this.quiesceWaiters.set(dev, list);
    }
  }

  // ---- waiting for data space

  /** Writes waiting for data space go again (the pool is back in write mode); returns them. */
  retryWaitingForSpace(): Bio[] {
    const bios = this.waitingForSpace.splice(0);
    for (const b of bios) {
      b.state = 'running';
      this.live.add(b);
      this.queue(b, () => this.map(b));
    }
    return bios;
  }

  /** Writes waiting for data space fail (the no-space timeout, or the pool going away). */
  failWaitingForSpace(message: string): Bio[] {
    const bios = this.waitingForSpace.splice(0);
    for (const b of bios) {
      b.state = 'failed';
      b.problem = new LineProblem('refused', message);
    }
    return bios;
  }

  // ---- the steps

  /** thin_bio_map: reads and writes lock their virtual block and look it up; discards go to the worker. */
  private map(bio: Bio): void {
    if (this.host.pool.mode === 'fail') refused('the pool has failed: all IO fails');
    const held = this.heldDevices.get(bio.dev);
    if (held) {
      bio.state = 'waiting';
      held.push(bio);
      return;
    }
    bio.state = 'running';
    if (!bio.entered) {
      bio.entered = true;
      this.inFlightByDev.set(bio.dev, (this.inFlightByDev.get(bio.dev) ?? 0) + 1);
    }
    if (bio.kind === 'discard') {
      this.queue(bio, () => this.processDiscard(bio));
      return;
    }
    if (this.preFixOrdering && !bio.allIo) {
      // Before the fix: counted as IO in flight at once, its cell locked later by the worker.
      bio.allIo = this.allIo.inc();
      this.queue(bio, () => this.processBio(bio));
      return;
    }
    this.processBio(bio);
  }

  /** Locks the virtual block and looks it up: a mapped block this device owns is remapped at once. */
  private processBio(bio: Bio): void {
    if (!this.detain(bio, 'virtual', bio.block)) return;
    const mapping = this.lookup(bio);
    if (mapping && !mapping.shared) {
      if (!this.detain(bio, 'data', mapping.dataBlock)) return;
      this.issue(bio, mapping.dataBlock);
      return;
    }
    // Shared or unmapped: the worker takes it, the virtual cell held.
    this.queue(bio, () => this.processCell(bio));
  }

  /** The worker's process_cell (and its read-only and out-of-data-space forms). */
  private processCell(bio: Bio): void {
    const mapping = this.lookup(bio);
    if (mapping && !mapping.shared) return this.issue(bio, mapping.dataBlock);
    if (mapping) {
      if (!this.detain(bio, 'data', mapping.dataBlock)) return;
      if (bio.kind === 'write') return this.breakSharing(bio, mapping.dataBlock);
      bio.sharedRead = this.sharedReads.inc();
      return this.issue(bio, mapping.dataBlock);
    }
    if (bio.kind === 'read') return this.readUnmapped(bio);
    this.provision(bio);
  }

  /**
   * Detains `bio` in the cell of (space, its device, block): true when it holds it now. Otherwise
   * it waits in the holder's cell, and gives up any cell it holds (their waiters run again).
   */
  private detain(bio: Bio, space: CellSpace, block: number): boolean {
    const cell = this.prison.detain(space, bio.dev, block, bio);
    if (cell) {
      bio.cells.push(cell);
      return true;
    }
    bio.state = 'waiting';
    bio.waited = true;
    this.waits++;
    bio.waitingIn = this.prison.find(space, bio.dev, block)!;
    this.releaseCells(bio);
    return false;
  }

  /** Releases every cell `bio` holds; their waiters are processed again. */
  private releaseCells(bio: Bio): void {
    for (const cell of bio.cells.splice(0)) this.releaseCell(cell);
  }

  private releaseCell(cell: Cell<Bio>): void {
    for (const inmate of this.prison.release(cell)) {
      inmate.waitingIn = null;
      this.queue(inmate, () => this.reprocess(inmate));
    }
  }

  /** A bio let out of a cell starts over (counted in the deferred set already, before the fix). */
  private reprocess(bio: Bio): void {
    bio.state = 'running';
    if (bio.kind === 'discard') this.processDiscard(bio);
    else this.processBio(bio);
  }

  /** Issues `bio` to data block `dataBlock`: counted as IO in flight, its cells released, the data IO a step of its own. */
  private issue(bio: Bio, dataBlock: number): void {
    if (!this.dataContent.has(dataBlock)) this.dataContent.set(dataBlock, this.host.model.contentOf(bio.dev, bio.block));
    bio.allIo ??= this.allIo.inc();
    this.releaseCells(bio);
    this.queue(bio, () => this.dataIo(bio, dataBlock, true));
  }

  /** The data IO of a bio issued to `dataBlock` (mapped: the model's mapping follows a write), then its completion. */
  private dataIo(bio: Bio, dataBlock: number, mapped: boolean): void {
    if (bio.kind === 'read') {
      const content = this.dataContent.get(dataBlock)!;
      if (this.host.data) this.verify(bio, dataBlock, content, bio.begin, bio.end);
      bio.result = content;
    } else {
      this.writeData(bio, dataBlock);
      if (mapped) this.host.model.overwrite(bio.dev, bio.block, bio.begin, bio.end, bio.line);
    }
    this.complete(bio);
  }

  private readUnmapped(bio: Bio): void {
    // Zeroes, or what the external origin holds: nothing of the pool's is read.
    bio.result = this.host.model.unmappedContent(bio.dev, bio.block);
    this.complete(bio);
  }

  /** A write to an unmapped block: a new data block, zeroed or copied from the external origin around a partial write. */
  private provision(bio: Bio): void {
    const dataBlock = this.allocate(bio, false);
    if (dataBlock === null) return;
    const whole = bio.begin === 0 && bio.end === this.spb;
    const base = this.host.model.provisionContent(bio.dev, bio.block, this.host.zero);
    const m: NewMapping = { bio, dataBlock, cell: bio.cells[0], pending: 0, overwrite: false };
    if (whole && (this.host.zero || base !== UNKNOWN)) {
      this.overwrite(m);
    } else if (base !== UNKNOWN) {
      // Zeroing, or the origin's copy (its tail zeroed), a step of its own.
      m.pending++;
      this.queue(bio, () => {
        this.fillBlock(bio, dataBlock, base);
        this.prepared(m);
      });
    } else {
      // Nothing to prepare (zeroing is off): the block keeps what it held.
      this.dataContent.set(dataBlock, UNKNOWN);
    }
    if (m.pending === 0) this.queue(bio, () => this.insert(m));
  }

  /** A write to a shared block: a new data block, the old one's data copied unless the write covers it all. */
  private breakSharing(bio: Bio, from: number): void {
    const dataBlock = this.allocate(bio, true);
    if (dataBlock === null) return;
    const dataCell = bio.cells[1];
    const m: NewMapping = { bio, dataBlock, cell: dataCell, pending: 0, overwrite: false };
    if (!this.dataContent.has(from)) this.dataContent.set(from, this.host.model.contentOf(bio.dev, bio.block));
    // Earlier reads of shared blocks finish first: inserting the mapping may free the old block.
    const generation = this.sharedReads.generation;
    if (this.sharedReads.addWork({ kind: 'quiesced', m })) {
      m.pending++;
      bio.waitingOn = { set: 'shared reads', generation };
    }
    if (bio.begin === 0 && bio.end === this.spb) {
      this.overwrite(m);
    } else {
      m.pending++;
      this.queue(bio, () => {
        this.copyBlock(from, dataBlock);
        this.prepared(m);
      });
    }
    // The virtual cell goes; the data cell stays until the new mapping is in.
    this.releaseCell(bio.cells.splice(0, 1)[0]);
    if (m.pending === 0) this.queue(bio, () => this.insert(m));
  }

  /** The bio writes the whole new block itself before the mapping goes in. */
  private overwrite(m: NewMapping): void {
    m.overwrite = true;
    m.pending++;
    m.bio.allIo ??= this.allIo.inc();
    this.queue(m.bio, () => {
      this.writeData(m.bio, m.dataBlock);
      this.prepared(m);
    });
  }

  private prepared(m: NewMapping): void {
    if (--m.pending === 0) this.queue(m.bio, () => this.insert(m));
  }

  /** The prepared block's mapping goes in (process_prepared_mapping); then the bio's own data, unless written already. */
  private insert(m: NewMapping): void {
    const { bio, dataBlock } = m;
    const pool = this.host.pool;
    if (pool.mode !== 'write' && pool.mode !== 'out-of-data-space') {
      // The pool turned read-only meanwhile: the cell's bios fail (the block stays allocated).
      const reason = pool.modeError().message;
      for (const inmate of this.prison.release(m.cell)) this.fail(inmate, new LineProblem('refused', reason));
      bio.cells.splice(bio.cells.indexOf(m.cell), 1);
      refused(reason);
    }
    try {
      pool.insertMapping(bio.dev, bio.block, dataBlock);
    } catch (e) {
      // As the kernel leaves it when its pool turns read-only here: allocated, unmapped.
      throw this.host.poolFailure(e);
    }
    this.host.model.map(bio.dev, bio.block, dataBlock, this.dataContent.get(dataBlock)!);
    if (m.overwrite) {
      this.releaseCells(bio);
      this.complete(bio);
    } else {
      this.issue(bio, dataBlock);
    }
  }

  /** The worker's discard: lock the blocks, then unmap once the IO counted before it is done. */
  private processDiscard(bio: Bio): void {
    const mode = this.host.pool.mode;
    // A read-only pool completes discards without doing anything.
    if (mode === 'read-only' || mode === 'out-of-metadata-space') return this.complete(bio);
    const end = bio.block + bio.count;
    const dev = this.host.model.device(bio.dev);
    const mappings: RemovedMapping[] = [];
    try {
      this.host.pool.mappingsInRange(bio.dev, bio.block, end, (m) => mappings.push(m));
    } catch (e) {
      if (e instanceof PoolError && !dev) refused(e.message);
      throw e;
    }
    if (!dev) mismatch(`device ${bio.dev} should not exist, but the pool has it`);
    const expected = countInRange(dev!.table, bio.block, end);
    if (mappings.length !== expected) mismatch(`the pool maps ${mappings.length} blocks in ${bio.block}..${end - 1}, the model ${expected}`);
    for (let b = bio.block; b < end; b++) if (!this.detain(bio, 'virtual', b)) return;
    for (const m of mappings) if (!this.detain(bio, 'data', m.dataBlock)) return;
    if (mappings.length === 0) {
      this.releaseCells(bio);
      return this.complete(bio);
    }
    const generation = this.allIo.generation;
    if (!this.allIo.addWork({ kind: 'discard', bio, mappings })) return this.unmap(bio, mappings);
    bio.state = 'waiting';
    bio.waited = true;
    this.waits++;
    bio.waitingOn = { set: 'all IO', generation };
  }

  /** The discard's removal (process_prepared_discard): unmapped, and passed down where unshared. */
  private unmap(bio: Bio, locked: RemovedMapping[]): void {
    bio.waitingOn = null;
    bio.state = 'running';
    const { pool, model, data } = this.host;
    const dev = model.device(bio.dev)!;
    const shared: number[] = [];
    // Found inside the pool's removal, reported once it is done (it must not be interrupted).
    const wrong: string[] = [];
    let removed = 0;
    try {
      removed = pool.removeRange(bio.dev, bio.block, bio.block + bio.count, (m) => {
        const slot = typeof m.thinBlock === 'number' ? dev.table.find(m.thinBlock) : -1;
        if (slot < 0) {
          wrong.push(`the pool unmapped block ${m.thinBlock}, which the model does not map`);
          return;
        }
        if (dev.table.dataAt(slot) !== m.dataBlock || dev.table.timeAt(slot) !== m.time) {
          wrong.push(`block ${m.thinBlock} mapped data block ${m.dataBlock} at time ${m.time}, but the model says ${dev.table.dataAt(slot)} at time ${dev.table.timeAt(slot)}`);
        }
        model.unmap(bio.dev, m.thinBlock as number);
        if (!this.host.passdown || !data) return;
        // Passed down unless it may be shared (mapped before the last snapshot) and still is.
        if (m.time < dev.snapTime) shared.push(m.dataBlock);
        else data.punch(m.dataBlock);
      });
    } catch (e) {
      throw this.host.poolFailure(e);
    }
    if (wrong.length > 0) mismatch(wrong[0]);
    if (removed !== locked.length) mismatch(`the pool unmapped ${removed} blocks, but ${locked.length} were mapped when the discard locked them`);
    for (const b of shared) {
      const free = pool.dataBlockCount(b) === 0;
      if (free === model.inUse(b)) mismatch(`data block ${b}: the pool's count says ${free ? 'free' : 'in use'}, the model disagrees`);
      if (free) data!.punch(b);
    }
    this.releaseCells(bio);
    this.complete(bio);
  }

  /** The bio is done: its deferred-set entries go, and what waited for them runs. */
  private complete(bio: Bio): void {
    this.finish(bio);
    bio.state = 'done';
  }

  private fail(bio: Bio, problem: LineProblem): void {
    bio.problem = problem;
    this.finish(bio);
    bio.state = 'failed';
  }

  private finish(bio: Bio): void {
    this.releaseCells(bio);
    for (const [set, entry] of [[this.allIo, bio.allIo], [this.sharedReads, bio.sharedRead]] as const) {
      if (!entry) continue;
      for (const w of set.dec(entry)) this.runWork(w);
    }
    bio.allIo = bio.sharedRead = null;
    bio.waitingIn = null;
    if (bio.entered) {
      bio.entered = false;
      const n = this.inFlightByDev.get(bio.dev)! - 1;
      this.inFlightByDev.set(bio.dev, n);
      if (n === 0) for (const w of this.quiesceWaiters.get(bio.dev)?.splice(0) ?? []) w();
    }
  }

  private runWork(w: Work): void {
    if (w.kind === 'discard') this.queue(w.bio, () => this.unmap(w.bio, w.mappings));
    else {
      w.m.bio.waitingOn = null;
      this.prepared(w.m);
    }
  }

  /** A write that needs a block and finds none: it fails (error_if_no_space) or waits, with its cell's bios. */
  private noSpace(bio: Bio, message: string): null {
    if (this.host.errorIfNoSpace) refused(message);
    // retry_bios_on_resume: the cell's bios all wait for space; other cells it holds are let go.
    const cell = bio.cells.pop()!;
    this.releaseCells(bio);
    const inmates = this.prison.release(cell);
    for (const b of [bio, ...inmates]) {
      b.state = 'queued';
      b.waitingIn = null;
      this.finishForQueue(b);
      this.waitingForSpace.push(b);
    }
    return null;
  }

  /** A bio set aside until space comes back holds nothing meanwhile. */
  private finishForQueue(bio: Bio): void {
    this.finish(bio);
    this.live.delete(bio);
  }

  // ---- the pool's steps, checked against the model

  /** The pool's mapping of the bio's block, which must be the model's. */
  private lookup(bio: Bio): { dataBlock: number; shared: boolean } | null {
    const { pool, model } = this.host;
    const dev = model.device(bio.dev);
    let mapping;
    try {
      mapping = pool.lookup(bio.dev, bio.block);
    } catch (e) {
      if (!(e instanceof PoolError)) throw e;
      if (!dev) refused(e.message);
      return mismatch(`the pool says ${e.message}, but the model has device ${bio.dev}`);
    }
    if (!dev) mismatch(`device ${bio.dev} should not exist, but the pool has it`);
    const slot = dev!.table.find(bio.block);
    if ((mapping === null) !== (slot < 0)) {
      mismatch(mapping ? `block ${bio.block} is mapped to data block ${mapping.dataBlock}, but the model has it unmapped` : `block ${bio.block} is unmapped, but the model maps it to data block ${dev!.table.dataAt(slot)}`);
    }
    if (mapping) {
      const t = dev!.table;
      if (mapping.dataBlock !== t.dataAt(slot) || mapping.time !== t.timeAt(slot)) {
        mismatch(`block ${bio.block} maps to data block ${mapping.dataBlock} at time ${mapping.time}, but the model says ${t.dataAt(slot)} at time ${t.timeAt(slot)}`);
      }
      if (mapping.shared !== t.timeAt(slot) < dev!.snapTime) mismatch(`block ${bio.block}: the pool and the model disagree on whether it is shared`);
    }
    return mapping;
  }

  /** A new data block, the one the model says the kernel's cursor gives; null when there is none and the bio waits. */
  private allocate(bio: Bio, copy: boolean): number | null {
    const { pool, model } = this.host;
    const mode = pool.mode;
    if (mode !== 'write') {
      if (mode === 'out-of-data-space') return this.noSpace(bio, 'the pool is out of data space');
      refused(pool.modeError().message);
    }
    const predicted = model.nextAllocation();
    const commits = pool.commits;
    let b: number;
    this.allocating = true;
    try {
      b = pool.allocDataBlock();
    } catch (e) {
      if (e instanceof PoolError && e.reason === 'no-data-space') {
        if (!('outOfSpace' in predicted)) mismatch(`the pool is out of data space, but the model would allocate data block ${predicted.block}`);
        const committed = pool.commits - commits;
        const expected = predicted.outOfSpace === 'commit-first' ? 1 : 0;
        if (committed !== expected) mismatch(`running out of data space, the pool committed ${committed} times; the kernel commits ${expected}`);
        return this.noSpace(bio, e.message);
      }
      throw this.host.poolFailure(e);
    } finally {
      this.allocating = false;
    }
    model.allocated(b, copy);
    if (this.commitAfterAllocation) {
      this.commitAfterAllocation = false;
      this.host.committed();
    }
    if ('outOfSpace' in predicted) mismatch(`the pool allocated data block ${b}, but the model says it is out of data space (${predicted.outOfSpace})`);
    if (predicted.block !== b) mismatch(`the pool allocated data block ${b}, but the kernel's cursor gives ${predicted.block}`);
    this.host.data?.cancelPunch(b);
    return b;
  }

  // ---- data IO, a chunk at a time

  /** The bio's sectors written to `dataBlock`. */
  private writeData(bio: Bio, dataBlock: number): void {
    const { begin, end } = bio;
    const before = this.dataContent.get(dataBlock) ?? UNKNOWN;
    this.dataContent.set(dataBlock, begin === 0 && end === this.spb ? bio.line : overlay(segments(before, this.spb), begin, end, bio.line, this.spb));
    const data = this.host.data;
    if (!data) return;
    this.writtenSinceCommit.add(dataBlock);
    this.chunks(begin, end, (sector, n) => {
      fillContent(this.chunk, 0, bio.line, bio.block, sector, n);
      data.write(dataBlock, sector * SECTOR_BYTES, this.chunk, 0, n * SECTOR_BYTES);
    });
  }

  /** `to` holds what `from` holds. */
  private copyBlock(from: number, to: number): void {
    this.dataContent.set(to, this.dataContent.get(from)!);
    const data = this.host.data;
    if (!data) return;
    this.writtenSinceCommit.add(to);
    this.chunks(0, this.spb, (sector, n) => {
      data.read(from, sector * SECTOR_BYTES, this.chunk, 0, n * SECTOR_BYTES);
      data.write(to, sector * SECTOR_BYTES, this.chunk, 0, n * SECTOR_BYTES);
    });
  }

  /** The new block for `bio` made to hold `content` (zeroes, the external origin's, or both). */
  private fillBlock(bio: Bio, dataBlock: number, content: Content): void {
    this.dataContent.set(dataBlock, content);
    const data = this.host.data;
    if (!data) return;
    this.writtenSinceCommit.add(dataBlock);
    for (const seg of segments(content, this.spb)) {
      if (seg.line === UNKNOWN) continue;
      this.chunks(seg.begin, seg.end, (sector, n) => {
        this.fillExpected(this.chunk, seg.line, bio.block, sector, n);
        data.write(dataBlock, sector * SECTOR_BYTES, this.chunk, 0, n * SECTOR_BYTES);
      });
    }
  }

  /** `n` sectors of what `line` holds at `block` (a write's, an external origin's, or zeroes), into `buf`. */
  private fillExpected(buf: Buffer, line: number, block: number, sector: number, n: number): void {
    if (line === ZEROES) buf.fill(0, 0, n * SECTOR_BYTES);
    else {
      const origin = this.host.origins.get(line);
      if (origin) origin.read(block, sector, n, this.spb, buf, 0);
      else fillContent(buf, 0, line, block, sector, n);
    }
  }

  /** Sectors [begin, end) of `dataBlock` read from the data file and compared with `content`. */
  private verify(bio: Bio, dataBlock: number, content: Content, begin: number, end: number): void {
    this.verifiedBlocks++;
    this.verifyBlock(bio.dev, bio.block, dataBlock, content, begin, end);
  }

  /** Throws a mismatch naming the first sector of [begin, end) of `dataBlock` that does not hold `content`. */
  verifyBlock(devId: number, block: number, dataBlock: number, content: Content, begin: number, end: number): void {
    const data = this.host.data!;
    for (const seg of segments(content, this.spb)) {
      const from = Math.max(seg.begin, begin);
      const to = Math.min(seg.end, end);
      if (from >= to || seg.line === UNKNOWN) continue;
      this.chunks(from, to, (sector, n) => {
        data.read(dataBlock, sector * SECTOR_BYTES, this.chunk, 0, n * SECTOR_BYTES);
        this.fillExpected(this.expected, seg.line, block, sector, n);
        if (this.chunk.compare(this.expected, 0, n * SECTOR_BYTES, 0, n * SECTOR_BYTES) === 0) return;
        for (let s = 0; s < n; s++) {
          const o = s * SECTOR_BYTES;
          if (this.chunk.compare(this.expected, o, o + SECTOR_BYTES, o, o + SECTOR_BYTES) === 0) continue;
          const want = seg.line === ZEROES ? 'zeroes' : this.host.origins.has(seg.line) ? `what the external origin (line ${seg.line}) holds` : `what line ${seg.line} wrote`;
          mismatch(`device ${devId} block ${block} sector ${sector + s} (data block ${dataBlock}) holds ${describeSector(this.chunk, o, block)}, but should hold ${want}`);
        }
      });
    }
  }

  /** Calls `fn` for [begin, end) in pieces that fit the chunk buffer. */
  private chunks(begin: number, end: number, fn: (sector: number, n: number) => void): void {
    const max = this.chunk.length / SECTOR_BYTES;
    for (let s = begin; s < end; s += max) fn(s, Math.min(max, end - s));
  }
}

/** A seeded pseudo-random generator (mulberry32): numbers in [0, 1), the same for the same seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 0x100000000;
  };
}

/** Mapped blocks of a device's table in [begin, end). */
function countInRange(table: BlockTable, begin: number, end: number): number {
  let n = 0;
  if (end - begin < table.size) {
    for (let b = begin; b < end; b++) if (table.find(b) >= 0) n++;
  } else {
    table.forEach((k) => {
      if (k >= begin && k < end) n++;
    });
  }
  return n;
}
