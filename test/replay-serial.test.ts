// The serial shortcut (IoPath.runSerial) against the full IO path: the same trace replayed as
// is (each bio's steps run straight through) and with every IO line alone in a `parallel` block
// (the same steps through cells, deferred sets and the scheduler, with nothing to interleave)
// must leave the same metadata and data files, byte for byte. The trace mixes what the shortcut
// takes (provisioning, overwrites, partial writes, copy-on-write after snapshots, reads) with
// what it hands to the full path (discards, running out of data space).
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { replay } from '../src/engine/replay.js';
import { seededRandom } from '../src/engine/io-path.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('replay-serial-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const SECTORS = 128;

/** A random trace over a small pool: `dataBlocks` small enough that it runs out of space at times. */
function randomTrace(seed: number, dataBlocks: number): string[] {
  const random = seededRandom(seed);
  const pick = (n: number): number => Math.floor(random() * n);
  const lines = [`pool data_block_size=${SECTORS} nr_data_blocks=${dataBlocks} error_if_no_space=on`, 'create_thin 0'];
  const devices = [0];
  for (let i = 0; i < 600; i++) {
    const dev = devices[pick(devices.length)];
    const block = pick(96);
    const r = random();
    // One bio a line: a line of several blocks would put several bios in flight at once in the
    // full-path variant, free to allocate in another order.
    if (r < 0.4) lines.push(`write ${dev} ${block}`);
    else if (r < 0.55) {
      const begin = pick(SECTORS);
      lines.push(`write_sectors ${dev} ${block * SECTORS + begin} ${1 + pick(SECTORS - begin)}`);
    } else if (r < 0.7) lines.push(`read ${dev} ${block}`);
    else if (r < 0.8) lines.push(`discard ${dev} ${block} ${1 + pick(4)}`);
    else if (r < 0.9) lines.push('commit');
    else if (r < 0.93 && devices.length < 4) {
      lines.push(`create_snap ${devices.length} ${dev}`);
      devices.push(devices.length);
    }
  }
  lines.push('commit');
  return lines;
}

const IO = /^(write|write_sectors|read|discard) /;

function run(name: string, lines: string[]): { metadata: Buffer; data: Buffer; verification: string } {
  const trace = path.join(dir, `${name}.trace`);
  fs.writeFileSync(trace, `${lines.join('\n')}\n`);
  const metadata = path.join(dir, `${name}.meta`);
  const data = path.join(dir, `${name}.data`);
  const s = replay({ trace, metadata, data, sync: false, keepGoing: true });
  return { metadata: fs.readFileSync(metadata), data: fs.readFileSync(data), verification: s.verification };
}

describe('the serial shortcut', () => {
  for (const [seed, dataBlocks] of [
    [1, 400],
    [2, 60],
    [3, 90],
  ] as const) {
    it(`leaves what the full IO path leaves (seed ${seed}, ${dataBlocks} data blocks)`, () => {
      const lines = randomTrace(seed, dataBlocks);
      // Comments where the other has `parallel` and `end`: the same line numbers, which name the data each write leaves.
      const serial = run(`serial-${seed}`, lines.flatMap((l) => (IO.test(l) ? ['# parallel', l, '# end'] : [l])));
      const full = run(`full-${seed}`, lines.flatMap((l) => (IO.test(l) ? ['parallel', l, 'end'] : [l])));
      expect(serial.verification).toBe('passed');
      expect(full.verification).toBe('passed');
      expect(serial.metadata.equals(full.metadata)).toBe(true);
      expect(serial.data.equals(full.data)).toBe(true);
    });
  }
});
