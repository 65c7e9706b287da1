// Bugs the fuzz campaign found (docs/fuzz.md), each rebuilt by hand from the case that showed
// it and held to the property the campaign checks, against the reference tools.
import { afterAll, describe, expect, test } from 'vitest';
import * as damage from './support/damage.js';
import { runOurs, runReference, scratchFiles, unpackKernelImage } from './support/reference.js';

const scratch = scratchFiles('fuzz-regressions-');
afterAll(() => scratch.remove());

function kernelImage(name: string): string {
  return unpackKernelImage(name, scratch.file(`${name}.bin`));
}

describe('thin_check is never looser than the reference', () => {
  test.each(['metadata', 'data'] as const)('a %s space map index entry pointing at block 0 (the superblock) fails the check', (kind) => {
    const file = kernelImage('tmeta_with_deleted_snapshot');
    damage.pointBitmapAt(file, kind, 0, 0);
    expect(runReference('thin_check', [file]).status).not.toBe(0);
    const ours = runOurs('thin_check', [file]);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toMatch(/block 0/);
  });

  test('of --super-block-only and --skip-mappings the later decides how far the check goes, as in 0.9.0', () => {
    const file = kernelImage('tmeta_device_id_reuse');
    damage.zeroBlock(file, damage.superblockOf(file).dataMappingRoot);
    for (const opts of [['--super-block-only', '--skip-mappings'], ['--skip-mappings', '--super-block-only']]) {
      const ref = runReference('thin_check', [...opts, file]).status;
      expect(runOurs('thin_check', [...opts, file]).status, opts.join(' ')).toBe(ref);
    }
    expect(runReference('thin_check', ['--super-block-only', '--skip-mappings', file]).status).not.toBe(0);
  });
});
