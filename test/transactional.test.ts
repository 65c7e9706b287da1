// The transactional layer's foundation: the block manager (bounded cache, validators that check
// blocks coming in and seal them going out) and the transaction manager (copy-on-write shadows,
// commits that write the superblock last). Blocks are checked with the read path's own checksum
// and integer code, so a wrong seal or offset would show.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE, BlockWriter } from '../src/io/block-io.js';
import { BlockManager, ForwardingStore, MetadataBlockError } from '../src/pdata/block-manager.js';
import { BITMAP_CSUM_XOR, blockChecksum } from '../src/pdata/checksum.js';
import { readU64 } from '../src/pdata/le.js';
import { NoSpaceError, TransactionManager, TransactionalSpaceMap } from '../src/pdata/transaction-manager.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('transactional-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const TEST_BLOCK = { name: 'test block', salt: BITMAP_CSUM_XOR };
const OTHER_BLOCK = { name: 'other block', salt: BITMAP_CSUM_XOR + 1 };

let seq = 0;
function device(blocks: number): string {
  const p = path.join(dir, `dev-${seq++}.bin`);
  fs.writeFileSync(p, '');
  fs.truncateSync(p, blocks * BLOCK_SIZE);
  return p;
}

function rawBlock(file: string, b: number): Buffer {
  return fs.readFileSync(file).subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE);
}

/** Records the order of writes and syncs reaching the device. */
class RecordingStore extends ForwardingStore {
  readonly log: string[] = [];
  write(b: number, data: Buffer): void {
    for (let i = 0; i < data.length / BLOCK_SIZE; i++) this.log.push(`write ${b + i}`);
    this.inner.write(b, data);
  }
  sync(): void {
    this.log.push('sync');
    this.inner.sync();
  }
}

describe('block manager', () => {
  it('seals each block it writes with its kind\'s checksum and its own block number', () => {
    const file = device(64);
    const bm = new BlockManager(new BlockWriter(file));
    for (let b = 1; b < 40; b++) {
      const blk = bm.zero(b, TEST_BLOCK);
      blk.data.fill(b, 16);
      bm.unlock(blk);
    }
    bm.flush();
    for (let b = 1; b < 40; b++) {
      const buf = rawBlock(file, b);
      expect(buf.readUInt32LE(0)).toBe(blockChecksum(buf, TEST_BLOCK.salt));
      expect(readU64(buf, 8)).toBe(b);
      expect(buf[100]).toBe(b);
    }
    // Untouched blocks stay untouched.
    expect(rawBlock(file, 50).equals(Buffer.alloc(BLOCK_SIZE))).toBe(true);
  });

  it('keeps no more than its cache in memory, writing changed blocks out as it drops them', () => {
    const file = device(3000);
    const bm = new BlockManager(new BlockWriter(file), { cacheBlocks: 64 });
    for (let b = 1; b < 3000; b++) {
      const blk = bm.zero(b, TEST_BLOCK);
      blk.data.writeUInt32LE(b * 7, 16);
      bm.unlock(blk);
      expect(bm.cachedBlocks).toBeLessThanOrEqual(64);
    }
    // Re-reading dropped blocks brings back what was written, validated.
    for (let b = 1; b < 3000; b += 97) {
      const blk = bm.read(b, TEST_BLOCK);
      expect(blk.data.readUInt32LE(16)).toBe(b * 7);
      bm.unlock(blk);
    }
    bm.flush();
    expect(rawBlock(file, 2999).readUInt32LE(16)).toBe(2999 * 7);
    expect(bm.cachedBlocks).toBeLessThanOrEqual(64);
  });

  it('refuses a damaged block, naming the file and block', () => {
    const file = device(16);
    const bm = new BlockManager(new BlockWriter(file));
    for (const b of [5, 6, 7]) bm.unlock(bm.zero(b, TEST_BLOCK));
    bm.flush();
    const all = fs.readFileSync(file);
    all[5 * BLOCK_SIZE + 300] ^= 1;
    all.copy(all, 7 * BLOCK_SIZE, 6 * BLOCK_SIZE, 7 * BLOCK_SIZE);
    fs.writeFileSync(file, all);
    const fresh = new BlockManager(new BlockWriter(file));
    expect(() => fresh.read(5, TEST_BLOCK)).toThrow(new MetadataBlockError(file, 5, 'bad checksum in test block'));
    expect(() => fresh.read(7, TEST_BLOCK)).toThrow(/metadata block 7: test block says it is block 6/);
    expect(() => fresh.read(6, OTHER_BLOCK)).toThrow(/metadata block 6: bad checksum in other block/);
    expect(() => fresh.read(16, TEST_BLOCK)).toThrow(/metadata block 16: beyond the end of the metadata device \(16 blocks\)/);
    expect(fresh.read(6, TEST_BLOCK).location).toBe(6);
  });
});

/** A space map of plain counts: a simple stand-in under the transaction manager. */
class CountingSpaceMap implements TransactionalSpaceMap {
  readonly counts = new Map<number, number>();
  next = 1;
  constructor(private readonly nrBlocks: number) {}
  newBlock(): number {
    while (this.next < this.nrBlocks && this.count(this.next) > 0) this.next++;
    if (this.next >= this.nrBlocks) throw new NoSpaceError('full');
    this.counts.set(this.next, 1);
    return this.next++;
  }
  inc(b: number): void {
    this.counts.set(b, this.count(b) + 1);
  }
  dec(b: number): void {
    this.counts.set(b, this.count(b) - 1);
  }
  count(b: number): number {
    return this.counts.get(b) ?? 0;
  }
  isShared(b: number): boolean {
    return this.count(b) > 1;
  }
  commit(): void {}
}

describe('transaction manager', () => {
  function setup() {
    const file = device(64);
    const store = new RecordingStore(new BlockWriter(file));
    const tm = new TransactionManager(new BlockManager(store));
    const sm = new CountingSpaceMap(64);
    tm.attach(sm);
    return { file, store, tm, sm };
  }

  it('shadows a committed block to a copy and leaves the original as it was', () => {
    const { file, tm, sm } = setup();
    const blk = tm.newBlock(TEST_BLOCK);
    blk.data.fill(0xab, 16);
    tm.unlock(blk);
    tm.preCommit();
    tm.commit(0, Buffer.alloc(BLOCK_SIZE), TEST_BLOCK);
    const orig = blk.location;
    const block = tm.shadow(orig, TEST_BLOCK);
    expect(tm.shadowedShared).toBe(false);
    expect(block.location).not.toBe(orig);
    expect(block.data[100]).toBe(0xab);
    block.data.fill(0xcd, 16);
    tm.unlock(block);
    // The copy may take over the original's buffer; the original still reads as committed.
    const original = tm.read(orig, TEST_BLOCK);
    expect(original.data[100]).toBe(0xab);
    tm.unlock(original);
    expect(sm.count(orig)).toBe(0);
    expect(sm.count(block.location)).toBe(1);
    tm.preCommit();
    expect(rawBlock(file, orig)[100]).toBe(0xab);
    expect(rawBlock(file, block.location)[100]).toBe(0xcd);
  });

  it('changes a block made in this transaction where it is, until the commit', () => {
    const { tm } = setup();
    const blk = tm.newBlock(TEST_BLOCK);
    // A block object is the block manager's again once unlocked: keep its number, not the object.
    const location = blk.location;
    tm.unlock(blk);
    const again = tm.shadow(location, TEST_BLOCK);
    expect(again.location).toBe(location);
    tm.unlock(again);
    tm.preCommit();
    tm.commit(0, Buffer.alloc(BLOCK_SIZE), TEST_BLOCK);
    const after = tm.shadow(location, TEST_BLOCK);
    expect(after.location).not.toBe(location);
    tm.unlock(after);
  });

  it('copies a shared block and says its children need one more reference', () => {
    const { tm, sm } = setup();
    const blk = tm.newBlock(TEST_BLOCK);
    tm.unlock(blk);
    tm.inc(blk.location);
    const block = tm.shadow(blk.location, TEST_BLOCK);
    expect(tm.shadowedShared).toBe(true);
    expect(block.location).not.toBe(blk.location);
    expect(sm.count(blk.location)).toBe(1);
    tm.unlock(block);
  });

  it('commits every changed block, synced, before the superblock', () => {
    const { store, tm } = setup();
    for (let i = 0; i < 5; i++) tm.unlock(tm.newBlock(TEST_BLOCK));
    tm.preCommit();
    tm.commit(0, Buffer.alloc(BLOCK_SIZE), TEST_BLOCK);
    const log = store.log;
    expect(log.slice(-3)).toEqual(['sync', 'write 0', 'sync']);
    expect(log.filter((l) => l.startsWith('write')).length).toBe(6);
    expect(log.indexOf('write 0')).toBe(log.length - 2);
  });
});
