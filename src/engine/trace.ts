// The trace format (version 1): one operation a line, `#` comments, decimal numbers. Read as a
// stream of lines, so a trace of millions of operations costs one read buffer. Every operation of
// the format is parsed, including those the engine does not run yet, so a trace is either valid
// everywhere or refused at its first bad line, with the line number.
import * as fs from 'node:fs';
import { InputError } from '../io/block-io.js';
import { U64, parseU64 } from '../pdata/le.js';
import { MAX_DEV_ID } from '../thin/pool.js';

export interface PoolLine {
  kind: 'pool';
  dataBlockSize: number;
  nrDataBlocks: number;
  metadataBlocks?: number;
  zero: boolean;
  discardPassdown: boolean;
  errorIfNoSpace: boolean;
}

export type Op =
  | PoolLine
  | { kind: 'create_thin'; dev: number }
  | { kind: 'create_snap'; dev: number; origin: number }
  | { kind: 'delete'; dev: number }
  | { kind: 'set_transaction_id'; current: U64; next: U64 }
  | { kind: 'reserve_metadata_snap' }
  | { kind: 'release_metadata_snap' }
  | { kind: 'write'; dev: number; block: number; count: number }
  | { kind: 'write_sectors'; dev: number; sector: number; count: number }
  | { kind: 'discard'; dev: number; block: number; count: number }
  | { kind: 'discard_sectors'; dev: number; sector: number; count: number }
  | { kind: 'read'; dev: number; block: number; count: number }
  | { kind: 'commit' }
  | { kind: 'flush'; dev: number }
  | { kind: 'status' }
  | { kind: 'sleep'; seconds: number }
  | { kind: 'external_origin'; dev: number; blocks: number }
  | { kind: 'fail_metadata_writes' }
  | { kind: 'heal_metadata_writes' }
  | { kind: 'merge'; dev: number; origin: number }
  | { kind: 'resize_data'; blocks: number }
  | { kind: 'parallel' }
  | { kind: 'end' };

export type TraceOp = Op & { line: number };

/** A line that is not a valid operation; the message is "file:line: reason". */
export class TraceError extends InputError {
  constructor(readonly source: string, readonly line: number, readonly reason: string) {
    super(`${source}:${line}: ${reason}`);
  }
}

/** Counts of blocks and sectors the engine keeps exact: below 2^53. */
const MAX_NUMBER = Number.MAX_SAFE_INTEGER;

class LineParser {
  private i = 1;
  constructor(private readonly words: string[], private readonly fail: (reason: string) => never) {}

  private next(what: string): string {
    const w = this.words[this.i++];
    if (w === undefined) this.fail(`${this.words[0]}: missing ${what}`);
    return w;
  }

  /** A decimal number up to `max` (default: what the engine keeps exact). */
  number(what: string, max = MAX_NUMBER): number {
    const w = this.next(what);
    const v = parseU64(w);
    if (v === null) this.fail(`${what} '${w}' is not a non-negative decimal number`);
    if (typeof v !== 'number' || v > max) this.fail(`${what} ${w} is too large (at most ${max})`);
    return v;
  }

  u64(what: string): U64 {
    const w = this.next(what);
    const v = parseU64(w);
    if (v === null) this.fail(`${what} '${w}' is not a u64 decimal number`);
    return v;
  }

  dev(what = 'device id'): number {
    return this.number(what, MAX_DEV_ID);
  }

  optional(what: string): number | undefined {
    return this.i < this.words.length ? this.number(what) : undefined;
  }

  positive(what: string): number {
    const n = this.number(what);
    if (n === 0) this.fail(`${what} must be at least 1`);
    return n;
  }

  seconds(): number {
    const w = this.next('seconds');
    if (!/^(\d+(\.\d*)?|\.\d+)$/.test(w)) this.fail(`seconds '${w}' is not a non-negative decimal`);
    return Number(w);
  }

  /** key=value options of the pool line. */
  options(): Map<string, string> {
    const out = new Map<string, string>();
    for (; this.i < this.words.length; this.i++) {
      const m = /^([a-z_]+)=(.*)$/.exec(this.words[this.i]);
      if (!m) this.fail(`pool: '${this.words[this.i]}' is not key=value`);
      if (out.has(m[1])) this.fail(`pool: ${m[1]} given twice`);
      out.set(m[1], m[2]);
    }
    return out;
  }

  end(): void {
    if (this.i < this.words.length) this.fail(`${this.words[0]}: unexpected '${this.words[this.i]}'`);
  }
}

function onOff(value: string | undefined, name: string, fallback: boolean, fail: (r: string) => never): boolean {
  if (value === undefined) return fallback;
  if (value === 'on') return true;
  if (value === 'off') return false;
  return fail(`pool: ${name} must be on or off, not '${value}'`);
}

/** Parses one line (without its comment); null for a blank line. */
export function parseLine(text: string, fail: (reason: string) => never): Op | null {
  const words = splitWords(text);
  if (words.length === 0) return null;
  const p = new LineParser(words, fail);
  let op: Op;
  switch (words[0]) {
    case 'pool': {
      const o = p.options();
      const known = ['data_block_size', 'nr_data_blocks', 'metadata_blocks', 'zero', 'discard_passdown', 'error_if_no_space'];
      for (const k of o.keys()) if (!known.includes(k)) fail(`pool: unknown option ${k}`);
      const num = (k: string): number | undefined => {
        const v = o.get(k);
        if (v === undefined) return undefined;
        const n = parseU64(v);
        if (typeof n !== 'number') fail(`pool: ${k} '${v}' is not a decimal number below 2^53`);
        return n;
      };
      const dataBlockSize = num('data_block_size');
      const nrDataBlocks = num('nr_data_blocks');
      if (dataBlockSize === undefined) fail('pool: data_block_size= is required');
      if (nrDataBlocks === undefined) fail('pool: nr_data_blocks= is required');
      op = {
        kind: 'pool', dataBlockSize, nrDataBlocks, metadataBlocks: num('metadata_blocks'),
        zero: onOff(o.get('zero'), 'zero', true, fail),
        discardPassdown: onOff(o.get('discard_passdown'), 'discard_passdown', true, fail),
        errorIfNoSpace: onOff(o.get('error_if_no_space'), 'error_if_no_space', false, fail),
      };
      return op;
    }
    case 'create_thin':
    case 'delete':
    case 'flush':
      op = { kind: words[0], dev: p.dev() };
      break;
    case 'create_snap':
    case 'merge':
      op = { kind: words[0], dev: p.dev(), origin: p.dev('origin device id') };
      break;
    case 'set_transaction_id':
      op = { kind: 'set_transaction_id', current: p.u64('current transaction id'), next: p.u64('new transaction id') };
      break;
    case 'reserve_metadata_snap':
    case 'release_metadata_snap':
    case 'commit':
    case 'status':
    case 'fail_metadata_writes':
    case 'heal_metadata_writes':
    case 'parallel':
    case 'end':
      op = { kind: words[0] };
      break;
    case 'write':
    case 'discard':
    case 'read': {
      const dev = p.dev();
      const block = p.number('block');
      const count = p.optional('count') ?? 1;
      if (count === 0) fail(`${words[0]}: count must be at least 1`);
      op = { kind: words[0], dev, block, count };
      break;
    }
    case 'write_sectors':
    case 'discard_sectors':
      op = { kind: words[0], dev: p.dev(), sector: p.number('sector'), count: p.positive('sector count') };
      break;
    case 'sleep':
      op = { kind: 'sleep', seconds: p.seconds() };
      break;
    case 'external_origin':
      op = { kind: 'external_origin', dev: p.dev(), blocks: p.number('blocks') };
      break;
    case 'resize_data':
      op = { kind: 'resize_data', blocks: p.number('blocks') };
      break;
    default:
      return fail(`unknown operation '${words[0]}'`);
  }
  p.end();
  return op;
}

/** The words of a line, split on spaces and tabs (a hand loop: a regex split per line is slow). */
function splitWords(text: string): string[] {
  const words: string[] = [];
  let start = -1;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 32;
    const space = c === 32 || c === 9 || c === 13 || c === 11 || c === 12;
    if (space) {
      if (start >= 0) {
        words.push(text.slice(start, i));
        start = -1;
      }
    } else if (start < 0) {
      start = i;
    }
  }
  return words;
}

/**
 * The common lines of large traces (`write D B [N]`, `read`, `discard`, `commit`) parsed without
 * splitting into words: null for anything else, or anything unusual, which the full parser then
 * handles (and reports).
 */
function parseFast(text: string): Op | null {
  if (text === 'commit') return { kind: 'commit' };
  let kind: 'write' | 'read' | 'discard';
  let i: number;
  if (text.startsWith('write ')) {
    kind = 'write';
    i = 6;
  } else if (text.startsWith('read ')) {
    kind = 'read';
    i = 5;
  } else if (text.startsWith('discard ')) {
    kind = 'discard';
    i = 8;
  } else {
    return null;
  }
  const numbers = [0, 0, 1];
  let n = 0;
  while (n < 3) {
    const start = i;
    let v = 0;
    for (; i < text.length; i++) {
      const c = text.charCodeAt(i) - 48;
      if (c < 0 || c > 9) break;
      v = v * 10 + c;
    }
    // Up to 15 digits, so exact; a longer number or anything else goes the slow way.
    if (i === start || i - start > 15) return null;
    numbers[n++] = v;
    if (i === text.length) break;
    if (text.charCodeAt(i) !== 32) return null;
    i++;
  }
  if (i !== text.length || n < 2 || numbers[0] > MAX_DEV_ID || numbers[2] === 0) return null;
  return { kind, dev: numbers[0], block: numbers[1], count: numbers[2] };
}

const CHUNK = 1 << 16;

/** What can be in flight at once, between `parallel` and `end`: IO, and what a pool does meanwhile. */
const IN_FLIGHT = new Set<Op['kind']>(['write', 'write_sectors', 'read', 'discard', 'discard_sectors', 'flush', 'commit', 'status', 'create_snap']);

/**
 * The operations of a trace file, in order, read in chunks. Structure is checked as it goes:
 * `pool` only first, `parallel` ... `end` paired and not nested, and only what can be in flight
 * between them.
 */
export function* readTrace(path: string, onProgress?: (bytes: number) => void): Generator<TraceOp> {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new InputError(`${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (e as Error).message}`);
  }
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    let rest = '';
    let lineNo = 0;
    let bytes = 0;
    let inParallel = 0;
    let first = true;
    const fail = (reason: string): never => {
      throw new TraceError(path, lineNo, reason);
    };
    const parse = (text: string): TraceOp | null => {
      lineNo++;
      const hash = text.indexOf('#');
      const op = (parseFast(text) ?? parseLine(hash >= 0 ? text.slice(0, hash) : text, fail)) as TraceOp | null;
      if (!op) return null;
      if (op.kind === 'pool' && !first) fail('pool must be the first operation');
      if (op.kind === 'parallel') {
        if (inParallel) fail('parallel inside parallel');
        inParallel = lineNo;
      } else if (op.kind === 'end') {
        if (!inParallel) fail('end without parallel');
        inParallel = 0;
      } else if (inParallel && !IN_FLIGHT.has(op.kind)) {
        fail(`${op.kind} cannot be in flight: between parallel and end go only ${[...IN_FLIGHT].join(', ')}`);
      }
      first = false;
      op.line = lineNo;
      return op;
    };
    for (;;) {
      const n = fs.readSync(fd, buf, 0, CHUNK, null);
      if (n === 0) break;
      bytes += n;
      const text = rest + buf.toString('latin1', 0, n);
      const lines = text.split('\n');
      rest = lines.pop()!;
      for (const l of lines) {
        const op = parse(l);
        if (op) yield op;
      }
      onProgress?.(bytes);
    }
    const last = rest.length > 0 ? parse(rest) : null;
    if (last) yield last;
    if (inParallel) throw new TraceError(path, inParallel, 'parallel without end');
  } finally {
    fs.closeSync(fd);
  }
}
