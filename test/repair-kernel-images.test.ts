// thin_repair on the kernel-written images (some damaged on purpose): the reference thin_check
// must accept what we write, and we must recover at least the mappings the reference
// thin_repair recovers from the same image (both counted by the reference thin_dump).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countMappings } from './support/dump-mappings.js';
import { KERNEL_IMAGES, runOurs, runReference, tempDir, unpackKernelImage } from './support/reference.js';

const IMAGES = KERNEL_IMAGES;
const names = fs.existsSync(IMAGES)
  ? fs.readdirSync(IMAGES).filter((f) => f.endsWith('.bin.gz')).map((f) => f.slice(0, -'.bin.gz'.length)).sort()
  : [];

let dir: string;

/** An output as large as the input (a repair never needs more than the original held). */
function outputFor(input: string, tag: string): string {
  const out = `${input}.${tag}`;
  fs.writeFileSync(out, '');
  fs.truncateSync(out, fs.statSync(input).size);
  return out;
}

function repairedMappings(tool: 'ours' | 'reference', input: string): { status: number; stderr: string; mappings: number; check: number } {
  const out = outputFor(input, tool);
  const r = tool === 'ours' ? runOurs('thin_repair', ['-i', input, '-o', out]) : runReference('thin_repair', ['-i', input, '-o', out]);
  const dump = r.status === 0 ? runReference('thin_dump', [out]).stdout : '';
  const check = runReference('thin_check', [out]).status;
  fs.rmSync(out);
  return { status: r.status, stderr: r.stderr, mappings: countMappings(dump), check };
}

beforeAll(() => {
  dir = tempDir('thin-repair-ki-');
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('thin_repair on the kernel images', () => {
  it('has images to test', () => {
    expect(names.length).toBeGreaterThan(0);
  });

  for (const name of names) {
    it(name, () => {
      const input = path.join(dir, `${name}.bin`);
      unpackKernelImage(name, input);
      try {
        const ours = repairedMappings('ours', input);
        const ref = repairedMappings('reference', input);
        expect(ours.status, ours.stderr).toBe(0);
        expect(ours.check).toBe(0);
        expect(ours.mappings).toBeGreaterThanOrEqual(ref.mappings);
        // Where the live metadata is sound, nothing may be lost.
        if (runReference('thin_check', [input]).status === 0) {
          expect(ours.mappings).toBe(countMappings(runReference('thin_dump', [input]).stdout));
        }
      } finally {
        fs.rmSync(input, { force: true });
      }
    });
  }
});
