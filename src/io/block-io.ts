// Block IO over a metadata file or block device: 4 KiB blocks addressed by number.
import * as fs from 'node:fs';

export const BLOCK_SIZE = 4096;

/** Whether two paths name the same file or block device, so an output never overwrites its input. */
export function sameFile(a: string, b: string): boolean {
  const identity = (p: string): string | null => {
    try {
      const st = fs.statSync(p);
      return st.isBlockDevice() ? `dev:${st.rdev}` : `file:${st.dev}:${st.ino}`;
    } catch {
      return null;
    }
  };
  const ia = identity(a);
  return ia !== null && ia === identity(b);
}

/** An IO problem the user can act on (missing file, truncated device, ...). */
export class InputError extends Error {}

/** Size in bytes of a regular file or a block device (via sysfs, as Node has no BLKGETSIZE64). */
export function deviceSize(path: string, fd: number): number {
  const st = fs.fstatSync(fd);
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    const sectors = fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
    return Number(sectors.trim()) * 512;
  }
  throw new InputError(`${path}: not a regular file or block device`);
}

function openOrExplain(path: string, flags: string): number {
  try {
    return fs.openSync(path, flags);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why =
      err.code === 'ENOENT' ? 'No such file or directory'
      : err.code === 'EACCES' || err.code === 'EPERM' ? 'Permission denied'
      : err.code === 'EISDIR' ? 'Is a directory'
      : err.code === 'EBUSY' ? 'Device or resource busy'
      : err.message;
    throw new InputError(`${path}: ${why}`);
  }
}

/** Reads whole blocks; opened read-only so check/dump can never change their input. */
export class BlockReader {
  readonly nrBlocks: number;
  private readonly fd: number;

  constructor(readonly path: string) {
    this.fd = openOrExplain(path, 'r');
    try {
      const st = fs.fstatSync(this.fd);
      if (st.isDirectory()) throw new InputError(`${path}: Is a directory`);
      this.nrBlocks = Math.floor(deviceSize(path, this.fd) / BLOCK_SIZE);
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
  }

  /** Reads block `b` into a fresh buffer. */
  read(b: number): Buffer {
    return this.readInto(b, Buffer.allocUnsafe(BLOCK_SIZE));
  }

  /** Reads block `b` into `buf` (at least BLOCK_SIZE bytes) and returns it. */
  readInto(b: number, buf: Buffer): Buffer {
    if (b >= this.nrBlocks || b < 0) {
      throw new InputError(`${this.path}: block ${b} is beyond the end of the metadata (${this.nrBlocks} blocks)`);
    }
    const n = fs.readSync(this.fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE);
    if (n !== BLOCK_SIZE) throw new InputError(`${this.path}: short read at block ${b}`);
    return buf;
  }

  /** Reads `count` consecutive blocks starting at `b` in one system call. */
  readRun(b: number, count: number, buf: Buffer = Buffer.allocUnsafe(count * BLOCK_SIZE)): Buffer {
    const len = count * BLOCK_SIZE;
    const n = fs.readSync(this.fd, buf, 0, len, b * BLOCK_SIZE);
    if (n !== len) throw new InputError(`${this.path}: short read at block ${b}`);
    return buf;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/** Writes whole blocks to an output file or device opened for writing. */
export class BlockWriter {
  readonly nrBlocks: number;
  private readonly fd: number;

  constructor(readonly path: string, flags = 'r+') {
    this.fd = openOrExplain(path, flags);
    this.nrBlocks = Math.floor(deviceSize(path, this.fd) / BLOCK_SIZE);
  }

  write(b: number, data: Buffer): void {
    if (b >= this.nrBlocks) {
      throw new InputError(`${this.path}: block ${b} is beyond the end of the output (${this.nrBlocks} blocks)`);
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

  close(): void {
    fs.closeSync(this.fd);
  }
}
