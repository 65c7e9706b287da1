// Buffered text output to a file descriptor: writers append small strings, and the text goes out
// in ~1 MiB writes, so a dump of millions of mappings costs a few hundred system calls.
import * as fs from 'node:fs';
import * as path from 'node:path';

const CHUNK_CHARS = 1 << 20;

/** Where formatted text goes. */
export interface TextSink {
  write(text: string): void;
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

/** Collects text into large chunks and writes them to `fd` with blocking writes. */
export class FdSink implements TextSink {
  private chunk = '';

  constructor(readonly fd: number) {}

  write(text: string): void {
    this.chunk += text;
    if (this.chunk.length >= CHUNK_CHARS) this.flush();
  }

  /** Writes out everything buffered so far (also what a failed dump printed before its error). */
  flush(): void {
    if (this.chunk.length === 0) return;
    // Output is ASCII, so latin1 is an exact, fast encoding.
    writeAll(this.fd, Buffer.from(this.chunk, 'latin1'));
    this.chunk = '';
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

function openOrExplain(file: string, flags: string, target = file): number {
  try {
    return fs.openSync(file, flags, 0o666);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`${target}: cannot write output: ${err.code ?? err.message}`);
  }
}
