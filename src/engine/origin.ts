// External origins: a thin device's read-only origin outside the pool (the thin target's
// `<external origin dev>`), whose content its unmapped blocks read as. An origin the trace makes
// holds content unique to (its trace line, block, sector), like a write; `--external-origin
// D=FILE` makes a real file the origin instead, its size the origin's size.
import * as fs from 'node:fs';
import { InputError } from '../io/block-io.js';
import { SECTOR_BYTES, fillContent } from './content.js';
import { OriginRef } from './model.js';

export class ExternalOrigin implements OriginRef {
  private readonly fd: number | undefined;

  /**
   * `line`: the trace line that attached it (which names its content); `sectors`: its size (the
   * kernel's origin_size); `file`: a file holding its content (else generated).
   */
  private constructor(readonly dev: number, readonly line: number, readonly sectors: number, readonly file?: string) {
    if (file !== undefined) this.fd = fs.openSync(file, 'r');
  }

  /** An origin of `blocks` data blocks whose content is generated from its trace line. */
  static generated(dev: number, line: number, blocks: number, sectorsPerBlock: number): ExternalOrigin {
    return new ExternalOrigin(dev, line, blocks * sectorsPerBlock);
  }

  /** The file `path` as an origin: its size in whole sectors is the origin's. */
  static file(dev: number, line: number, path: string): ExternalOrigin {
    let st: fs.Stats;
    try {
      st = fs.statSync(path);
    } catch (e) {
      throw new InputError(`${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (e as Error).message}`);
    }
    if (st.isDirectory()) throw new InputError(`${path}: is a directory, not an external origin`);
    return new ExternalOrigin(dev, line, Math.floor(st.size / SECTOR_BYTES), path);
  }

  /**
   * Fills `count` sectors of `buf` from byte `at` with what the origin holds at virtual block
   * `block`, sectors `sector`.. of that block (`sectorsPerBlock` to a block); zeroes past its end.
   */
  read(block: number, sector: number, count: number, sectorsPerBlock: number, buf: Buffer, at: number): void {
    const first = block * sectorsPerBlock + sector;
    const inside = Math.max(0, Math.min(count, this.sectors - first));
    if (inside > 0) {
      if (this.fd === undefined) fillContent(buf, at, this.line, block, sector, inside);
      else {
        const n = fs.readSync(this.fd, buf, at, inside * SECTOR_BYTES, first * SECTOR_BYTES);
        if (n < inside * SECTOR_BYTES) buf.fill(0, at + n, at + inside * SECTOR_BYTES);
      }
    }
    buf.fill(0, at + inside * SECTOR_BYTES, at + count * SECTOR_BYTES);
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
  }
}
