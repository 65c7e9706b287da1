// BlockReader's read-ahead: whatever the order of the reads, each block read is the file's bytes at
// that block (read here with plain fs calls, block by block), runs of consecutive blocks take far
// fewer system calls, scattered reads take no more, and the device's end, a file cut short while
// open and an unreadable block ahead of a run read as they did before read-ahead.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { BLOCK_SIZE, BlockReader, BlockWriter } from '../src/io/block-io.js';
import { rng } from './support/generate.js';
import { tempDir } from './support/reference.js';

// A device with an unreadable block: reads that cover bytes [from, to) of file `path` fail with EIO.
const unreadable = vi.hoisted(() => ({ path: '', fd: -1, from: 0, to: 0 }));
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const readSync = (fd: number, buf: NodeJS.ArrayBufferView, offset: number, length: number, position: number): number => {
    if (fd === unreadable.fd && position < unreadable.to && position + length > unreadable.from) {
      throw Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' });
    }
    return real.readSync(fd, buf, offset, length, position);
  };
  const openSync = (path: string, flags: number): number => {
    const fd = real.openSync(path, flags);
    if (path === unreadable.path) unreadable.fd = fd;
    return fd;
  };
  return { ...real, readSync, openSync, default: { ...real, readSync, openSync } };
});

const dir = tempDir('thin-block-io-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A file of `nrBlocks` blocks of random bytes (and `tail` bytes of a partial block after them). */
function randomFile(name: string, nrBlocks: number, tail = 0): string {
  const file = path.join(dir, name);
  const rand = rng(nrBlocks * 31 + tail);
  const bytes = Buffer.alloc(nrBlocks * BLOCK_SIZE + tail);
  for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32LE(Math.floor(rand() * 0x100000000), i);
  fs.writeFileSync(file, bytes);
  return file;
}

/** Block `b` of `file` read on its own. */
function blockOf(file: string, b: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(BLOCK_SIZE);
    expect(fs.readSync(fd, buf, 0, BLOCK_SIZE, b * BLOCK_SIZE)).toBe(BLOCK_SIZE);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads `order` through one reader, checking every block; returns the reader's system calls. */
function readAll(file: string, order: number[]): number {
  const io = new BlockReader(file);
  try {
    const buf = Buffer.alloc(BLOCK_SIZE);
    order.forEach((b, i) => {
      // Into a buffer of the caller's, or a fresh one: the window's bytes are copied out, never shared.
      const got = i % 2 === 0 ? io.readInto(b, buf) : io.read(b);
      expect(got.equals(blockOf(file, b)), `block ${b}`).toBe(true);
    });
    return io.preads;
  } finally {
    io.close();
  }
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

describe('BlockReader read-ahead', () => {
  const N = 300;
  const file = randomFile('blocks', N);

  it('reads a run of consecutive blocks in few system calls, each block right', () => {
    const preads = readAll(file, range(0, N));
    expect(preads).toBeLessThan(N / 8);
  });

  it('follows a run that skips a block now and then', () => {
    const order = range(0, N).filter((b) => b % 5 !== 2);
    expect(readAll(file, order)).toBeLessThan(order.length / 6);
  });

  it('follows several runs read in turn (two trees side by side, each with its internal nodes)', () => {
    const order: number[] = [];
    for (let i = 0; i < 60; i++) {
      order.push(10 + i, 150 + i);
      if (i % 20 === 0) order.push(290 - i / 20, 5 + i / 20);
    }
    expect(readAll(file, order)).toBeLessThan(order.length / 4);
  });

  it('stays right with more runs in turn than it follows, runs that skip blocks, backwards and on repeated blocks', () => {
    const order: number[] = [];
    for (let i = 0; i < 40; i++) for (const start of [0, 50, 100, 150, 200, 250]) order.push(start + i);
    for (let b = 3; b < N; b += 1 + (b % 3 === 0 ? 1 : 0)) order.push(b);
    for (let b = N - 1; b >= 0; b -= 3) order.push(b, b);
    readAll(file, order);
  });

  it('reads scattered blocks and pairs one block per system call, none ahead', () => {
    // Starts 4k in random order: no read lands 1 or 2 blocks past another but within a pair.
    const rand = rng(7);
    const starts = range(0, N / 4).map((k) => 4 * k);
    for (let i = starts.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [starts[i], starts[j]] = [starts[j], starts[i]];
    }
    expect(readAll(file, starts)).toBe(starts.length);
    const pairs = starts.flatMap((b) => [b, b + 1]);
    expect(readAll(file, pairs)).toBe(pairs.length);
  });

  it('reads ahead no further than the device end, which stays an error', () => {
    const small = randomFile('small', 10, 100);
    const io = new BlockReader(small);
    try {
      expect(io.nrBlocks).toBe(10);
      const buf = Buffer.alloc(BLOCK_SIZE);
      for (const b of range(5, 10)) expect(io.readInto(b, buf).equals(blockOf(small, b)), `block ${b}`).toBe(true);
      expect(() => io.readInto(10, buf)).toThrow(`${small}: block 10 is beyond the end of the metadata (10 blocks)`);
    } finally {
      io.close();
    }
  });

  it('serves what a file cut short while open still has, and reports the block past it as a short read', () => {
    const cut = randomFile('cut', 12);
    const kept = range(0, 4).map((b) => blockOf(cut, b));
    const io = new BlockReader(cut);
    try {
      const buf = Buffer.alloc(BLOCK_SIZE);
      io.readInto(0, buf);
      io.readInto(1, buf);
      fs.truncateSync(cut, 4 * BLOCK_SIZE);
      // Block 2 starts a window of blocks 2-5, of which only 2 and 3 are left.
      expect(io.readInto(2, buf).equals(kept[2])).toBe(true);
      expect(io.readInto(3, buf).equals(kept[3])).toBe(true);
      expect(() => io.readInto(4, buf)).toThrow(`${cut}: short read at block 4`);
    } finally {
      io.close();
    }
    const partial = randomFile('partial', 12);
    const io2 = new BlockReader(partial);
    try {
      const buf = Buffer.alloc(BLOCK_SIZE);
      io2.readInto(0, buf);
      io2.readInto(1, buf);
      fs.truncateSync(partial, 2 * BLOCK_SIZE + 100);
      expect(() => io2.readInto(2, buf)).toThrow(`${partial}: short read at block 2`);
    } finally {
      io2.close();
    }
  });

  it('a window over an unreadable block fails only the read of that block', () => {
    const bad = randomFile('bad', 40);
    const good = range(0, 40).map((b) => blockOf(bad, b));
    Object.assign(unreadable, { path: bad, from: 12 * BLOCK_SIZE, to: 13 * BLOCK_SIZE });
    const io = new BlockReader(bad);
    try {
      const buf = Buffer.alloc(BLOCK_SIZE);
      // Block 10 would read a window of 10-13, over the bad block.
      for (const b of range(8, 12)) expect(io.readInto(b, buf).equals(good[b]), `block ${b}`).toBe(true);
      expect(() => io.readInto(12, buf)).toThrow('EIO');
      for (const b of range(13, 40)) expect(io.readInto(b, buf).equals(good[b]), `block ${b}`).toBe(true);
    } finally {
      io.close();
      Object.assign(unreadable, { path: '', fd: -1 });
    }
  });

  it('a writer reads back what it wrote, and a new reader sees it; a reader holds its window as read', () => {
    const rw = randomFile('rw', 40);
    const before = blockOf(rw, 12);
    const reader = new BlockReader(rw);
    const writer = new BlockWriter(rw);
    try {
      const buf = Buffer.alloc(BLOCK_SIZE);
      for (const b of range(8, 12)) reader.readInto(b, buf); // the window now holds block 12
      for (const b of range(8, 12)) writer.readInto(b, buf);
      const changed = Buffer.alloc(BLOCK_SIZE, 0xa5);
      writer.write(12, changed);
      expect(writer.readInto(12, buf).equals(changed)).toBe(true);
      // The documented contract: a reader open across a write keeps the window it read.
      expect(reader.readInto(12, buf).equals(before)).toBe(true);
      const fresh = new BlockReader(rw);
      try {
        for (const b of range(8, 13)) fresh.readInto(b, buf);
        expect(buf.equals(changed)).toBe(true);
      } finally {
        fresh.close();
      }
    } finally {
      reader.close();
      writer.close();
    }
  });
});
