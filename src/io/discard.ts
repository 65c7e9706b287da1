// Giving a data device's unused space back: a discard request (BLKDISCARD) on a block device,
// punched holes (fallocate) in a regular file. Node has neither call, so they go to libc through
// koffi (a prebuilt FFI in its npm package; see docs/decisions.md).
import * as fs from 'node:fs';
import koffi from 'koffi';
import { InputError, openFile } from './block-io.js';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
/** _IO(0x12, 119) */
const BLKDISCARD = 0x1277;

let libc: { fallocate: koffi.KoffiFunction; ioctl: koffi.KoffiFunction } | undefined;

function calls() {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
      ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)'),
    };
  }
  return libc;
}

/**
 * Punches a hole in the regular file open at `fd` (named `path` in errors): bytes [offset,
 * offset + length) read as zeroes from then on and take no space; the size stays. About a
 * microsecond a call, against milliseconds for a util-linux `fallocate` process.
 */
export function punchHole(fd: number, path: string, offset: number, length: number): void {
  if (calls().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) !== 0) {
    throw new InputError(`${path}: hole punching of bytes ${offset}-${offset + length - 1} failed (errno ${koffi.errno()})`);
  }
}

/** A data device or file opened to have ranges discarded. */
export class Discarder {
  readonly size: number;
  readonly isDevice: boolean;
  private readonly fd: number;

  constructor(readonly path: string) {
    // Exclusive on a device: an active pool holds its data device, and this open then fails.
    const file = openFile(path, 'write');
    this.fd = file.fd;
    this.size = file.size;
    this.isDevice = fs.fstatSync(file.fd).isBlockDevice();
  }

  /** Discards bytes [offset, offset + length). */
  discard(offset: number, length: number): void {
    if (!this.isDevice) {
      punchHole(this.fd, this.path, offset, length);
      return;
    }
    if (calls().ioctl(this.fd, BLKDISCARD, 'void *', discardRange(offset, length)) !== 0) {
      throw new InputError(`${this.path}: discard of bytes ${offset}-${offset + length - 1} failed (errno ${koffi.errno()})`);
    }
  }

  close(): void {
    if (!this.isDevice) fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }
}

/** BLKDISCARD's argument: {start, length} in bytes, two u64s. */
function discardRange(offset: number, length: number): Buffer {
  const range = Buffer.alloc(16);
  range.writeBigUInt64LE(BigInt(offset), 0);
  range.writeBigUInt64LE(BigInt(length), 8);
  return range;
}
