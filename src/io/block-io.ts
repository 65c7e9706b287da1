// Block IO over a metadata file or block device: 4 KiB blocks addressed by number.
import * as fs from 'node:fs';

export const BLOCK_SIZE = 4096;

/** A problem with a file the user named (missing, unreadable, too small, ...); one line, exit 1. */
export class InputError extends Error {}

/** strerror's words for the errors a user can act on; anything else keeps Node's message. */
const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'No such file or directory',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  ELOOP: 'Too many levels of symbolic links',
  ENAMETOOLONG: 'File name too long',
  EROFS: 'Read-only file system',
  ENXIO: 'No such device or address',
  ENODEV: 'No such device',
  // Where we open for writing, a block device someone holds exclusively: the kernel, for a live pool.
  EBUSY: 'Device or resource busy (is the pool active?)',
};

/** The one-line error for a failed system call on `path`. */
export function explainIoError(path: string, e: unknown): InputError {
  const err = e as NodeJS.ErrnoException;
  return new InputError(`${path}: ${(err.code !== undefined && ERRNO_TEXT[err.code]) || err.message}`);
}

/** What `openFile` opens: reading, writing (blocks, in place), or reading a stream (XML may come from a pipe). */
export type OpenMode = 'read' | 'write' | 'stream';

export interface OpenedFile {
  readonly path: string;
  readonly fd: number;
  /** Bytes: a regular file's size, a block device's capacity, 0 for a stream. */
  readonly size: number;
  /** A regular file or block device, which can be read at any offset (not a pipe). */
  readonly seekable: boolean;
}

/**
 * Opens a file the user named, each problem as one line that names it. Only regular files and
 * block devices hold metadata ('stream' also takes pipes and character devices). A block device
 * opened for writing is opened exclusively (O_EXCL), so one that the kernel holds for a live
 * pool is refused instead of being rewritten under it; readers don't claim it (thin_dump -m
 * reads a live pool's metadata).
 */
export function openFile(path: string, mode: OpenMode): OpenedFile {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    throw explainIoError(path, e);
  }
  if (st.isDirectory()) throw explainIoError(path, { code: 'EISDIR' });
  const seekable = st.isFile() || st.isBlockDevice();
  if (!seekable && !(mode === 'stream' && (st.isFIFO() || st.isCharacterDevice() || st.isSocket()))) {
    throw new InputError(`${path}: not a regular file or block device`);
  }
  const { O_RDONLY, O_RDWR, O_EXCL } = fs.constants;
  const flags = mode !== 'write' ? O_RDONLY : st.isBlockDevice() ? O_RDWR | O_EXCL : O_RDWR;
  let fd: number;
  try {
    fd = fs.openSync(path, flags);
  } catch (e) {
    throw explainIoError(path, e);
  }
  try {
    return { path, fd, size: seekable ? sizeOf(path, fd) : 0, seekable };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Size in bytes of an open regular file or block device (via sysfs: Node has no BLKGETSIZE64). */
function sizeOf(path: string, fd: number): number {
  const st = fs.fstatSync(fd, { bigint: true });
  if (!st.isBlockDevice()) return Number(st.size);
  try {
    return Number(fs.readFileSync(`${sysfsBlockDir(st.rdev)}/size`, 'utf8').trim()) * 512;
  } catch (e) {
    throw new InputError(`${path}: cannot find the size of the block device (${(e as Error).message})`);
  }
}

/** The sysfs directory of block device `rdev` (glibc's dev_t encoding of major and minor). */
export function sysfsBlockDir(rdev: bigint): string {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return `/sys/dev/block/${major}:${minor}`;
}

/**
 * A block number for a message. Past 2^53 only a rounded double is left of the on-disk u64
 * (pdata/le.ts readBlockNr), which would print as a number the metadata does not hold.
 */
function blockNrText(b: number): string {
  return b <= Number.MAX_SAFE_INTEGER ? String(b) : 'past 2^53';
}

/** Blocks a sequential stream reads ahead at first, and at most (128 KiB): measured in docs/benchmarks.md. */
const READAHEAD_FIRST = 4;
const READAHEAD_MAX = 32;
/** Sequential streams followed at once: a walk of two trees side by side, each leaves and internal nodes. */
const STREAMS = 4;
/**
 * How far ahead of a stream's last block a read still continues it: 0.9.0's restore leaves a
 * block between one leaf and the next at one step in ten, which would end a run each time.
 */
const READAHEAD_GAP = 2;

/**
 * Where a reader was reading: the last block read, how many reads in a row climbed to it (each at
 * most READAHEAD_GAP past the one before), and the window read ahead. The third read of a run
 * reads a window ahead in one pread (pairs of blocks are common in kernel-written metadata and
 * would waste a window each); a run that goes on past the window's end doubles the next one, up
 * to READAHEAD_MAX.
 */
class Stream {
  last = -2;
  run = 0;
  /** The blocks in `window`: [start, end). */
  start = 0;
  end = 0;
  window: Buffer | null = null;
  /** The window's blocks, one view each (made once: a view per read would be garbage). */
  readonly views: Buffer[] = [];
  /** When this stream was last read from, for replacing the least recently used. */
  used = 0;
}

/**
 * Reads whole blocks; opened read-only so check/dump can never change their input. Runs of
 * rising blocks (a tree's leaves as restore lays them out), up to STREAMS of them read in turn,
 * are read ahead a window at a time; reads that jump (kernel-written metadata) stay one
 * block each. A window holds the blocks as they were when read: a file written since is read
 * through a new reader (no tool reads a file through a reader while it writes that file).
 */
export class BlockReader {
  readonly path: string;
  readonly nrBlocks: number;
  private readonly fd: number;
  private readonly streams: Stream[] = [];
  private clock = 0;
  /** System calls that read blocks, for the tests and benchmarks. */
  preads = 0;

  /** Reads the metadata at `source` (a path, opened here, or a file already opened to read). */
  constructor(source: string | OpenedFile) {
    const file = typeof source === 'string' ? openFile(source, 'read') : source;
    this.path = file.path;
    this.fd = file.fd;
    this.nrBlocks = Math.floor(file.size / BLOCK_SIZE);
    for (let i = 0; i < STREAMS; i++) this.streams.push(new Stream());
  }

  /** Reads block `b` into a fresh buffer. */
  read(b: number): Buffer {
    return this.readInto(b, Buffer.allocUnsafe(BLOCK_SIZE));
  }

  /** Reads block `b` into `buf` (at least BLOCK_SIZE bytes) and returns it. */
  readInto(b: number, buf: Buffer): Buffer {
    if (b >= this.nrBlocks || b < 0) {
      throw new InputError(`${this.path}: block ${blockNrText(b)} is beyond the end of the metadata (${this.nrBlocks} blocks)`);
    }
    const streams = this.streams;
    let follows: Stream | null = null;
    let oldest = streams[0];
    for (let i = 0; i < STREAMS; i++) {
      const s = streams[i];
      if (b >= s.start && b < s.end) {
        if (b > s.last) s.run++;
        s.last = b;
        s.used = ++this.clock;
        buf.set(s.views[b - s.start]);
        return buf;
      }
      if (b > s.last && b - s.last <= READAHEAD_GAP) follows = s;
      if (s.used < oldest.used) oldest = s;
    }
    if (follows !== null && follows.run >= 2 && this.readAhead(follows, b)) {
      buf.set(follows.views[0]);
      return buf;
    }
    // A jump starts a new stream in place of the least recently used; the second read of a run
    // continues its stream; both read that block alone.
    const s = follows ?? oldest;
    s.run = follows ? s.run + 1 : 1;
    s.last = b;
    s.start = s.end = 0;
    s.used = ++this.clock;
    this.preads++;
    const n = fs.readSync(this.fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE);
    if (n !== BLOCK_SIZE) throw new InputError(`${this.path}: short read at block ${b}`);
    return buf;
  }

  /**
   * Reads `s`'s window anew from `b` (just after `s.last`) on, up to the device's end. False when
   * the read failed (an unreadable sector somewhere in the window): `b` is then read alone, so
   * only an error in `b` itself is reported, as without read-ahead.
   */
  private readAhead(s: Stream, b: number): boolean {
    const size = b >= s.end && b - s.end < READAHEAD_GAP && s.end > s.start ? Math.min(2 * (s.end - s.start), READAHEAD_MAX) : READAHEAD_FIRST;
    const count = Math.min(size, this.nrBlocks - b);
    if (s.window === null) {
      s.window = Buffer.allocUnsafe(READAHEAD_MAX * BLOCK_SIZE);
      for (let i = 0; i < READAHEAD_MAX; i++) s.views.push(s.window.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
    }
    s.start = s.end = 0;
    this.preads++;
    let n: number;
    try {
      n = fs.readSync(this.fd, s.window, 0, count * BLOCK_SIZE, b * BLOCK_SIZE);
    } catch {
      return false;
    }
    // A file cut short since it was opened: what was read still serves, `b` itself must be there.
    if (n < BLOCK_SIZE) throw new InputError(`${this.path}: short read at block ${b}`);
    s.start = b;
    s.end = b + Math.floor(n / BLOCK_SIZE);
    s.last = b;
    s.run++;
    s.used = ++this.clock;
    return true;
  }

  /** Reads `count` consecutive blocks starting at `b` in one system call. */
  readRun(b: number, count: number, buf: Buffer = Buffer.allocUnsafe(count * BLOCK_SIZE)): Buffer {
    const len = count * BLOCK_SIZE;
    this.preads++;
    const n = fs.readSync(this.fd, buf, 0, len, b * BLOCK_SIZE);
    if (n !== len) throw new InputError(`${this.path}: short read at block ${b}`);
    return buf;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Writes whole blocks to an output file or device opened for writing (exclusively, if a device). */
export class BlockWriter {
  readonly path: string;
  readonly nrBlocks: number;
  private readonly fd: number;

  constructor(source: string | OpenedFile) {
    const file = typeof source === 'string' ? openFile(source, 'write') : source;
    this.path = file.path;
    this.fd = file.fd;
    this.nrBlocks = Math.floor(file.size / BLOCK_SIZE);
  }

  write(b: number, data: Buffer): void {
    if (b >= this.nrBlocks) {
      throw new InputError(`${this.path}: block ${blockNrText(b)} is beyond the end of the output (${this.nrBlocks} blocks)`);
    }
    fs.writeSync(this.fd, data, 0, data.length, b * BLOCK_SIZE);
  }

  /** Writes consecutive whole blocks from `b` on, one buffer each, in one system call. */
  writeBlocks(b: number, blocks: Buffer[]): void {
    if (b + blocks.length > this.nrBlocks) {
      throw new InputError(`${this.path}: block ${b + blocks.length - 1} is beyond the end of the output (${this.nrBlocks} blocks)`);
    }
    let done = 0;
    const total = blocks.length * BLOCK_SIZE;
    while (done < total) {
      const first = Math.floor(done / BLOCK_SIZE);
      const n = fs.writevSync(this.fd, done % BLOCK_SIZE === 0 ? blocks.slice(first) : [blocks[first].subarray(done % BLOCK_SIZE), ...blocks.slice(first + 1)], b * BLOCK_SIZE + done);
      done += n;
    }
  }

  /** Reads back block `b` (written earlier) into `buf`. */
  readInto(b: number, buf: Buffer): Buffer {
    const n = fs.readSync(this.fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE);
    if (n !== BLOCK_SIZE) throw new InputError(`${this.path}: short read at block ${b}`);
    return buf;
  }

  /** Makes the writes so far durable: fdatasync, which skips timestamps (a tenth of fsync's cost). */
  sync(): void {
    fs.fdatasyncSync(this.fd);
  }

  /**
   * Starts writing back the writes so far without waiting for them (a hint: nothing depends on
   * it), so that a later sync() has less left to wait for: fdatasync on libuv's thread pool,
   * through a descriptor of its own, so that a write error it meets is still reported to that
   * sync(), which also waits for the writeback begun here.
   */
  startSync(): void {
    let fd: number;
    try {
      fd = fs.openSync(`/proc/self/fd/${this.fd}`, fs.constants.O_RDONLY);
    } catch {
      return;
    }
    fs.fdatasync(fd, () => fs.close(fd, () => {}));
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
