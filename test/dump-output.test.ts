// The buffered output under the dump: digits written straight into the buffer must equal
// String(n) for every size of number, and pieces of any length must come out in order.
import { afterAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ascii } from '../src/formats/ascii.js';
import { FdSink, withNumbers } from '../src/formats/output.js';
import { rng } from './support/generate.js';
import { tempDir } from './support/reference.js';

const dir = tempDir('thin-dump-out-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function through(fill: (sink: FdSink) => void): string {
  const file = path.join(dir, `out-${Math.random()}`);
  const fd = fs.openSync(file, 'w');
  const sink = new FdSink(fd);
  fill(sink);
  sink.flush();
  fs.closeSync(fd);
  return fs.readFileSync(file, 'latin1');
}

describe('FdSink', () => {
  it('writes numbers as String() does, from 0 to 2^53 - 1', () => {
    const rand = rng(99);
    const numbers = [0, 1, 9, 10, 99, 100, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12345, 2 ** 53 - 1];
    for (let i = 0; i < 20000; i++) numbers.push(Math.floor(rand() * 2 ** (1 + (i % 53))));
    // Either side of every power of ten, where the digit count changes.
    for (let p = 10; p < 2 ** 53; p *= 10) numbers.push(p - 2, p - 1, p, p + 1);
    const expected = numbers.map(String).join(',') + ',';
    expect(through((s) => numbers.forEach((n) => (s.number(n), s.write(','))))).toBe(expected);
  });

  it('keeps short, long and over-sized pieces in order across chunk boundaries', () => {
    const pieces: string[] = [];
    const rand = rng(5);
    for (let i = 0; i < 3000; i++) pieces.push('x'.repeat(Math.floor(rand() * 2000)) + `|${i}|`);
    pieces.push('y'.repeat(3 << 20), 'tail');
    expect(through((s) => pieces.forEach((p) => s.write(p)))).toBe(pieces.join(''));
  });

  it('copies encoded pieces (every length, four bytes at a time) in order with the rest, across chunk boundaries', () => {
    const rand = rng(6);
    const texts = Array.from({ length: 40 }, (_, i) => `<${'ab"='.repeat(i).slice(0, i)}>`);
    const encoded = texts.map(ascii);
    const expected: string[] = [];
    const out = through((s) => {
      for (let i = 0; i < 60000; i++) {
        const k = Math.floor(rand() * texts.length);
        s.bytes(encoded[k]);
        s.number(i);
        expected.push(texts[k], String(i));
      }
    });
    expect(out).toBe(expected.join(''));
  });

  it('gives a plain sink numbers through String() and encoded pieces as text', () => {
    let text = '';
    const sink = withNumbers({ write: (t) => (text += t) });
    sink.number(2 ** 45 + 3);
    sink.write('!');
    sink.bytes(ascii('" time="'));
    expect(text).toBe(`${2 ** 45 + 3}!" time="`);
  });
});
