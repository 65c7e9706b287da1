// thin_extract as a library function: one thin volume copied out of the pool's data device (or
// file) into a plain image, for recovering a volume from a pool that will not activate. The
// device's mappings are streamed from the metadata (live or the held snapshot); each run of
// consecutive blocks is copied in large reads and writes; unmapped ranges, and pages of mapped
// blocks that hold only zeroes, stay holes in the image.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, openFile } from '../io/block-io.js';
import { openMetadataInput, refuseOutputOverInput } from '../io/open.js';
import { U64 } from '../pdata/le.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../thin/events.js';
import { readMetadata } from '../thin/read-metadata.js';

export class ExtractError extends Error {}

export interface ExtractOptions {
  devId: number;
  /** `true`: the held metadata snapshot; a number: the snapshot expected at that block. */
  metadataSnap?: true | number;
  /** The image's size in bytes (the volume's size); default: up to its last mapped block. */
  size?: number;
  /** Bytes of the volume copied so far, of its mapped bytes. */
  onProgress?: (done: number, total: number) => void;
}

export interface ExtractResult {
  mappedBlocks: number;
  size: number;
}

/** Bytes copied per read and write. */
const COPY_BYTES = 4 << 20;

function readFully(fd: number, buf: Buffer, length: number, position: number, file: string): void {
  let got = 0;
  while (got < length) {
    const n = fs.readSync(fd, buf, got, length - got, position + got);
    if (n === 0) throw new InputError(`${file}: ends at byte ${position + got}, inside a mapped data block`);
    got += n;
  }
}

/** Zeroes are left as holes at this granularity (a file system block). */
const PAGE = 4096;
const ZERO_PAGE = Buffer.alloc(PAGE);

function zeroPage(buf: Buffer, at: number, end: number): boolean {
  const n = Math.min(PAGE, end - at);
  return ZERO_PAGE.compare(buf, at, at + n, 0, n) === 0;
}

/** Writes buf[0, n) at `position`, skipping its all-zero pages (they stay holes). */
function writeSparse(fd: number, buf: Buffer, n: number, position: number): void {
  for (let p = 0; p < n; ) {
    while (p < n && zeroPage(buf, p, n)) p += PAGE;
    const start = p;
    while (p < n && !zeroPage(buf, p, n)) p += PAGE;
    if (p > start) fs.writeSync(fd, buf, start, Math.min(p, n) - start, position + start);
  }
}

export function extractVolume(metadata: string, data: string, output: string, opts: ExtractOptions): ExtractResult {
  for (const input of [metadata, data]) refuseOutputOverInput(input, output);
  if (fs.existsSync(output) && !fs.statSync(output).isFile()) throw new InputError(`${output}: not a regular file (the image is a file)`);
  const io = openMetadataInput(metadata);
  let dataFile;
  try {
    dataFile = openFile(data, 'read');
  } catch (e) {
    io.close();
    throw e;
  }
  const dataFd = dataFile.fd;
  const temp = path.join(path.dirname(path.resolve(output)), `.${path.basename(output)}.${process.pid}.tmp`);
  let outFd = -1;
  try {
    const dataBytes = dataFile.size;
    outFd = fs.openSync(temp, 'wx', 0o644);
    const buf = Buffer.allocUnsafe(COPY_BYTES);
    let blockBytes = 0;
    let found: DeviceInfo | undefined;
    let end = 0;
    let done = 0;
    let total = 0;
    const copy = (thinBegin: U64, dataBegin: number, length: number) => {
      const from = dataBegin * blockBytes;
      const to = Number(thinBegin) * blockBytes;
      const bytes = length * blockBytes;
      if (!Number.isSafeInteger(to + bytes)) throw new ExtractError(`thin block ${thinBegin} is beyond the size of any image`);
      if (from + bytes > dataBytes) {
        throw new ExtractError(`${data}: data block ${dataBegin + Math.floor((dataBytes - from) / blockBytes)} is past its end (${dataBytes} bytes)`);
      }
      for (let off = 0; off < bytes; off += COPY_BYTES) {
        const n = Math.min(COPY_BYTES, bytes - off);
        readFully(dataFd, buf, n, from + off, data);
        writeSparse(outFd, buf, n, to + off);
        done += n;
        opts.onProgress?.(done, total);
      }
      end = to + bytes;
    };
    const visitor: MetadataVisitor = {
      superblockBegin: (p: PoolInfo) => {
        blockBytes = p.dataBlockSize * 512;
      },
      superblockEnd: () => {},
      deviceBegin: (d) => {
        found = d;
        total = Number(d.mappedBlocks) * blockBytes;
      },
      deviceEnd: () => {},
      mapRun: copy,
    };
    readMetadata(io, visitor, { metadataSnap: opts.metadataSnap, devIds: new Set([opts.devId]) });
    if (!found) throw new ExtractError(`device ${opts.devId} is not in the pool${opts.metadataSnap ? "'s metadata snapshot" : ''}`);
    if (opts.size !== undefined && opts.size < end) {
      throw new ExtractError(`--size ${opts.size} is below the volume's last mapped byte (${end})`);
    }
    const size = opts.size ?? end;
    fs.ftruncateSync(outFd, size);
    fs.fsyncSync(outFd);
    fs.closeSync(outFd);
    outFd = -1;
    fs.renameSync(temp, output);
    return { mappedBlocks: Number(found.mappedBlocks), size };
  } finally {
    if (outFd >= 0) {
      fs.closeSync(outFd);
      fs.rmSync(temp, { force: true });
    }
    fs.closeSync(dataFd);
    io.close();
  }
}
