// The pool on the transactional library: every commit must be accepted by both reference
// checkers (0.9.0 and 1.x) and by ours, and the reference thin_dump must print exactly what a
// plain model of the pool holds: devices, times, transaction ids, mapped_blocks and every mapping.
// Kernel-written pools are opened and written to the same way, their model read from the
// reference's own dump of them.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BLOCK_SIZE, BlockReader, BlockWriter } from '../src/io/block-io.js';
import { XmlWriter } from '../src/formats/xml-writer.js';
import { readMetadataXml } from '../src/formats/xml-reader.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../src/thin/events.js';
import { Pool, PoolError } from '../src/thin/pool.js';
import { NEEDS_CHECK_FLAG, readSuperblock } from '../src/thin/superblock.js';
import { checkMetadata } from '../src/tools/check.js';
import { rng } from './support/generate.js';
import { runOurs, runReference, tempDir, upstreamTool, unpackKernelImage } from './support/reference.js';
import { spawnSync } from 'node:child_process';
import { gunzipSync } from 'node:zlib';

const dir = tempDir('pool-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const ROOT = path.resolve(__dirname, '..');

let seq = 0;
function metadataFile(blocks: number): string {
  const p = path.join(dir, `meta-${seq++}.bin`);
  fs.writeFileSync(p, '');
  fs.truncateSync(p, blocks * BLOCK_SIZE);
  return p;
}

interface ModelMapping {
  data: number;
  time: number;
}
interface ModelDevice {
  mappings: Map<number, ModelMapping>;
  transaction: number;
  creation: number;
  snap: number;
}

/** What the pool must hold, kept as plainly as possible: the kernel's rules on a Map per device. */
class Model {
  time = 0;
  transaction = 0;
  readonly devices = new Map<number, ModelDevice>();
  constructor(public dataBlockSize: number, public nrDataBlocks: number) {}

  /** How many mappings hold each data block. */
  readonly users = new Map<number, number>();
  hold(data: number, n = 1): void {
    const c = (this.users.get(data) ?? 0) + n;
    if (c === 0) this.users.delete(data);
    else this.users.set(data, c);
  }
  setMapping(dev: ModelDevice, block: number, m: ModelMapping): void {
    const old = dev.mappings.get(block);
    if (old) this.hold(old.data, -1);
    dev.mappings.set(block, m);
    this.hold(m.data);
  }
  deleteMapping(dev: ModelDevice, block: number): void {
    this.hold(dev.mappings.get(block)!.data, -1);
    dev.mappings.delete(block);
  }
  deleteDevice(id: number): void {
    for (const m of this.devices.get(id)!.mappings.values()) this.hold(m.data, -1);
    this.devices.delete(id);
  }

  clone(): Model {
    const m = new Model(this.dataBlockSize, this.nrDataBlocks);
    m.time = this.time;
    m.transaction = this.transaction;
    for (const [id, d] of this.devices) m.devices.set(id, { ...d, mappings: new Map(d.mappings) });
    for (const [b, n] of this.users) m.users.set(b, n);
    return m;
  }

  /** The thin_dump XML this pool must produce, runs merged as the reference merges them. */
  xml(): string {
    let out = '';
    const w = new XmlWriter({ write: (t) => { out += t; } });
    w.superblockBegin({ uuid: '', time: this.time, transaction: this.transaction, flags: 0, version: 2, dataBlockSize: this.dataBlockSize, nrDataBlocks: this.nrDataBlocks });
    for (const id of [...this.devices.keys()].sort((a, b) => a - b)) {
      const d = this.devices.get(id)!;
      w.deviceBegin({ devId: id, mappedBlocks: d.mappings.size, transaction: d.transaction, creationTime: d.creation, snapTime: d.snap });
      let run: [number, number, number, number] | null = null;
      for (const k of [...d.mappings.keys()].sort((a, b) => a - b)) {
        const m = d.mappings.get(k)!;
        if (run && k === run[0] + run[2] && m.data === run[1] + run[2] && m.time === run[3]) run[2]++;
        else {
          if (run) w.mapRun(run[0], run[1], run[2], run[3]);
          run = [k, m.data, 1, m.time];
        }
      }
      if (run) w.mapRun(run[0], run[1], run[2], run[3]);
      w.deviceEnd();
    }
    w.superblockEnd();
    return out;
  }
}

/** The model of a pool from the reference's dump of it. */
async function modelFromDump(xml: string): Promise<Model> {
  const file = path.join(dir, `dump-${seq++}.xml`);
  fs.writeFileSync(file, xml);
  let model!: Model;
  let dev!: ModelDevice;
  const visitor: MetadataVisitor = {
    superblockBegin(p: PoolInfo) {
      model = new Model(p.dataBlockSize, Number(p.nrDataBlocks));
      model.time = p.time;
      model.transaction = Number(p.transaction);
    },
    superblockEnd() {},
    deviceBegin(d: DeviceInfo) {
      dev = { mappings: new Map(), transaction: Number(d.transaction), creation: d.creationTime, snap: d.snapTime };
      model.devices.set(d.devId, dev);
    },
    deviceEnd() {},
    mapRun(thin, data, length, time) {
      for (let i = 0; i < length; i++) model.setMapping(dev, Number(thin) + i, { data: data + i, time });
    },
  };
  await readMetadataXml(file, visitor);
  return model;
}

/** Both reference checkers and ours accept the metadata, and the reference dump is the model's. */
function expectPool(file: string, model: Model | null, what: string): void {
  const old = runReference('thin_check', [file]);
  expect(old.status, `${what}: 0.9.0 thin_check: ${old.stderr}`).toBe(0);
  const r = spawnSync(upstreamTool('thin_check'), [file], { encoding: 'utf8' });
  expect(r.status, `${what}: 1.x thin_check: ${r.stderr}`).toBe(0);
  const io = new BlockReader(file);
  const errors: string[] = [];
  const ours = checkMetadata(io, { onEvent: (e) => { if (e.kind === 'error') errors.push(e.message); } });
  io.close();
  expect(errors, what).toEqual([]);
  expect(ours.ok, what).toBe(true);
  if (model) {
    const dump = runReference('thin_dump', [file]);
    expect(dump.status, `${what}: thin_dump: ${dump.stderr}`).toBe(0);
    expect(dump.stdout, what).toBe(model.xml());
  }
}

/** A write of one block as dm-thin does it, applied to the pool and the model alike. */
function write(pool: Pool, model: Model, devId: number, block: number): void {
  const dev = model.devices.get(devId)!;
  const before = dev.mappings.get(block);
  const m = pool.lookup(devId, block);
  expect(m === null ? undefined : { data: m.dataBlock, time: m.time }).toEqual(before);
  if (m) expect(m.shared).toBe(before!.time < dev.snap);
  if (m && !m.shared) return;
  const b = pool.allocDataBlock();
  // A new block is one no device maps: not the one shared, nor any other.
  expect(model.users.has(b)).toBe(false);
  pool.insertMapping(devId, block, b);
  model.setMapping(dev, block, { data: b, time: model.time });
}

function discard(pool: Pool, model: Model, devId: number, begin: number, end: number): void {
  const dev = model.devices.get(devId)!;
  let expected = 0;
  for (const k of [...dev.mappings.keys()]) {
    if (k >= begin && k < end) {
      model.deleteMapping(dev, k);
      expected++;
    }
  }
  expect(pool.removeRange(devId, begin, end)).toBe(expected);
}

function createThin(pool: Pool, model: Model, id: number): void {
  pool.createThin(id);
  model.devices.set(id, { mappings: new Map(), transaction: model.transaction, creation: model.time, snap: model.time });
}

function createSnap(pool: Pool, model: Model, id: number, origin: number): void {
  pool.createSnap(id, origin);
  model.time++;
  const o = model.devices.get(origin)!;
  o.snap = model.time;
  model.devices.set(id, { mappings: new Map(o.mappings), transaction: model.transaction, creation: model.time, snap: model.time });
  for (const m of o.mappings.values()) model.hold(m.data);
}

describe('pool', () => {
  it('random devices, snapshots of snapshots, writes, discards and deletes: every commit accepted, every dump the model', () => {
    const file = metadataFile(8192);
    const store = new BlockWriter(file);
    const pool = Pool.format(store, { dataBlockSize: 128, nrDataBlocks: 30000 }, { cacheBlocks: 512 });
    const model = new Model(128, 30000);
    const rand = rng(42);
    const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
    let nextId = 0;
    createThin(pool, model, nextId++);
    for (let round = 0; round < 12; round++) {
      for (let op = 0; op < 60; op++) {
        const ids = [...model.devices.keys()];
        const r = rand();
        if (r < 0.05 && ids.length < 12) createSnap(pool, model, nextId++, pick(ids));
        else if (r < 0.07 && ids.length < 12) createThin(pool, model, nextId++);
        else if (r < 0.09 && ids.length > 2) {
          const id = pick(ids);
          pool.deleteDevice(id);
          model.deleteDevice(id);
        } else if (r < 0.2) {
          const begin = Math.floor(rand() * 3000);
          discard(pool, model, pick(ids), begin, begin + Math.floor(rand() * 300));
        } else {
          const id = pick(ids);
          const start = Math.floor(rand() * 3000);
          for (let i = 0; i < 1 + Math.floor(rand() * 40); i++) write(pool, model, id, start + i);
        }
      }
      if (round % 4 === 3) {
        pool.setTransactionId(model.transaction, model.transaction + 7);
        model.transaction += 7;
      }
      pool.commit();
      expectPool(file, model, `round ${round}`);
    }
    expect(pool.lockedBlocks).toBe(0);
    store.close();
  });

  it('holds a metadata snapshot that later writes and deletes leave intact, and releases what only it held', async () => {
    const file = metadataFile(4096);
    const store = new BlockWriter(file);
    const pool = Pool.format(store, { dataBlockSize: 256, nrDataBlocks: 5000 });
    const model = new Model(256, 5000);
    createThin(pool, model, 1);
    for (let i = 0; i < 800; i++) write(pool, model, 1, i * 3);
    createSnap(pool, model, 2, 1);
    for (let i = 0; i < 100; i++) write(pool, model, 2, i * 3);
    pool.reserveMetadataSnap();
    expect(() => pool.reserveMetadataSnap()).toThrow(PoolError);
    const held = runReference('thin_dump', ['-m', file]);
    expect(held.status).toBe(0);
    const heldModel = await modelFromDump(held.stdout);
    const live = model.clone();
    live.nrDataBlocks = 0;
    // The snapshot is the pool as it was when it was taken (its copy has no space map: 0 data blocks).
    expect(held.stdout.replace(/ metadata_snap="\d+"/, '')).toBe(live.xml());
    expect(heldModel.devices.size).toBe(2);

    for (let i = 0; i < 200; i++) write(pool, model, 1, i * 3 + 1);
    discard(pool, model, 1, 0, 1500);
    pool.deleteDevice(2);
    model.deleteDevice(2);
    pool.commit();
    expectPool(file, model, 'snapshot held');
    expect(runReference('thin_dump', ['-m', file]).stdout).toBe(held.stdout);
    const withSnap = readSuperblock(new BlockReader(file));
    expect(withSnap.heldRoot).not.toBe(0);

    pool.releaseMetadataSnap();
    expectPool(file, model, 'snapshot released');
    expect(() => pool.releaseMetadataSnap()).toThrow(/no metadata snapshot/);
    store.close();
  });

  it('runs out of data space as the kernel does: a commit and a refusal, owned blocks still writable, freed blocks back after a commit', () => {
    const file = metadataFile(2048);
    const store = new BlockWriter(file);
    const pool = Pool.format(store, { dataBlockSize: 128, nrDataBlocks: 40 });
    const model = new Model(128, 40);
    createThin(pool, model, 0);
    for (let i = 0; i < 40; i++) write(pool, model, 0, i);
    const commits = pool.commits;
    expect(() => pool.allocDataBlock()).toThrow(/out of data space/);
    expect(pool.commits).toBe(commits + 1);
    expect(pool.mode).toBe('out-of-data-space');
    expect(pool.lookup(0, 5)!.shared).toBe(false);
    expect(() => pool.allocDataBlock()).toThrow(/out of data space/);
    discard(pool, model, 0, 10, 13);
    expect(() => pool.allocDataBlock()).toThrow(/out of data space/);
    pool.commit();
    expect(pool.mode).toBe('write');
    write(pool, model, 0, 100);
    expect(model.devices.get(0)!.mappings.get(100)!.data).toBe(10);
    pool.commit();
    expectPool(file, model, 'after running out');

    // Only blocks freed in the open transaction: refused without a commit.
    write(pool, model, 0, 101);
    write(pool, model, 0, 102);
    pool.commit();
    discard(pool, model, 0, 20, 21);
    const before = pool.commits;
    expect(() => pool.allocDataBlock()).toThrow(/freed in this transaction/);
    expect(pool.commits).toBe(before);

    // Growing commits first: the block freed above is free at the last commit, and next by the cursor.
    pool.resizeData(60);
    model.nrDataBlocks = 60;
    expect(pool.mode).toBe('write');
    write(pool, model, 0, 103);
    expect(model.devices.get(0)!.mappings.get(103)!.data).toBe(20);
    write(pool, model, 0, 104);
    expect(model.devices.get(0)!.mappings.get(104)!.data).toBe(40);
    pool.commit();
    expectPool(file, model, 'after growing');
    store.close();
  });

  it('aborts a transaction that runs out of metadata space: last commit intact, needs_check set, read-only', () => {
    const file = metadataFile(96);
    const store = new BlockWriter(file);
    const pool = Pool.format(store, { dataBlockSize: 128, nrDataBlocks: 20000 });
    const model = new Model(128, 20000);
    createThin(pool, model, 1);
    for (let i = 0; i < 6000; i++) write(pool, model, 1, i);
    pool.commit();
    for (const id of [2, 3, 4, 5]) createSnap(pool, model, id, 1);
    const committed = model.clone();
    // Discards on the snapshots copy their shared leaves one by one, and never stop to check space.
    let error: PoolError | undefined;
    for (const id of [2, 3, 4, 5]) {
      for (let i = 0; i < 6000 && !error; i += 2) {
        try {
          pool.removeRange(id, i, i + 1);
        } catch (e) {
          error = e as PoolError;
        }
      }
    }
    expect(error?.reason).toBe('aborted');
    expect(error?.message).toMatch(/out of metadata space/);
    expect(pool.mode).toBe('read-only');
    expect(pool.needsCheck).toBe(true);
    expect(() => pool.createThin(9)).toThrow(/read-only/);
    expect(pool.lookup(1, 7)?.dataBlock).toBe(committed.devices.get(1)!.mappings.get(7)!.data);
    store.close();

    expect(readSuperblock(new BlockReader(file)).flags & NEEDS_CHECK_FLAG).toBe(NEEDS_CHECK_FLAG);
    expect(runReference('thin_dump', [file]).stdout.replace(' flags="1"', ' flags="0"')).toBe(committed.xml());
    const cleared = runOurs('thin_check', ['--clear-needs-check-flag', file]);
    expect(cleared.status).toBe(0);
    expectPool(file, committed, 'after clearing needs_check');
  });

  it('turns read-only before it would eat into the metadata reserve, without needs_check', () => {
    const file = metadataFile(80);
    const store = new BlockWriter(file);
    const pool = Pool.format(store, { dataBlockSize: 128, nrDataBlocks: 100000 });
    const model = new Model(128, 100000);
    createThin(pool, model, 1);
    let error: PoolError | undefined;
    let refusedBlock = -1;
    for (let i = 0; i < 100000 && !error; i++) {
      try {
        refusedBlock = i * 300;
        write(pool, model, 1, refusedBlock);
      } catch (e) {
        error = e as PoolError;
      }
    }
    expect(error?.message).toMatch(/out-of-metadata-space/);
    expect(pool.mode).toBe('out-of-metadata-space');
    expect(pool.needsCheck).toBe(false);
    expect(pool.freeMetadataBlocks).toBe(0);
    expect(() => pool.createThin(2)).toThrow(/messages are refused/);
    expect(pool.lookup(1, 0)).not.toBe(null);
    store.close();
    // As in the kernel, the commit that spared the reserve came after the refused write's data
    // block was allocated: that block is committed as allocated but mapped by nothing (a leak the
    // 1.x checker and ours report); everything else is the model.
    expect(runReference('thin_check', [file]).status).toBe(0);
    const dump = runReference('thin_dump', [file]);
    expect(dump.stdout).toBe(model.xml());
    const leaked = runOurs('thin_check', [file]);
    expect(leaked.status).toBe(1);
    expect(leaked.stderr).toContain(`data block ${model.devices.get(1)!.mappings.size}: counted once in the space map but referenced by nothing (leaked)`);
    expect(leaked.stderr).toContain('1 data blocks have leaked');
  });
});

describe('pools the kernel wrote', () => {
  const scenarios = ['a_one_thin', 'b_snap_chain', 'c_discard'].map((s) => path.join(ROOT, 'testdata', 'kernel-scenarios', s, 'metadata.img.gz'));
  const images = ['tmeta', 'tmeta_with_metadata_snap', 'tmeta_device_id_reuse', 'tmeta_with_deleted_snapshot', 'tmeta_with_shared_internal_root', 'tmeta_with_shared_internals_and_leaves'];

  const cases: Array<[string, () => string]> = [
    ...scenarios.map((gz): [string, () => string] => [path.basename(path.dirname(gz)), () => {
      const f = path.join(dir, `${path.basename(path.dirname(gz))}.bin`);
      fs.writeFileSync(f, gunzipSync(fs.readFileSync(gz)));
      return f;
    }]),
    ...images.map((name): [string, () => string] => [name, () => unpackKernelImage(name, path.join(dir, `${name}.bin`))]),
  ];

  for (const [name, unpack] of cases) {
    it(`${name}: opened, snapshotted, written, discarded and trimmed; still accepted, dump as the model`, async () => {
      const file = unpack();
      const dump = runReference('thin_dump', [file]);
      expect(dump.status).toBe(0);
      const model = await modelFromDump(dump.stdout);
      const heldBefore = runReference('thin_dump', ['-m', file]);
      const store = new BlockWriter(file);
      const pool = Pool.open(store);
      const ids = [...model.devices.keys()];
      const origin = ids[0];
      const snap = Math.max(...ids) + 1;
      createSnap(pool, model, snap, origin);
      const keys = [...model.devices.get(origin)!.mappings.keys()];
      for (let i = 0; i < Math.min(keys.length, 300); i += 3) {
        write(pool, model, snap, keys[i]);
        write(pool, model, origin, keys[i + 1] ?? keys[0]);
      }
      for (let i = 0; i < 50; i++) write(pool, model, snap, 1_000_000 + i);
      if (keys.length > 10) discard(pool, model, origin, keys[5], keys[Math.min(keys.length - 1, 200)]);
      if (ids.length > 1) {
        pool.deleteDevice(ids[ids.length - 1]);
        model.deleteDevice(ids[ids.length - 1]);
      }
      pool.commit();
      store.close();
      expectPool(file, model, name);
      // A held metadata snapshot is untouched by all of it.
      expect(runReference('thin_dump', ['-m', file]).stdout).toBe(heldBefore.stdout);
    });
  }
});
