// What the replay tests share: fresh metadata/data file pairs and traces in one temporary
// directory, and the verdict of both reference thin_checks on what a replay wrote.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, expect } from 'vitest';
import { runReference, tempDir, upstreamTool } from './reference.js';

/** A temporary directory removed after the file's tests, with numbered file pairs and traces. */
export function replayFiles(prefix: string) {
  const dir = tempDir(prefix);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  let seq = 0;
  return {
    dir,
    files(): { metadata: string; data: string } {
      const n = seq++;
      return { metadata: path.join(dir, `meta-${n}`), data: path.join(dir, `data-${n}`) };
    },
    writeTrace(name: string, lines: string[]): string {
      const p = path.join(dir, name);
      fs.writeFileSync(p, `${lines.join('\n')}\n`);
      return p;
    },
  };
}

/** Both reference thin_checks (0.9.0 and 1.x) pass the metadata. */
export function expectAccepted(metadata: string): void {
  const old = runReference('thin_check', [metadata]);
  expect(old.status, old.stderr).toBe(0);
  const upstream = spawnSync(upstreamTool('thin_check'), [metadata], { encoding: 'utf8' });
  expect(upstream.status, upstream.stderr).toBe(0);
}
