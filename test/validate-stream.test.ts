import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { readMetadataXml } from '../src/formats/xml-reader.js';
import { DeviceInfo, MetadataVisitor, PoolInfo } from '../src/thin/events.js';
import { StreamError, StreamValidator, SuperblockOverrides } from '../src/thin/validate-stream.js';
import { generateXml } from './support/generate.js';
import { runReference, tempDir } from './support/reference.js';

class Recorder implements MetadataVisitor {
  pools: PoolInfo[] = [];
  maps = 0;
  refs: string[] = [];
  superblockBegin(p: PoolInfo) { this.pools.push(p); }
  superblockEnd() {}
  deviceBegin(_d: DeviceInfo) {}
  deviceEnd() {}
  mapRun() { this.maps++; }
  defBegin() {}
  defEnd() {}
  ref(name: string) { this.refs.push(name); }
}

async function validate(xml: string, overrides?: SuperblockOverrides): Promise<Recorder> {
  const r = new Recorder();
  await readMetadataXml(Readable.from([Buffer.from(xml)]), new StreamValidator(r, overrides), { name: 'in.xml' });
  return r;
}

async function errorOf(xml: string, overrides?: SuperblockOverrides): Promise<string> {
  try {
    await validate(xml, overrides);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('no error');
}

const sb = (attrs = '') => {
  const base: Record<string, string> = {
    uuid: '', time: '5', transaction: '9', flags: '0', version: '2', data_block_size: '128', nr_data_blocks: '1000',
  };
  for (const m of attrs.matchAll(/(\w+)="([^"]*)"/g)) base[m[1]] = m[2];
  return `<superblock ${Object.entries(base).map(([k, v]) => `${k}="${v}"`).join(' ')}>`;
};
const dev = (id: number, mapped: number, times = 'creation_time="0" snap_time="0"') =>
  `<device dev_id="${id}" mapped_blocks="${mapped}" transaction="0" ${times}>`;
const single = (thin: number, data: number, time = 0) =>
  `<single_mapping origin_block="${thin}" data_block="${data}" time="${time}"/>`;
const range = (thin: number | string, data: number, len: number | string, time = 0) =>
  `<range_mapping origin_begin="${thin}" data_begin="${data}" length="${len}" time="${time}"/>`;
/** A document, one element a line: line 1 is the superblock, line n + 1 is body[n - 1]. */
const doc = (head: string, ...body: string[]) => [head, ...body, '</superblock>'].join('\n');

describe('StreamValidator', () => {
  it('passes valid metadata through, superblock included', async () => {
    const r = await validate(doc(sb(), dev(1, 4), range(0, 10, 3), single(5, 999, 5), '</device>', dev(0, 0), '</device>'));
    expect(r.maps).toBe(2);
    expect(r.pools[0]).toMatchObject({ time: 5, transaction: 9, dataBlockSize: 128, nrDataBlocks: 1000 });
  });

  const bad: [string, string, string][] = [
    ['a data block beyond nr_data_blocks', doc(sb(), dev(1, 1), single(0, 1000)),
      'in.xml:3: data block 1000 (thin block 0) is beyond the data device: nr_data_blocks is 1000'],
    ['a range running past nr_data_blocks', doc(sb(), dev(1, 5), range(10, 998, 5)),
      'in.xml:3: data block 1000 (thin block 12) is beyond the data device: nr_data_blocks is 1000'],
    ['a duplicate mapping', doc(sb(), dev(1, 2), single(4, 1), single(4, 2)),
      'in.xml:4: device 1: thin block 4 is mapped twice (the previous mapping covers 4..4)'],
    ['overlapping mappings', doc(sb(), dev(1, 12), range(0, 0, 10), range(9, 20, 2)),
      'in.xml:4: device 1: thin block 9 is mapped twice (the previous mapping covers 0..9)'],
    ['mappings out of order', doc(sb(), dev(1, 2), single(7, 1), single(3, 2)),
      'in.xml:4: device 1: mappings are not in increasing thin-block order (thin block 3 after 7)'],
    ['a duplicate device', doc(sb(), dev(3, 0), '</device>', dev(3, 0)),
      'in.xml:4: device 3 appears twice'],
    ['mapped_blocks above the mappings held', doc(sb(), dev(2, 5), range(0, 0, 4), '</device>'),
      'in.xml:4: device 2: mapped_blocks is 5 but it holds 4 mappings'],
    ['mapped_blocks below the mappings held', doc(sb(), dev(2, 0), single(0, 0), '</device>'),
      'in.xml:4: device 2: mapped_blocks is 0 but it holds 1 mappings'],
    ['a thin block run past 2^64-1', doc(sb(), dev(1, 2), range('18446744073709551615', 0, 2)),
      'in.xml:3: thin blocks 18446744073709551615 + length 2 run past the largest thin block (2^64-1)'],
    ['a data block size below 128', doc(sb('data_block_size="64"')),
      'in.xml:1: data_block_size 64 is not a multiple of 128 between 128 and 2097152 sectors'],
    ['a data block size not a multiple of 128', doc(sb('data_block_size="192"')),
      'in.xml:1: data_block_size 192 is not a multiple of 128 between 128 and 2097152 sectors'],
    ['a data block size above 1 GiB', doc(sb('data_block_size="2097280"')),
      'in.xml:1: data_block_size 2097280 is not a multiple of 128 between 128 and 2097152 sectors'],
    ['more data blocks than 40 bits address', doc(sb('nr_data_blocks="1099511627777"')),
      'in.xml:1: nr_data_blocks 1099511627777 exceeds 2^40, the most a mapping can address'],
    ['unknown flags', doc(sb('flags="2"')), 'in.xml:1: flags 2 has bits other than needs_check (1)'],
    ['an unknown metadata version', doc(sb('version="3"')),
      'in.xml:1: version 3 is not a metadata version the kernel reads (1 or 2)'],
    ['a mapping later than the superblock time', doc(sb(), dev(1, 1, 'creation_time="0" snap_time="5"'), single(0, 0, 6)),
      "in.xml:3: mapping of thin block 0 has time 6, later than the superblock's time 5"],
    ['a device created after the superblock time', doc(sb(), dev(1, 0, 'creation_time="6" snap_time="6"')),
      "in.xml:2: device 1: creation_time 6 is later than the superblock's time 5"],
    ['a ref to an undefined def', doc(sb(), dev(1, 0), '<ref name="x"/>'), "in.xml:3: ref to undefined def 'x'"],
    ['a def referring to itself', doc(sb(), '<def name="x">', '<ref name="x"/>'), "in.xml:3: ref to undefined def 'x'"],
    ['a def defined twice', doc(sb(), '<def name="x">', '</def>', '<def name="x">'), "in.xml:4: def 'x' is defined twice"],
    ['a ref overlapping an earlier mapping', doc(sb(), '<def name="x">', range(5, 0, 5), '</def>', dev(1, 15), range(0, 10, 10), '<ref name="x"/>'),
      'in.xml:7: device 1: thin block 5 is mapped twice (the previous mapping covers 0..9)'],
    ['a mapping overlapping a ref', doc(sb(), '<def name="x">', range(5, 0, 5), '</def>', dev(1, 6), '<ref name="x"/>', single(7, 1)),
      'in.xml:7: device 1: thin block 7 is mapped twice (the previous mapping covers 5..9)'],
    ['disorder within a def', doc(sb(), '<def name="x">', single(5, 0), single(1, 1)),
      "in.xml:4: def 'x': mappings are not in increasing thin-block order (thin block 1 after 5)"],
    ["a device's mapped_blocks not counting its refs", doc(sb(), '<def name="x">', range(5, 0, 5), '</def>', dev(1, 1), '<ref name="x"/>', single(20, 1), '</device>'),
      'in.xml:8: device 1: mapped_blocks is 1 but it holds 6 mappings'],
  ];
  for (const [what, xml, message] of bad) {
    it(`refuses ${what}`, async () => {
      expect(await errorOf(xml)).toBe(message);
    });
  }

  it('counts refs towards mapped_blocks and accepts them in order', async () => {
    const r = await validate(
      doc(sb(), '<def name="x">', range(5, 0, 5), '</def>', dev(1, 7), single(0, 9), '<ref name="x"/>', single(10, 1), '</device>'),
    );
    expect(r.refs).toEqual(['x']);
  });

  it('applies overrides before checking, and forwards them', async () => {
    const xml = doc(sb('nr_data_blocks="0" data_block_size="64"'), dev(1, 1), single(0, 50), '</device>');
    expect(await errorOf(xml)).toMatch(/^in\.xml:1: data_block_size 64 /);
    expect(await errorOf(xml, { dataBlockSize: 256 })).toBe(
      'in.xml:3: data block 50 (thin block 0) is beyond the data device: nr_data_blocks is 0',
    );
    const r = await validate(xml, { dataBlockSize: 256, nrDataBlocks: 51, transactionId: 77 });
    expect(r.pools[0]).toMatchObject({ dataBlockSize: 256, nrDataBlocks: 51, transaction: 77, time: 5 });
    expect(await errorOf(doc(sb()), { dataBlockSize: 100 })).toMatch(/^in\.xml:1: data_block_size 100 /);
  });

  it('throws StreamError without a location when driven directly', () => {
    const v = new StreamValidator(new Recorder());
    expect(() => v.mapRun(0, 0, 1, 0)).toThrow(new StreamError('mapping before the superblock'));
    v.superblockBegin({ uuid: '', time: 0, transaction: 0, flags: 0, version: 2, dataBlockSize: 128, nrDataBlocks: 10 });
    expect(() => v.mapRun(0, 0, 1, 0)).toThrow(new StreamError('mapping outside a device or def'));
    expect(() => v.deviceBegin({ devId: 2 ** 24, mappedBlocks: 0, transaction: 0, creationTime: 0, snapTime: 0 })).toThrow(
      "dev_id 16777216 exceeds the kernel's limit 16777215",
    );
  });

  it('accepts devices in any dev_id order, as the reference thin_restore does', async () => {
    const xml = doc(sb(), dev(5, 1), single(0, 1), '</device>', dev(2, 1), single(0, 2), '</device>');
    expect((await validate(xml)).maps).toBe(2);
    const dir = tempDir('validate-stream-order-');
    try {
      const xmlPath = path.join(dir, 'in.xml');
      const meta = path.join(dir, 'meta.bin');
      fs.writeFileSync(xmlPath, xml);
      fs.writeFileSync(meta, '');
      fs.truncateSync(meta, 8 << 20);
      expect(runReference('thin_restore', ['-i', xmlPath, '-o', meta]).status).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('overrides mean what the reference thin_restore makes of them', () => {
    const dir = tempDir('validate-stream-');
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('--transaction-id, --data-block-size and --nr-data-blocks replace the XML values', async () => {
      const xml = generateXml({ seed: 11, mappingsPerOrigin: 200, snapshotsPerOrigin: 1 });
      const xmlPath = path.join(dir, 'in.xml');
      const meta = path.join(dir, 'meta.bin');
      fs.writeFileSync(xmlPath, xml);
      fs.writeFileSync(meta, '');
      fs.truncateSync(meta, 8 << 20);
      const overrides = { transactionId: 4242, dataBlockSize: 512, nrDataBlocks: 100_000 };
      const restore = runReference('thin_restore', [
        '-i', xmlPath, '-o', meta, '--transaction-id', String(overrides.transactionId),
        '--data-block-size', String(overrides.dataBlockSize), '--nr-data-blocks', String(overrides.nrDataBlocks),
      ]);
      expect(restore.status, restore.stderr).toBe(0);
      const dumped = runReference('thin_dump', [meta]).stdout.split('\n')[0];
      const attr = (name: string) => Number(new RegExp(`${name}="(\\d+)"`).exec(dumped)![1]);

      const r = await validate(xml, overrides);
      expect(r.pools[0].transaction).toBe(attr('transaction'));
      expect(r.pools[0].dataBlockSize).toBe(attr('data_block_size'));
      expect(r.pools[0].nrDataBlocks).toBe(attr('nr_data_blocks'));
      expect(attr('transaction')).toBe(overrides.transactionId);
    });
  });
});
