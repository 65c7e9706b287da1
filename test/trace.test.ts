// The trace reader (TRACE.md, version 1): every operation of the format parsed, including those
// the engine refuses to run yet; every kind of bad line refused with its line number; the fast
// path for the common lines of large traces giving exactly what the full parser gives; lines that
// straddle the reader's chunks, CRLF, tabs and comments.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Op, TraceError, TraceOp, parseLine, readTrace } from '../src/engine/trace.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('trace-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let fileNo = 0;
function traceFile(text: string): string {
  const f = path.join(dir, `t${fileNo++}.trace`);
  fs.writeFileSync(f, text, 'latin1');
  return f;
}

function read(text: string): TraceOp[] {
  return [...readTrace(traceFile(text))];
}

/** The full parser alone (no fast path), as readTrace would report a failure. */
function slow(text: string): Op | null {
  const hash = text.indexOf('#');
  return parseLine(hash >= 0 ? text.slice(0, hash) : text, (reason) => {
    throw new Error(reason);
  });
}

const POOL = 'pool data_block_size=128 nr_data_blocks=1000';

describe('every operation of the format', () => {
  const cases: Array<[string, Op]> = [
    ['pool data_block_size=256 nr_data_blocks=70000', {
      kind: 'pool', dataBlockSize: 256, nrDataBlocks: 70000, metadataBlocks: undefined, zero: true, discardPassdown: true, errorIfNoSpace: false,
    }],
    ['pool data_block_size=128 nr_data_blocks=5 metadata_blocks=96 zero=off discard_passdown=off error_if_no_space=on', {
      kind: 'pool', dataBlockSize: 128, nrDataBlocks: 5, metadataBlocks: 96, zero: false, discardPassdown: false, errorIfNoSpace: true,
    }],
    ['create_thin 16777215', { kind: 'create_thin', dev: 16777215 }],
    ['create_snap 2 1', { kind: 'create_snap', dev: 2, origin: 1 }],
    ['delete 0', { kind: 'delete', dev: 0 }],
    ['set_transaction_id 0 1', { kind: 'set_transaction_id', current: 0, next: 1 }],
    ['set_transaction_id 18446744073709551614 18446744073709551615', {
      kind: 'set_transaction_id', current: 18446744073709551614n, next: 18446744073709551615n,
    }],
    ['reserve_metadata_snap', { kind: 'reserve_metadata_snap' }],
    ['release_metadata_snap', { kind: 'release_metadata_snap' }],
    ['write 1 7', { kind: 'write', dev: 1, block: 7, count: 1 }],
    ['write 1 7 300', { kind: 'write', dev: 1, block: 7, count: 300 }],
    ['write_sectors 1 9 3', { kind: 'write_sectors', dev: 1, sector: 9, count: 3 }],
    ['discard 3 0', { kind: 'discard', dev: 3, block: 0, count: 1 }],
    ['discard 3 0 4', { kind: 'discard', dev: 3, block: 0, count: 4 }],
    ['discard_sectors 3 100 28', { kind: 'discard_sectors', dev: 3, sector: 100, count: 28 }],
    ['read 2 5', { kind: 'read', dev: 2, block: 5, count: 1 }],
    ['read 2 5 10', { kind: 'read', dev: 2, block: 5, count: 10 }],
    ['commit', { kind: 'commit' }],
    ['flush 4', { kind: 'flush', dev: 4 }],
    ['status', { kind: 'status' }],
    ['sleep 1', { kind: 'sleep', seconds: 1 }],
    ['sleep 0.25', { kind: 'sleep', seconds: 0.25 }],
    ['sleep .5', { kind: 'sleep', seconds: 0.5 }],
    ['external_origin 5 1000', { kind: 'external_origin', dev: 5, blocks: 1000 }],
    ['fail_metadata_writes', { kind: 'fail_metadata_writes' }],
    ['heal_metadata_writes', { kind: 'heal_metadata_writes' }],
    ['merge 2 1', { kind: 'merge', dev: 2, origin: 1 }],
    ['resize_data 2000', { kind: 'resize_data', blocks: 2000 }],
    ['parallel', { kind: 'parallel' }],
    ['end', { kind: 'end' }],
  ];
  for (const [line, op] of cases) {
    it(line, () => {
      expect(slow(line)).toEqual(op);
      // The same through the file reader, in its place in a trace.
      const text = line.startsWith('pool') ? `${line}\n` : line === 'parallel' ? `${POOL}\nparallel\nend\n` : line === 'end' ? `${POOL}\nparallel\nend\n` : `${POOL}\n${line}\n`;
      const ops = read(text);
      const got = ops.find((o) => o.kind === op.kind)!;
      expect(got).toEqual({ ...op, line: ops.indexOf(got) + 1 });
    });
  }
});

describe('layout', () => {
  it('comments, blank lines, tabs, CRLF and a last line without a newline, numbered as in the file', () => {
    const ops = read(`# a comment\r\n${POOL}  # trailing\r\n\r\n\t  \ncreate_thin\t1\r\nwrite 1 2 3 # why\r\n   read 1 2   \n# end\ncommit`);
    expect(ops.map((o) => [o.line, o.kind])).toEqual([[2, 'pool'], [5, 'create_thin'], [6, 'write'], [7, 'read'], [9, 'commit']]);
    expect(ops[2]).toMatchObject({ dev: 1, block: 2, count: 3 });
    expect(ops[3]).toMatchObject({ dev: 1, block: 2, count: 1 });
  });

  it('lines straddling the 64 KiB chunks the file is read in keep their numbers and values', () => {
    const lines = [POOL, 'create_thin 1'];
    for (let i = 0; i < 30000; i++) lines.push(`write 1 ${i * 7919} ${1 + (i % 5)}`);
    const ops = read(lines.join('\n'));
    expect(ops).toHaveLength(lines.length);
    for (let i = 2; i < lines.length; i++) {
      const j = i - 2;
      expect(ops[i]).toEqual({ kind: 'write', dev: 1, block: j * 7919, count: 1 + (j % 5), line: i + 1 });
    }
  });

  it('the progress callback sees the bytes read, up to the file size', () => {
    const text = `${POOL}\n${'commit\n'.repeat(20000)}`;
    const f = traceFile(text);
    let last = 0;
    for (const _ of readTrace(f, (b) => (last = b)));
    expect(last).toBe(Buffer.byteLength(text));
  });

  it('a missing file is an input error naming it', () => {
    expect(() => [...readTrace(path.join(dir, 'nope.trace'))]).toThrow(/nope\.trace: No such file or directory/);
  });
});

describe('bad lines are refused with their number', () => {
  const cases: Array<[string, RegExp]> = [
    ['frobnicate 1', /unknown operation 'frobnicate'/],
    ['write', /write: missing device id/],
    ['write 1', /write: missing block/],
    ['write 1 2 3 4', /write: unexpected '4'/],
    ['write x 2', /device id 'x' is not a non-negative decimal number/],
    ['write -1 2', /device id '-1' is not a non-negative decimal number/],
    ['write 16777216 0', /device id 16777216 is too large \(at most 16777215\)/],
    ['write 1 9007199254740992', /block 9007199254740992 is too large/],
    ['write 1 2 0', /write: count must be at least 1/],
    ['read 1 2 0', /read: count must be at least 1/],
    ['discard 1 2 0', /discard: count must be at least 1/],
    ['write_sectors 1 2', /write_sectors: missing sector count/],
    ['write_sectors 1 2 0', /sector count must be at least 1/],
    ['create_snap 1', /create_snap: missing origin device id/],
    ['commit now', /commit: unexpected 'now'/],
    ['sleep', /sleep: missing seconds/],
    ['sleep -1', /seconds '-1' is not a non-negative decimal/],
    ['sleep 1e3', /seconds '1e3' is not a non-negative decimal/],
    ['set_transaction_id 1 18446744073709551616', /new transaction id '18446744073709551616' is not a u64 decimal number/],
    ['resize_data', /resize_data: missing blocks/],
    ['pool nr_data_blocks=10', /pool: data_block_size= is required/],
    ['pool data_block_size=128', /pool: nr_data_blocks= is required/],
    ['pool data_block_size=128 nr_data_blocks=10 colour=blue', /pool: unknown option colour/],
    ['pool data_block_size=128 nr_data_blocks=10 zero=yes', /pool: zero must be on or off, not 'yes'/],
    ['pool data_block_size=128 data_block_size=256 nr_data_blocks=10', /pool: data_block_size given twice/],
    ['pool data_block_size=128 nr_data_blocks', /pool: 'nr_data_blocks' is not key=value/],
    ['pool data_block_size=abc nr_data_blocks=10', /pool: data_block_size 'abc' is not a decimal number below 2\^53/],
  ];
  for (const [line, message] of cases) {
    it(line, () => {
      const text = line.startsWith('pool') ? `# first\n${line}\n` : `${POOL}\ncreate_thin 1\n${line}\ncommit\n`;
      const at = line.startsWith('pool') ? 2 : 3;
      let error: unknown;
      try {
        read(text);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(TraceError);
      const e = error as TraceError;
      expect(e.line).toBe(at);
      expect(e.message).toMatch(new RegExp(`\\.trace:${at}: `));
      expect(e.reason).toMatch(message);
    });
  }

  it('structure: pool only first, parallel ... end paired and not nested', () => {
    const failure = (text: string): TraceError => {
      try {
        read(text);
      } catch (e) {
        return e as TraceError;
      }
      throw new Error('accepted');
    };
    expect(failure(`create_thin 1\n${POOL}\n`)).toMatchObject({ line: 2, reason: 'pool must be the first operation' });
    expect(failure(`${POOL}\n${POOL}\n`)).toMatchObject({ line: 2, reason: 'pool must be the first operation' });
    expect(failure(`${POOL}\nparallel\nparallel\nend\n`)).toMatchObject({ line: 3, reason: 'parallel inside parallel' });
    expect(failure(`${POOL}\nend\n`)).toMatchObject({ line: 2, reason: 'end without parallel' });
    // An unclosed parallel is reported at its own line, once the file has ended.
    expect(failure(`${POOL}\ncreate_thin 1\nparallel\nwrite 1 0\n`)).toMatchObject({ line: 3, reason: 'parallel without end' });
    // A trace need not start with a pool line (it then continues an existing pool).
    expect(read('create_thin 1\n')).toEqual([{ kind: 'create_thin', dev: 1, line: 1 }]);
  });
});

describe('the fast path for write, read, discard and commit', () => {
  it('gives what the full parser gives, or leaves the line to it, on every spelling', () => {
    // Seeded variations around the fast path's edges: spacing, tabs, CR, comments, leading
    // zeros, 15- and 16-digit numbers, counts of zero, device ids at and past 2^24, extra words.
    let seed = 12345;
    const rand = (n: number) => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const number = (): string => {
      switch (rand(8)) {
        case 0: return '0';
        case 1: return String(rand(100));
        case 2: return `00${rand(50)}`;
        case 3: return '999999999999999';
        case 4: return '1000000000000000';
        case 5: return '9007199254740993';
        case 6: return String(16777215 + rand(3));
        default: return String(rand(1_000_000_000));
      }
    };
    const space = () => [' ', ' ', ' ', '  ', '\t'][rand(5)];
    const lines: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const op = ['write', 'read', 'discard', 'commit', 'writes', 'write_sectors'][rand(6)];
      const words = [op];
      const n = op === 'commit' ? rand(4) === 0 ? 1 : 0 : 1 + rand(4);
      for (let k = 0; k < n; k++) words.push(k === 0 && rand(8) !== 0 ? String(rand(100)) : k === 2 && rand(2) === 0 ? String(1 + rand(9)) : number());
      let line = words.join(' ');
      if (rand(6) === 0) line = words.join(space());
      if (rand(10) === 0) line = `${space()}${line}`;
      if (rand(10) === 0) line += space();
      if (rand(10) === 0) line += ' # note 1 2';
      if (rand(15) === 0) line += '\r';
      lines.push(line);
    }
    let fast = 0;
    for (let i = 0; i < lines.length; i++) {
      let expected: Op | null | Error;
      try {
        expected = slow(lines[i]);
      } catch (e) {
        expected = e as Error;
      }
      // Each line alone in a trace after a pool line, so a failure is its own.
      let got: Op | null | Error;
      try {
        const ops = read(`${POOL}\n${lines[i]}\n`);
        got = ops.length > 1 ? ops[1] : null;
        if (got) delete (got as Partial<TraceOp>).line;
      } catch (e) {
        got = new Error((e as TraceError).reason);
      }
      expect(got, JSON.stringify(lines[i])).toEqual(expected);
      if (/^(write|read|discard) \d+ \d+( \d+)?$|^commit$/.test(lines[i]) && !(expected instanceof Error)) fast++;
    }
    // Most lines were of the plain shape the fast path takes.
    expect(fast).toBeGreaterThan(300);
  });
});
