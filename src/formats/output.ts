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
 * An output file written under a temporary name in the same directory and renamed into place
 * on commit, so a crash or an error never leaves a half-written file under the real name.
 */
export class AtomicFileSink extends FdSink {
  private readonly tempPath: string;
  private done = false;

  static open(target: string): AtomicFileSink {
    const dir = path.dirname(path.resolve(target));
    const tempPath = path.join(dir, `.${path.basename(target)}.${process.pid}.tmp`);
    let fd: number;
    try {
      fd = fs.openSync(tempPath, 'wx', 0o644);
    } catch (e) {
      throw new Error(`${target}: cannot create output file: ${(e as Error).message}`);
    }
    return new AtomicFileSink(fd, tempPath, target);
  }

  private constructor(fd: number, tempPath: string, readonly target: string) {
    super(fd);
    this.tempPath = tempPath;
  }

  /** Flushes, syncs and renames the file into place. */
  commit(): void {
    this.flush();
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    this.done = true;
    fs.renameSync(this.tempPath, this.target);
  }

  /** Drops the partial output. */
  abort(): void {
    if (this.done) return;
    this.done = true;
    try {
      fs.closeSync(this.fd);
    } finally {
      fs.rmSync(this.tempPath, { force: true });
    }
  }
}
