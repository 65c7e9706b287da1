// Salvage at the event-stream level on kernel images damaged further here: what it takes from a
// metadata snapshot's superblock copy, and which of several trees found by scanning it prefers.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { XmlWriter } from '../src/formats/xml-writer.js';
import { salvageFile } from '../src/tools/repair.js';
import { runReference, tempDir, unpackKernelImage } from './support/reference.js';

let dir: string;

function image(name: string, zeroBlocks: number[]): string {
  const p = path.join(dir, `${name}.${zeroBlocks.join('-')}.bin`);
  unpackKernelImage(name, p);
  const fd = fs.openSync(p, 'r+');
  for (const b of zeroBlocks) fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, b * 4096);
  fs.closeSync(fd);
  return p;
}

function salvageXml(input: string, opts = {}): { xml: string; warnings: string[]; result: ReturnType<typeof salvageFile> } {
  let xml = '';
  const warnings: string[] = [];
  const result = salvageFile(input, new XmlWriter({ write: (t) => (xml += t) }), { ...opts, warn: (m) => warnings.push(m) });
  return { xml, warnings, result };
}

const body = (xml: string) => xml.slice(xml.indexOf('\n'));
const attr = (xml: string, name: string) => new RegExp(` ${name}="([^"]*)"`).exec(xml)![1];

beforeAll(() => {
  dir = tempDir('thin-salvage-');
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('salvage', () => {
  it("takes the data block size from a metadata snapshot's superblock when block 0 is lost", () => {
    const name = 'tmeta_with_metadata_snap';
    const original = runReference('thin_dump', [image(name, [])]).stdout;
    const { xml, warnings, result } = salvageXml(image(name, [0]));
    expect(result.scanned).toBe(true);
    expect(body(xml)).toBe(body(original));
    expect(attr(xml, 'data_block_size')).toBe(attr(original, 'data_block_size'));
    // Guesses are said out loud.
    expect(warnings.join('\n')).toMatch(/transaction id guessed/);
    expect(warnings.join('\n')).toMatch(/--nr-data-blocks/);
  });

  it('without a snapshot copy a lost superblock needs --data-block-size, and the overrides are used as given', () => {
    const input = image('tmeta', [0]);
    expect(() => salvageXml(input)).toThrow(/--data-block-size/);
    const { xml } = salvageXml(input, { dataBlockSize: 128, transactionId: 21, nrDataBlocks: 65536 });
    const original = runReference('thin_dump', [image('tmeta', [])]).stdout;
    // Every device comes back whole. (An older tree that still holds a since-deleted device
    // ties with the live one on every signal the blocks carry, so that device may return too.)
    const devices = (x: string) => x.match(/<device [\s\S]*?<\/device>/g) ?? [];
    const ours = new Set(devices(xml));
    for (const dev of devices(original)) expect(ours.has(dev)).toBe(true);
    expect(attr(xml, 'transaction')).toBe('21');
    expect(attr(xml, 'nr_data_blocks')).toBe('65536');
  });

  it('with the live roots and superblock lost, an older tree with mappings beats an empty one', () => {
    const name = 'tmeta_with_empty_roots';
    const sound = image(name, []);
    const original = runReference('thin_dump', [sound]).stdout;
    const sb = execFileSync('od', ['-An', '-tu8', '-j320', '-N16', sound], { encoding: 'utf8' }).trim().split(/\s+/).map(Number);
    const { xml, result } = salvageXml(image(name, [0, ...sb]), { dataBlockSize: 128 });
    expect(result.mappings).toBeGreaterThan(0);
    // Device 1's mappings (the origin, unchanged since its snapshot) come back whole; its
    // details are the older tree's.
    const dev1 = (x: string) => /<device dev_id="1"[^\n]*\n([\s\S]*?)<\/device>/.exec(x)![1];
    expect(dev1(xml)).toBe(dev1(original));
  });
});
