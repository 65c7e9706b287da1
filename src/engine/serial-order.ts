// The oracle for IO in flight: whatever order the scheduler ran their steps in, the operations
// on one virtual block must leave it as some serial order of them would, every read returning
// what the block held at its place in that order. Plain rules on one block's content, nothing of
// the pool: a write lays its sectors over what the block holds (over the provisioning content,
// zeroes or the external origin's, when unmapped); a discard unmaps; a read sees the content, or
// the unmapped content (zeroes, the origin's); a snapshot copies its origin's state and comes
// before any IO to the new device.
import { Content, UNKNOWN, ZEROES, overlay, segments } from './model.js';

export interface BlockOp {
  kind: 'write' | 'read' | 'discard' | 'snapshot';
  line: number;
  /** The device it goes to (a snapshot: the new device). */
  dev: number;
  /** Sectors of the block it covers (writes and reads). */
  begin: number;
  end: number;
  /** What a read returned. */
  result?: Content;
  /** A snapshot's origin. */
  origin?: number;
}

export interface BlockState {
  mapped: boolean;
  /** What it holds when mapped. */
  content: Content;
}

/** What a device's unmapped block reads as, and what a partial write to it lands on. */
export interface UnmappedContent {
  read: Content;
  provision: Content;
}

/**
 * An order of `ops` that takes the block from `initial` (each device's state before, absent for
 * devices created by a snapshot among the ops) to `final`, every read seeing its result; null if
 * there is none.
 */
export function serialOrder(
  sectorsPerBlock: number,
  initial: ReadonlyMap<number, BlockState>,
  unmapped: ReadonlyMap<number, UnmappedContent>,
  ops: readonly BlockOp[],
  final: ReadonlyMap<number, BlockState>,
): BlockOp[] | null {
  const spb = sectorsPerBlock;
  const createdBy = new Map<number, number>();
  ops.forEach((op, i) => {
    if (op.kind === 'snapshot') createdBy.set(op.dev, i);
  });
  const dead = new Set<string>();
  const order: BlockOp[] = [];

  const apply = (op: BlockOp, states: Map<number, BlockState>): Map<number, BlockState> | null => {
    const next = new Map(states);
    const s = states.get(op.dev);
    switch (op.kind) {
      case 'snapshot': {
        const o = states.get(op.origin!);
        if (o) next.set(op.dev, o);
        else next.delete(op.dev);
        return next;
      }
      case 'discard':
        if (s) next.set(op.dev, { mapped: false, content: ZEROES });
        return next;
      case 'write': {
        if (!s) return null;
        const base = s.mapped ? s.content : unmapped.get(op.dev)!.provision;
        const content = op.begin === 0 && op.end === spb ? op.line : overlay(segments(base, spb), op.begin, op.end, op.line, spb);
        next.set(op.dev, { mapped: true, content });
        return next;
      }
      case 'read': {
        if (!s) return null;
        const holds = s.mapped ? s.content : unmapped.get(op.dev)!.read;
        return sameContent(op.result!, holds, op.begin, op.end, spb) ? states : null;
      }
    }
  };

  const search = (done: number, states: Map<number, BlockState>): boolean => {
    if (order.length === ops.length) {
      for (const [dev, want] of final) if (!sameState(states.get(dev), want, spb)) return false;
      return true;
    }
    const key = `${done}|${stateKey(states)}`;
    if (dead.has(key)) return false;
    for (let i = 0; i < ops.length; i++) {
      if (done & (1 << i)) continue;
      const op = ops[i];
      const creator = createdBy.get(op.dev);
      if (creator !== undefined && creator !== i && !(done & (1 << creator))) continue;
      const next = apply(op, states);
      if (!next) continue;
      order.push(op);
      if (search(done | (1 << i), next)) return true;
      order.pop();
    }
    dead.add(key);
    return false;
  };

  if (ops.length > 30) throw new Error(`serial order: ${ops.length} operations on one block are more than the search takes`);
  return search(0, new Map(initial)) ? order : null;
}

function sameState(a: BlockState | undefined, b: BlockState, spb: number): boolean {
  if (!a) return false;
  if (a.mapped !== b.mapped) return false;
  return !a.mapped || sameContent(a.content, b.content, 0, spb, spb);
}

/** Whether two contents agree on sectors [begin, end); UNKNOWN agrees with anything. */
function sameContent(a: Content, b: Content, begin: number, end: number, spb: number): boolean {
  if (typeof a === 'number' && typeof b === 'number') return a === b || a === UNKNOWN || b === UNKNOWN;
  const sa = segments(a, spb);
  const sb = segments(b, spb);
  let i = 0;
  let j = 0;
  for (let s = begin; s < end; ) {
    while (sa[i].end <= s) i++;
    while (sb[j].end <= s) j++;
    const la = sa[i].line;
    const lb = sb[j].line;
    if (la !== lb && la !== UNKNOWN && lb !== UNKNOWN) return false;
    s = Math.min(sa[i].end, sb[j].end, end);
  }
  return true;
}

function stateKey(states: Map<number, BlockState>): string {
  return [...states].sort((x, y) => x[0] - y[0]).map(([dev, s]) => `${dev}:${s.mapped ? JSON.stringify(s.content) : '-'}`).join(',');
}

/** A block state for messages: unmapped, or what each run of sectors holds. */
export function describeState(s: BlockState | undefined, spb: number): string {
  if (!s) return 'no such device';
  if (!s.mapped) return 'unmapped';
  return segments(s.content, spb).map((g) => `${g.line === ZEROES ? 'zeroes' : g.line === UNKNOWN ? 'unknown data' : `line ${g.line}`}${g.begin === 0 && g.end === spb ? '' : ` in sectors ${g.begin}-${g.end - 1}`}`).join(', ');
}
