// thin_dump on the bundled images (testdata/): needs no reference tools.
// The oracle is the reference's output stored beside each image (see testdata/README.md).
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { BlockReader } from '../src/io/block-io.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../src/thin/events.js';
import { readMetadata } from '../src/thin/read-metadata.js';
import { dumpMetadata } from '../src/tools/dump.js';
import { runOurs, sha256, tempDir } from './support/reference.js';

const TESTDATA = path.resolve(__dirname, '..', 'testdata');
const dir = tempDir('thin-dump-td-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function unpack(name: string): string {
  const img = path.join(dir, `${name}.bin`);
  if (!fs.existsSync(img)) fs.writeFileSync(img, gunzipSync(fs.readFileSync(path.join(TESTDATA, `${name}.bin.gz`))));
  return img;
}

const NAMES = ['small-pool', 'huge-offset'];

describe('thin_dump on the bundled images', () => {
  for (const name of NAMES) {
    it(`${name}: the reference's XML and human-readable text, byte for byte`, () => {
      const img = unpack(name);
      const before = sha256(img);
      const xml = runOurs('thin_dump', [img]);
      expect(xml.status).toBe(0);
      expect(xml.stdout).toBe(fs.readFileSync(path.join(TESTDATA, `${name}.dump.xml`), 'latin1'));
      const text = runOurs('thin_dump', ['--format', 'human_readable', img]);
      expect(text.status).toBe(0);
      expect(text.stdout).toBe(fs.readFileSync(path.join(TESTDATA, `${name}.dump.txt`), 'latin1'));
      expect(sha256(img)).toBe(before);
    });

    it(`${name}: the event stream covers every mapping once, in order, as maximal runs`, () => {
      const img = unpack(name);
      const io = new BlockReader(img);
      const devices: { info: DeviceInfo; mapped: number }[] = [];
      let pool: PoolInfo | undefined;
      let ended = false;
      let last = { thin: -1, data: -2, time: -1 };
      const visitor: MetadataVisitor = {
        superblockBegin: (p) => (pool = p),
        superblockEnd: () => (ended = true),
        deviceBegin: (info) => {
          devices.push({ info, mapped: 0 });
          last = { thin: -1, data: -2, time: -1 };
        },
        deviceEnd: () => {},
        mapRun: (thin, data, length, time) => {
          expect(length).toBeGreaterThan(0);
          expect(thin).toBeGreaterThan(last.thin);
          // A run that could have been extended was not cut short.
          expect(thin === last.thin + 1 && data === last.data + 1 && time === last.time).toBe(false);
          devices.at(-1)!.mapped += length;
          last = { thin: Number(thin) + length - 1, data: data + length - 1, time };
        },
      };
      try {
        readMetadata(io, visitor);
      } finally {
        io.close();
      }
      expect(ended).toBe(true);
      expect(pool?.uuid).toBe('');
      expect(devices.length).toBeGreaterThan(0);
      for (const d of devices) expect(d.mapped, `device ${d.info.devId}`).toBe(d.info.mappedBlocks);
      const ids = devices.map((d) => d.info.devId);
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
    });
  }

  it('the library writes an output file atomically and reports progress', () => {
    const img = unpack('small-pool');
    const out = path.join(dir, 'lib.xml');
    let calls = 0;
    let lastDone = 0;
    let total = 0;
    dumpMetadata(img, {
      output: out,
      onProgress: (done, t) => {
        calls++;
        expect(done).toBeGreaterThan(lastDone);
        lastDone = done;
        total = t;
      },
    });
    expect(fs.readFileSync(out, 'latin1')).toBe(fs.readFileSync(path.join(TESTDATA, 'small-pool.dump.xml'), 'latin1'));
    expect(calls).toBeGreaterThan(0);
    expect(lastDone).toBe(total);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp'))).toEqual([]);
  });

  it('a failed dump to -o leaves no file', () => {
    const img = path.join(dir, 'broken.bin');
    const good = fs.readFileSync(unpack('small-pool'));
    // Zero everything but the superblock: every tree root is gone.
    const broken = Buffer.alloc(good.length);
    good.copy(broken, 0, 0, 4096);
    fs.writeFileSync(img, broken);
    const out = path.join(dir, 'never.xml');
    const r = runOurs('thin_dump', ['-o', out, img]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^metadata contains errors/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(dir).filter((f) => f.includes('never'))).toEqual([]);
  });
});
