// The one way every tool opens what it reads and writes, so each problem with a file reads the
// same in every tool: missing, a directory, unreadable, too small, XML given as metadata (or
// metadata given as XML), busy, or an output that is the input under another name.
import * as fs from 'node:fs';
import { BLOCK_SIZE, BlockReader, BlockWriter, InputError, OpenedFile, openFile, sysfsBlockDir } from './block-io.js';

/** The first block of a seekable file (fewer bytes if it is shorter); empty for a stream. */
function head(file: OpenedFile): Buffer {
  if (!file.seekable) return Buffer.alloc(0);
  const buf = Buffer.alloc(Math.min(file.size, BLOCK_SIZE));
  const n = fs.readSync(file.fd, buf, 0, buf.length, 0);
  return buf.subarray(0, n);
}

/**
 * thin_dump XML: text that starts with a tag of ours or a declaration. Binary metadata always has
 * zero bytes in its first block (the superblock's magic number is one u64 below 2^32), XML never.
 */
function looksLikeXml(bytes: Buffer): boolean {
  if (bytes.includes(0)) return false;
  const text = bytes.toString('latin1', 0, 64).replace(/^\xEF\xBB\xBF/, '').trimStart();
  return text.startsWith('<superblock') || text.startsWith('<?xml') || text.startsWith('<!DOCTYPE');
}

function closeOnError<T>(file: OpenedFile, use: () => T): T {
  try {
    return use();
  } catch (e) {
    fs.closeSync(file.fd);
    throw e;
  }
}

/** Opens binary metadata (a file or block device) to read, refusing what cannot be metadata. */
export function openMetadataInput(path: string): BlockReader {
  const file = openFile(path, 'read');
  return closeOnError(file, () => {
    if (looksLikeXml(head(file))) {
      throw new InputError(`${path}: this looks like XML, not binary metadata (thin_restore turns XML into metadata)`);
    }
    if (file.size < BLOCK_SIZE) {
      throw new InputError(
        `${path}: metadata device/file too small (${file.size} bytes, less than one ${BLOCK_SIZE}-byte block); is this binary metadata?`,
      );
    }
    return new BlockReader(file);
  });
}

/** Opens thin_dump XML to read: a file, or a pipe. The caller closes `fd`. */
export function openXmlInput(path: string): OpenedFile {
  const file = openFile(path, 'stream');
  return closeOnError(file, () => {
    if (file.seekable && file.size === 0) throw new InputError(`${path}: empty, not thin_dump XML`);
    // XML has no zero bytes; metadata and other binary files do in their first block.
    if (head(file).includes(0)) {
      throw new InputError(`${path}: this looks like binary metadata, not XML (thin_dump turns metadata into XML)`);
    }
    return file;
  });
}

/**
 * Opens the output of a restore or repair: an existing file, or a block device (exclusively, so
 * not a live pool's), whose size fixes the metadata's.
 */
export function openMetadataOutput(path: string): BlockWriter {
  if (!fs.existsSync(path)) {
    throw new InputError(`${path}: No such file or directory (the output must be a block device or an existing file large enough for the metadata)`);
  }
  return new BlockWriter(openFile(path, 'write'));
}

/** The file behind loop device `rdev`, if it is one. */
function loopBackingFile(rdev: bigint): string | undefined {
  try {
    const backing = fs.readFileSync(`${sysfsBlockDir(rdev)}/loop/backing_file`, 'utf8').trim();
    return backing.endsWith(' (deleted)') ? undefined : backing;
  } catch {
    return undefined;
  }
}

/**
 * Names of the storage behind `path`: its inode, or for a block device its device number and,
 * for a loop device, the storage behind that. Nothing for a path that does not exist yet.
 */
function storageKeys(path: string, depth = 0): string[] {
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(path, { bigint: true });
  } catch {
    return [];
  }
  if (!st.isBlockDevice()) return [`inode ${st.dev}:${st.ino}`];
  const keys = [`device ${st.rdev}`];
  const backing = depth < 8 ? loopBackingFile(st.rdev) : undefined;
  return backing === undefined ? keys : [...keys, ...storageKeys(backing, depth + 1)];
}

/**
 * Refuses, before anything is written, an output that is the input under another name: the same
 * path, a hard or symbolic link, the same device node, or a loop device and the file behind it.
 */
export function refuseOutputOverInput(input: string, output: string): void {
  const inputKeys = new Set(storageKeys(input));
  if (storageKeys(output).some((k) => inputKeys.has(k))) {
    throw new InputError(`${output}: this output is the input ${input}; nothing was written`);
  }
}
