// Buffered text output to a file descriptor: writers append small pieces straight into a 1 MiB
// buffer (numbers as digits, no intermediate strings), and it goes out in large writes, so a dump
// of millions of mappings costs a few hundred system calls and next to no garbage.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { explainIoError } from '../io/block-io.js';
import { U64 } from '../pdata/le.js';
import { Ascii, putAscii } from './ascii.js';

const CHUNK_BYTES = 1 << 20;
/** Pieces shorter than this are copied char by char; that beats a native call for each. */
const SHORT_TEXT = 64;
/** Room for the longest number: 2^64 has 20 digits. */
export const NUMBER_ROOM = 24;

/** Where formatted text goes. The text is ASCII. */
export interface TextSink {
  write(text: string): void;
  /** Writes a non-negative integer (a U64) in decimal; sinks without it get `write(String(n))`. */
  number?(n: U64): void;
  /** Writes text encoded once (`ascii`), for the pieces a writer repeats on every line. */
  bytes?(a: Ascii): void;
}

/** A sink with `number` and `bytes`, adapting one that lacks them. */
export function withNumbers(sink: TextSink): Required<TextSink> {
  if (sink.number && sink.bytes) return sink as Required<TextSink>;
  return {
    write: (t) => sink.write(t),
    number: (n) => sink.write(String(n)),
    bytes: (a) => sink.write(a.text),
  };
}

/** "00" .. "99" as little-endian u16s: numbers are written two digits at a store. */
const DIGIT_PAIRS = Uint16Array.from({ length: 100 }, (_, i) => (0x30 + ((i / 10) | 0)) | ((0x30 + (i % 10)) << 8));

/** 10^i, for digitCount. */
const POWERS_OF_TEN = Int32Array.from({ length: 10 }, (_, i) => 10 ** i);

/**
 * Decimal digits of a non-negative int32. The same steps for every value, no branch per range:
 * output numbers grow as it goes, and a branch first taken when they pass a power of ten (late)
 * would throw away the optimised code of every writer it is inlined into.
 */
function digitCount(v: number): number {
  // floor(log10(2) x bit length) is the digit count or one short of it (v | 1: 0 has a digit; an
  // even v and v + 1 lie on one side of every power of ten from 10 on).
  const u = v | 1;
  const t = ((32 - Math.clz32(u)) * 1233) >>> 12;
  return t + (((u - POWERS_OF_TEN[t]) >>> 31) ^ 1);
}

/** Writes the digits of `v` (a non-negative int32) so that they end just before `end`. */
function putDigits(view: DataView, buf: Uint8Array, v: number, end: number): void {
  let p = end;
  while (v >= 100) {
    const q = (v / 100) | 0;
    p -= 2;
    view.setUint16(p, DIGIT_PAIRS[v - q * 100], true);
    v = q;
  }
  if (v >= 10) view.setUint16(p - 2, DIGIT_PAIRS[v], true);
  else buf[p - 1] = 0x30 + v;
}

/**
 * Writes the digits of `n` (a non-negative integer below 2^53) at `pos` of `buf` (`view` over the
 * same bytes; the caller makes NUMBER_ROOM of room) and returns the end.
 */
export function putNumber(view: DataView, buf: Uint8Array, pos: number, n: number): number {
  if (n <= 0x7fffffff) {
    const end = pos + digitCount(n);
    putDigits(view, buf, n, end);
    return end;
  }
  // Up to 7 digits above the last 9.
  const high = Math.floor(n / 1e9);
  let low = n - high * 1e9;
  let p = pos + digitCount(high);
  putDigits(view, buf, high, p);
  p += 9;
  const end = p;
  for (let i = 0; i < 9; i++) {
    const q = (low / 10) | 0;
    buf[--p] = 48 + low - q * 10;
    low = q;
  }
  return end;
}

/** The reader went away (a closed pipe, as in `thin_dump meta | head`). */
export class OutputClosedError extends Error {}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Writes all of `buf`, waiting out EAGAIN (stdout can be a non-blocking pipe). */
function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(sleeper, 0, 0, 1);
        continue;
      }
      if (code === 'EPIPE') throw new OutputClosedError('output closed');
      throw e;
    }
  }
}

/** Collects text into a large buffer and writes it to `fd` with blocking writes. */
export class FdSink implements Required<TextSink> {
  /** The buffer and a view of it, for writers that format a line in place (`reserve`, `advance`). */
  readonly buf = Buffer.allocUnsafe(CHUNK_BYTES);
  readonly view = new DataView(this.buf.buffer, this.buf.byteOffset, CHUNK_BYTES);
  private pos = 0;

  constructor(readonly fd: number) {
    // reserve's flush is first needed after a megabyte, late in a run: taken here with nothing to
    // write, so code inlining reserve never meets it untried and is not thrown away for it. A
    // hundred times: V8 gives a function its feedback vector only after some calls.
    for (let i = 0; i < 100; i++) this.reserve(CHUNK_BYTES + 1);
  }

  /** Where the next `n` bytes (at most the buffer's size) go in `buf`: write them, then `advance`. */
  reserve(n: number): number {
    if (this.pos + n > CHUNK_BYTES) this.flush();
    return this.pos;
  }

  /** Takes the bytes written in place up to `end`. */
  advance(end: number): void {
    this.pos = end;
  }

  write(text: string): void {
    const n = text.length;
    if (this.pos + n > CHUNK_BYTES) {
      this.flush();
      if (n > CHUNK_BYTES) {
        writeAll(this.fd, Buffer.from(text, 'latin1'));
        return;
      }
    }
    if (n < SHORT_TEXT) {
      const buf = this.buf;
      let p = this.pos;
      for (let i = 0; i < n; i++) buf[p++] = text.charCodeAt(i);
      this.pos = p;
    } else {
      this.pos += this.buf.write(text, this.pos, 'latin1');
    }
  }

  number(n: U64): void {
    // A bigint is past 2^53: rare enough for a string.
    if (typeof n !== 'number') return this.write(String(n));
    this.pos = putNumber(this.view, this.buf, this.reserve(NUMBER_ROOM), n);
  }

  bytes(a: Ascii): void {
    if (a.length > CHUNK_BYTES) return this.write(a.text);
    const pos = this.reserve(a.length);
    putAscii(this.view, this.buf, pos, a);
    this.pos = pos + a.length;
  }

  /** Writes out everything buffered so far (also what a failed dump printed before its error). */
  flush(): void {
    if (this.pos === 0) return;
    const pos = this.pos;
    this.pos = 0;
    writeAll(this.fd, this.buf.subarray(0, pos));
  }
}

/**
 * An output file. A regular file is written under a temporary name in the same directory and
 * renamed into place on commit, so a crash or an error never leaves a half-written file under the
 * real name. Anything else (/dev/null, a pipe, a terminal) is written in place: renaming over it
 * would replace the device node.
 */
export class AtomicFileSink extends FdSink {
  private done = false;

  static open(target: string): AtomicFileSink {
    let existing: fs.Stats | undefined;
    try {
      existing = fs.statSync(target);
    } catch {
      // Doesn't exist yet: created below.
    }
    if (existing && !existing.isFile()) return new AtomicFileSink(openOrExplain(target, 'w'), target, null);
    const tempPath = path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.${process.pid}.tmp`);
    return new AtomicFileSink(openOrExplain(tempPath, 'wx', target), target, tempPath);
  }

  private constructor(fd: number, readonly target: string, private readonly tempPath: string | null) {
    super(fd);
  }

  /** Flushes and closes; a regular file is synced and renamed into place. */
  commit(): void {
    this.flush();
    if (this.tempPath !== null) fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.done = true;
    if (this.tempPath !== null) fs.renameSync(this.tempPath, this.target);
  }

  /** Drops the partial output (a regular file never appears under its real name). */
  abort(): void {
    if (this.done) return;
    this.done = true;
    try {
      fs.closeSync(this.fd);
    } finally {
      if (this.tempPath !== null) fs.rmSync(this.tempPath, { force: true });
    }
  }
}

/** Opens `file` (the target or its temporary), a failure told as every tool tells it, by the target's name. */
function openOrExplain(file: string, flags: string, target = file): number {
  try {
    return fs.openSync(file, flags, 0o666);
  } catch (e) {
    throw explainIoError(target, e);
  }
}
