// Seeded random traces of thousands of operations, mixing every operation: after every commit
// both reference checkers and ours accept the metadata; at the end the reference dump agrees with
// ours (which the replay compared with the model), every data block's count is the number of
// distinct live leaves that map it, and every read matched the model on the way.
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockReader } from '../src/io/block-io.js';
import { SubtreeMemo, walkBTree } from '../src/pdata/btree/walk.js';
import { openDiskSpaceMap } from '../src/pdata/space-map/disk.js';
import { DEVICE_DETAILS_SIZE } from '../src/thin/device-details.js';
import { mappingDataBlock } from '../src/thin/mapping.js';
import { readDeviceRoots, walkDeviceTree } from '../src/thin/mapping-tree.js';
import { dataSpaceMapRoot, readSuperblock } from '../src/thin/superblock.js';
import { replay } from '../src/engine/replay.js';
import { runOurs, runReference, tempDir, upstreamTool } from './support/reference.js';
import { randomTrace } from './support/trace-gen.js';

const dir = tempDir('replay-random-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/**
 * Each data block's count by the kernel's rule, computed here from the trees: one per distinct
 * leaf (of the live trees and the held snapshot's) that maps it. Returns the blocks whose count
 * in the data space map differs.
 */
function countsAgainstLeaves(file: string): string[] {
  const io = new BlockReader(file);
  try {
    const sb = readSuperblock(io);
    const expected = new Map<number, number>();
    const memo: SubtreeMemo = new Map();
    const fail = (e: Error): never => { throw e; };
    const roots = [sb.dataMappingRoot];
    if (sb.heldRoot !== 0) roots.push(readSuperblock(io, sb.heldRoot).dataMappingRoot);
    for (const top of roots) {
      for (const { root } of readDeviceRoots(io, top, fail)) {
        // The memo visits a shared leaf once: a leaf held by several trees counts once.
        walkDeviceTree(io, root, {
          leaf(node) {
            for (let i = 0; i < node.nrEntries; i++) {
              const b = mappingDataBlock(node.buf, node.valueOffset(i));
              expected.set(b, (expected.get(b) ?? 0) + 1);
            }
          },
          error: fail,
        }, memo);
      }
    }
    walkBTree(io, sb.deviceDetailsRoot, DEVICE_DETAILS_SIZE, { leaf() {}, error: fail });
    const sink = { error: fail };
    const sm = openDiskSpaceMap(io, dataSpaceMapRoot(sb), sink);
    const overflow = new Map<number, number>();
    for (const o = sm.overflowEntries(sink); o.block !== Infinity; o.next()) overflow.set(o.block, o.count);
    const differences: string[] = [];
    sm.forEachBitmap(sink, (first, counts) => {
      for (let i = 0; i < counts.length; i++) {
        const b = first + i;
        let actual = counts[i];
        if (actual === 3) actual = overflow.get(b) ?? -1;
        const want = expected.get(b) ?? 0;
        if (actual !== want) differences.push(`data block ${b}: ${actual} in the space map, ${want} leaves`);
      }
    });
    return differences;
  } finally {
    io.close();
  }
}

/** The 1.x checker takes half a second a run (it sleeps on a thread): it samples the commits. */
const UPSTREAM_EVERY = 25;

describe('random traces', () => {
  for (const seed of [1, 2]) {
    it(`seed ${seed}: 2000 operations, every commit accepted by the reference checker and ours, every read the model's`, () => {
      const trace = path.join(dir, `random-${seed}.trace`);
      fs.writeFileSync(trace, randomTrace({ seed, operations: 2000 }));
      const metadata = path.join(dir, `meta-${seed}`);
      const data = path.join(dir, `data-${seed}`);
      const rejected: string[] = [];
      let commits = 0;
      const summary = replay({
        trace, metadata, data, keepGoing: true, verifyEveryCommit: true,
        afterCommit: (line) => {
          commits++;
          const old = runReference('thin_check', [metadata]);
          if (old.status !== 0) rejected.push(`line ${line}: 0.9.0: ${old.stderr}`);
          if (commits % UPSTREAM_EVERY !== 0) return;
          const upstream = spawnSync(upstreamTool('thin_check'), [metadata], { encoding: 'utf8' });
          if (upstream.status !== 0) rejected.push(`line ${line}: 1.x: ${upstream.stderr}`);
        },
      });
      const upstream = spawnSync(upstreamTool('thin_check'), [metadata], { encoding: 'utf8' });
      expect(upstream.status, upstream.stderr).toBe(0);
      expect(rejected).toEqual([]);
      expect(summary.problems.filter((p) => p.kind === 'mismatch' || p.kind === 'check')).toEqual([]);
      expect(summary.verification).toBe('passed');
      expect(commits).toBeGreaterThan(50);
      // The trace did what it is for: copies, frees, shared blocks, reads compared, some refusals.
      const d = summary.dataBlocks;
      expect(d.copied).toBeGreaterThan(0);
      expect(d.freed).toBeGreaterThan(0);
      expect(d.punched).toBeGreaterThan(0);
      expect(d.verified).toBeGreaterThan(300);
      expect(summary.problems.some((p) => p.kind === 'refused')).toBe(true);
      expect(countsAgainstLeaves(metadata)).toEqual([]);
      expect(runOurs('thin_dump', [metadata]).stdout).toBe(runReference('thin_dump', [metadata]).stdout);
    });
  }
});
