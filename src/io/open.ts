// How every tool opens the metadata it reads and writes, on top of openFile (block-io.ts), so each
// problem reads the same in every tool: XML or anything under one block given as metadata, an
// output that is missing or busy, or an output that is the input under another name. (XML inputs
// are openFile(path, 'stream'); the XML reader refuses empty and binary input.)
import * as fs from 'node:fs';
import { BLOCK_SIZE, BlockReader, BlockWriter, InputError, openFile, sysfsBlockDir } from './block-io.js';

/**
 * thin_dump XML: text that starts with a tag of ours or a declaration. Binary metadata always has
 * zero bytes in its first block (the superblock's blocknr and magic are u64s below 2^32), XML never.
 */
function looksLikeXml(head: Buffer): boolean {
  if (head.includes(0)) return false;
  const text = head.toString('latin1', 0, 64).replace(/^\xEF\xBB\xBF/, '').trimStart();
  return text.startsWith('<superblock') || text.startsWith('<?xml') || text.startsWith('<!DOCTYPE');
}

/** Opens binary metadata (a file or block device) to read, refusing what cannot be metadata. */
export function openMetadataInput(path: string): BlockReader {
  const file = openFile(path, 'read');
  try {
    const head = Buffer.alloc(Math.min(file.size, BLOCK_SIZE));
    const n = fs.readSync(file.fd, head, 0, head.length, 0);
    if (looksLikeXml(head.subarray(0, n))) {
      throw new InputError(`${path}: this looks like XML, not binary metadata (thin_restore turns XML into metadata)`);
    }
    if (file.size < BLOCK_SIZE) {
      throw new InputError(
        `${path}: metadata device/file too small (${file.size} bytes, less than one ${BLOCK_SIZE}-byte block); is this binary metadata?`,
      );
    }
    return new BlockReader(file);
  } catch (e) {
    fs.closeSync(file.fd);
    throw e;
  }
}

/**
 * Opens the output of a restore or repair: an existing file, or a block device (exclusively, so
 * not a live pool's), whose size fixes the metadata's.
 */
export function openMetadataOutput(path: string): BlockWriter {
  if (!fs.existsSync(path)) {
    throw new InputError(`${path}: No such file or directory (the output must be a block device or an existing file large enough for the metadata)`);
  }
  return new BlockWriter(path);
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
