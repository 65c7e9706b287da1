// thin_check against the kernel-written images: the same verdict as the reference tool recorded
// beside each image (with and without -m), and the input left byte-for-byte unchanged.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockReader } from '../src/io/block-io.js';
import { metadataSpaceMapRoot, readSuperblock } from '../src/thin/superblock.js';
import { KERNEL_IMAGES, runOurs, sha256, tempDir, unpackKernelImage } from './support/reference.js';

const IMAGES = KERNEL_IMAGES;
const dir = tempDir('check-ki-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const names = fs.readdirSync(IMAGES).filter((f) => f.endsWith('.bin.gz')).map((f) => f.slice(0, -'.bin.gz'.length));

/** The exit status the reference recorded in NAME.COMMAND.log, or undefined if it wasn't run. */
function recordedStatus(name: string, command: string): number | undefined {
  const log = path.join(IMAGES, `${name}.${command}.log`);
  if (!fs.existsSync(log)) return undefined;
  const m = /exit status: (\d+)/.exec(fs.readFileSync(log, 'utf8'));
  if (!m) throw new Error(`${log}: no exit status`);
  return Number(m[1]);
}

describe('thin_check on kernel images', () => {
  it('finds the images', () => expect(names.length).toBeGreaterThanOrEqual(10));

  for (const name of names) {
    it(name, () => {
      const image = path.join(dir, `${name}.bin`);
      unpackKernelImage(name, image);
      const before = sha256(image);

      const expected = recordedStatus(name, 'thin_check')!;
      const r = runOurs('thin_check', [image]);
      expect(r.status, r.stderr).toBe(expected);
      // The live transaction id, as the reference printed it; the free count from the space map.
      const refOut = fs.readFileSync(path.join(IMAGES, `${name}.thin_check.out`), 'utf8');
      expect(r.stdout).toContain(/TRANSACTION_ID=\d+/.exec(refOut)![0]);
      const io = new BlockReader(image);
      const msm = metadataSpaceMapRoot(readSuperblock(io));
      io.close();
      expect(r.stdout).toContain(`METADATA_FREE_BLOCKS=${Number(msm.nrBlocks) - Number(msm.nrAllocated)}\n`);

      const expectedM = recordedStatus(name, 'thin_check_m');
      const m = runOurs('thin_check', ['-m', image]);
      if (expectedM !== undefined) expect(m.status, m.stderr).toBe(expectedM);
      else expect(m.status).toBe(1); // no held snapshot: nothing to check
      expect(sha256(image)).toBe(before);
    });
  }
});
