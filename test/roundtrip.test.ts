// The whole loop with our tools only, anchored to the reference at both ends: metadata the
// reference (or the kernel) wrote -> our dump -> our restore -> our dump must give the same
// XML, and the reference must read what we wrote back identically.
import { afterAll, describe, expect, it } from 'vitest';
import { generateXml } from './support/generate.js';
import { referenceRestore, runOurs, runReference, scratchFiles, unpackKernelImage } from './support/reference.js';

const scratch = scratchFiles('thin-roundtrip-');
afterAll(() => scratch.remove());

function roundTrip(source: string, sizeBytes: number): void {
  const first = runOurs('thin_dump', [source]);
  expect(first.status, first.stderr).toBe(0);
  expect(first.stdout).toBe(runReference('thin_dump', [source]).stdout);
  const restored = scratch.emptyOutput(sizeBytes);
  const restore = runOurs('thin_restore', ['-i', scratch.writeXml(first.stdout), '-o', restored]);
  expect(restore.status, restore.stderr).toBe(0);
  const second = runOurs('thin_dump', [restored]);
  expect(second.stdout).toBe(first.stdout);
  expect(runReference('thin_dump', [restored]).stdout).toBe(first.stdout);
  expect(runOurs('thin_check', ['-q', restored]).status).toBe(0);
  expect(runReference('thin_check', ['-q', restored]).status).toBe(0);
}

describe('reference restore -> our dump -> our restore -> identical dump', () => {
  const cases = [
    { seed: 31, dataBlockSize: 128, snapshotsPerOrigin: 4 },
    { seed: 32, dataBlockSize: 2048, origins: 3, deleteSome: true, emptyDevices: 2 },
    { seed: 33, dataBlockSize: 65536, hugeOffset: true },
  ];
  for (const c of cases) {
    it(`generated pool, seed ${c.seed}`, () => {
      const source = scratch.file('source.bin');
      referenceRestore(scratch.writeXml(generateXml({ mappingsPerOrigin: 1500, ...c })), source, 8);
      roundTrip(source, 8 << 20);
    });
  }

  it('the kernel image tmeta (an origin, snapshots sharing subtrees)', () => {
    const source = scratch.file('tmeta.bin');
    unpackKernelImage('tmeta', source);
    roundTrip(source, 64 << 20);
  });
});
