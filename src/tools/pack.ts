// thin_metadata_pack / thin_metadata_unpack as library functions: metadata <-> the upstream 1.x
// pack format (formats/pack.ts). Packing reads the input in large runs and keeps one chunk in
// memory; unpacking writes each block where it belongs and leaves the rest zero.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { deflateSync, inflateSync } from 'node:zlib';
import { BLOCK_SIZE, InputError, openFile } from '../io/block-io.js';
import { openMetadataInput, refuseOutputOverInput } from '../io/open.js';
import {
  BLOCKS_PER_CHUNK, ByteWriter, PACK_HEADER_SIZE, PackDecoder, PackFormatError, decodeHeader, encodeHeader, packBlock, packable,
} from '../formats/pack.js';

export { PackFormatError };

/** Blocks read per system call while packing. */
const READ_RUN = 256;

export interface PackProgress {
  (done: number, total: number): void;
}

/** Checks an output path isn't the input and may be written. */
function checkOutput(input: string, output: string, force: boolean): void {
  refuseOutputOverInput(input, output);
  if (force || !fs.existsSync(output)) return;
  const st = fs.statSync(output);
  if (!st.isFile() && !st.isBlockDevice()) return;
  // As 1.x: metadata is only overwritten when the user says so.
  if (st.size >= BLOCK_SIZE && looksLikeMetadata(output)) {
    throw new InputError(`${output}: the output already holds metadata; use -f to overwrite it`);
  }
}

function looksLikeMetadata(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(BLOCK_SIZE);
    return fs.readSync(fd, buf, 0, BLOCK_SIZE, 0) === BLOCK_SIZE && packable(buf);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `output` under a temporary name and renames it into place once complete. */
function withTempFile(output: string, write: (fd: number) => void): void {
  const temp = path.join(path.dirname(path.resolve(output)), `.${path.basename(output)}.${process.pid}.tmp`);
  const fd = fs.openSync(temp, 'wx', 0o644);
  try {
    write(fd);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(temp, { force: true });
    throw e;
  }
  fs.renameSync(temp, output);
}

/** Packs the metadata at `input` into the file `output`; returns how many blocks it holds. */
export function packMetadata(input: string, output: string, opts: { force?: boolean; onProgress?: PackProgress } = {}): number {
  const io = openMetadataInput(input);
  try {
    checkOutput(input, output, !!opts.force);
    let packed = 0;
    withTempFile(output, (fd) => {
      fs.writeSync(fd, encodeHeader(io.nrBlocks));
      const chunk = new ByteWriter();
      let inChunk = 0;
      const flush = () => {
        const z = deflateSync(chunk.data);
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(z.length));
        fs.writeSync(fd, len);
        fs.writeSync(fd, z);
        chunk.reset();
        inChunk = 0;
      };
      const run = Buffer.allocUnsafe(READ_RUN * BLOCK_SIZE);
      for (let first = 0; first < io.nrBlocks; first += READ_RUN) {
        const n = Math.min(READ_RUN, io.nrBlocks - first);
        io.readRun(first, n, run);
        for (let i = 0; i < n; i++) {
          const block = run.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
          if (!packable(block)) continue;
          chunk.uint(first + i, 8);
          packBlock(chunk, block);
          packed++;
          if (++inChunk === BLOCKS_PER_CHUNK) flush();
        }
        opts.onProgress?.(first + n, io.nrBlocks);
      }
      if (inChunk > 0) flush();
    });
    return packed;
  } finally {
    io.close();
  }
}

/** Reads exactly `n` bytes at `pos`, or fewer at the end of the file. */
function readAt(fd: number, n: number, pos: number): Buffer {
  const buf = Buffer.allocUnsafe(n);
  let got = 0;
  while (got < n) {
    const r = fs.readSync(fd, buf, got, n - got, pos + got);
    if (r === 0) break;
    got += r;
  }
  return buf.subarray(0, got);
}

/**
 * Unpacks the pack `input` into `output` (a file, created or replaced, or a device at least as
 * large as the metadata); blocks the pack doesn't hold are zero. Returns how many it held.
 */
export function unpackMetadata(input: string, output: string, opts: { force?: boolean; onProgress?: PackProgress } = {}): number {
  const packFile = openFile(input, 'read');
  const inFd = packFile.fd;
  try {
    const inSize = packFile.size;
    const header = readAt(inFd, PACK_HEADER_SIZE, 0);
    let nrBlocks: number;
    try {
      const n = decodeHeader(header);
      if (n === 0n || n > BigInt(Number.MAX_SAFE_INTEGER) / BigInt(BLOCK_SIZE)) throw new PackFormatError(`bad block count ${n}`);
      nrBlocks = Number(n);
    } catch (e) {
      if (e instanceof PackFormatError) throw new PackFormatError(`${input}: ${e.message}`);
      throw e;
    }
    checkOutput(input, output, !!opts.force);
    const isDevice = fs.existsSync(output) && fs.statSync(output).isBlockDevice();
    let held = 0;
    const unpackInto = (fd: number, size: number) => {
      if (isDevice) {
        if (size < nrBlocks * BLOCK_SIZE) throw new InputError(`${output}: ${size} bytes, too small for ${nrBlocks} metadata blocks`);
      } else {
        fs.ftruncateSync(fd, nrBlocks * BLOCK_SIZE);
      }
      const written = new Uint8Array(Math.ceil(nrBlocks / 8));
      const block = Buffer.allocUnsafe(BLOCK_SIZE);
      for (let pos = PACK_HEADER_SIZE; pos < inSize; ) {
        const lenBuf = readAt(inFd, 8, pos);
        if (lenBuf.length < 8) throw new PackFormatError(`${input}: truncated at byte ${pos}`);
        const len = Number(lenBuf.readBigUInt64LE());
        // A damaged length can claim more than the file holds: refuse it before reading that much.
        if (len > inSize - pos - 8) throw new PackFormatError(`${input}: chunk at byte ${pos} is truncated (${len} bytes claimed)`);
        const z = readAt(inFd, len, pos + 8);
        let data: Buffer;
        try {
          data = inflateSync(z);
        } catch (e) {
          throw new PackFormatError(`${input}: chunk at byte ${pos} does not decompress: ${(e as Error).message}`);
        }
        const decoder = new PackDecoder(data);
        while (!decoder.done) {
          let b: bigint;
          try {
            b = decoder.next(block);
          } catch (e) {
            if (e instanceof PackFormatError) throw new PackFormatError(`${input}: chunk at byte ${pos}: ${e.message}`);
            throw e;
          }
          if (b >= BigInt(nrBlocks)) throw new PackFormatError(`${input}: block ${b} is beyond the ${nrBlocks} blocks the pack declares`);
          const n = Number(b);
          fs.writeSync(fd, block, 0, BLOCK_SIZE, n * BLOCK_SIZE);
          if (!(written[n >> 3] & (1 << (n & 7)))) held++;
          written[n >> 3] |= 1 << (n & 7);
        }
        pos += 8 + len;
        opts.onProgress?.(pos, inSize);
      }
      // A device keeps whatever it held before: zero what the pack doesn't hold.
      if (isDevice) {
        const zeros = Buffer.alloc(BLOCK_SIZE);
        for (let n = 0; n < nrBlocks; n++) {
          if (!(written[n >> 3] & (1 << (n & 7)))) fs.writeSync(fd, zeros, 0, BLOCK_SIZE, n * BLOCK_SIZE);
        }
      }
    };
    if (isDevice) {
      // Exclusively: never a live pool's metadata device.
      const device = openFile(output, 'write');
      try {
        unpackInto(device.fd, device.size);
        fs.fsyncSync(device.fd);
      } finally {
        fs.closeSync(device.fd);
      }
    } else {
      withTempFile(output, (fd) => unpackInto(fd, 0));
    }
    return held;
  } finally {
    fs.closeSync(inFd);
  }
}
