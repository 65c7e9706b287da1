// thin_dump on the kernel-written images: the same exit status as the reference 0.9.0 recorded in
// NAME.thin_dump[_m].log, and where it printed XML, the same bytes. The image is never changed.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { KERNEL_IMAGES, runOurs, sha256, tempDir, unpackKernelImage } from './support/reference.js';

const IMAGES = KERNEL_IMAGES;
const dir = tempDir('thin-dump-ki-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const names = fs.existsSync(IMAGES)
  ? fs.readdirSync(IMAGES).filter((f) => f.endsWith('.bin.gz')).map((f) => f.slice(0, -'.bin.gz'.length)).sort()
  : [];

/** The reference's stdout for a run, or '' when it printed none. */
function referenceOut(base: string): string {
  if (fs.existsSync(`${base}.out.gz`)) return gunzipSync(fs.readFileSync(`${base}.out.gz`)).toString('latin1');
  if (fs.existsSync(`${base}.out`)) return fs.readFileSync(`${base}.out`, 'latin1');
  return '';
}

function referenceStatus(log: string): number {
  const m = /^exit status: (\d+)$/m.exec(fs.readFileSync(log, 'utf8'));
  if (!m) throw new Error(`${log}: no exit status`);
  return Number(m[1]);
}

describe('thin_dump on kernel images', () => {
  it('has images to test', () => {
    expect(names.length).toBeGreaterThanOrEqual(10);
  });

  for (const name of names) {
    it(name, () => {
      const img = path.join(dir, `${name}.bin`);
      unpackKernelImage(name, img);
      const before = sha256(img);
      let runs = 0;
      for (const [suffix, args] of [['', []], ['_m', ['-m']]] as const) {
        const base = path.join(IMAGES, `${name}.thin_dump${suffix}`);
        if (!fs.existsSync(`${base}.log`)) continue;
        runs++;
        const ours = runOurs('thin_dump', [...args, img]);
        const status = referenceStatus(`${base}.log`);
        expect(ours.status, `${name}${suffix} exit status (stderr: ${ours.stderr})`).toBe(status);
        // Partial output before an error must match too (the reference prints what it read).
        expect(ours.stdout === referenceOut(base), `${name}${suffix} stdout differs`).toBe(true);
        if (status !== 0) {
          expect(ours.stderr.trim().split('\n').length, 'error is short').toBeLessThanOrEqual(2);
          expect(ours.stderr).not.toMatch(/\n\s+at /);
        }
      }
      expect(runs).toBeGreaterThan(0);
      expect(sha256(img)).toBe(before);
      fs.rmSync(img);
    });
  }
});
