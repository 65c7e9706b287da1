// Runs the tools of a fuzz case as child processes, with a deadline (a hang is a finding), and
// tells a crash from an error the user was meant to see.
import { spawn } from 'node:child_process';

export interface ProcessResult {
  /** The command line, for the report and a replay by hand. */
  command: string;
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

const MAX_OUTPUT = 512 * 1024 * 1024;

export function runProcess(
  file: string,
  args: string[],
  opts: { timeoutMs: number; env?: NodeJS.ProcessEnv; argv0?: string[] },
): Promise<ProcessResult> {
  const argv = [...(opts.argv0 ?? []), ...args];
  const command = [file, ...argv].map((a) => (/^[\w./=:,+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      outBytes += d.length;
      if (outBytes <= MAX_OUTPUT) out.push(d);
    });
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({
        command,
        status,
        signal,
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err).toString('utf8'),
        timedOut,
        ms: Date.now() - start,
      });
    });
  });
}

/** Error classes JavaScript throws on a bug, never on purpose in our tools. */
const BUG_CLASSES = /^(TypeError|RangeError|ReferenceError|SyntaxError|EvalError|URIError|AggregateError)\b/;
/** Texts of engine and Node errors that leak through a one-line message when a bug is caught as damage. */
const BUG_TEXTS = [
  /The value of "[^"]*" is out of range/,
  /outside buffer bounds/,
  /Cannot read properties of/,
  /is not a function/,
  /is not iterable/,
  /Maximum call stack size exceeded/,
  /Invalid (array|typed array|string) length/,
  /Array buffer allocation failed/,
  /Cannot (convert|mix) BigInt/,
  /cannot be converted to a BigInt/,
  /is not defined/,
  /\bundefined\b(?! def\b)/, // (our "ref to undefined def" is a message, not a bug)
  /\bNaN\b/,
  /\[object Object\]/,
  /\[ERR_[A-Z_]+\]/,
];

/**
 * Why `r` (one of our tools, run with THIN_TOOLS_DEBUG=1 so a caught error's stack is shown)
 * crashed, or null: killed by a signal, out of memory, an uncaught exception, a bug's error
 * class in a stack, or a bug's text in what the user reads.
 */
export function crashOf(r: ProcessResult): string | null {
  if (r.timedOut) return null;
  if (r.signal) return `killed by ${r.signal}`;
  const err = r.stderr;
  if (/FATAL ERROR|heap out of memory/.test(err)) return `out of memory: ${firstLine(err, /FATAL ERROR.*/)}`;
  if (/^Node\.js v\d/m.test(err)) return `uncaught exception: ${firstLine(err, /^\w*Error\b.*$/m) ?? err.trim().split('\n')[0]}`;
  const lines = err.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const header = /^(\w*Error)(?: \[(\w+)\])?: /.exec(lines[i]);
    if (!header || !lines.slice(i + 1).some((l) => /^\s+at /.test(l))) continue;
    if (BUG_CLASSES.test(header[1]) || header[2]?.startsWith('ERR_')) return `${lines[i]}\n${stackTop(lines, i)}`;
  }
  const visible = userText(err);
  for (const re of BUG_TEXTS) {
    const m = re.exec(visible);
    if (m) return `internal error text "${m[0]}" in: ${firstLine(visible, new RegExp(`.*${escape(m[0])}.*`))}`;
  }
  if (/^\s+at /m.test(visible)) return `stack trace shown: ${visible.trim().split('\n')[0]}`;
  return null;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function firstLine(text: string, re: RegExp): string | undefined {
  return re.exec(text)?.[0];
}

function stackTop(lines: string[], header: number): string {
  return lines.slice(header + 1).filter((l) => /^\s+at /.test(l)).slice(0, 4).join('\n');
}

/**
 * What a user would have read on stderr: the output with the stacks THIN_TOOLS_DEBUG adds taken
 * out (a stack is its "Name: message" header, any continuation lines, and its "at" lines).
 */
export function userText(stderr: string): string {
  const lines = stderr.split('\n');
  const keep: boolean[] = lines.map(() => true);
  for (let i = 0; i < lines.length; i++) {
    if (!/^\w*Error(?: \[\w+\])?: /.test(lines[i])) continue;
    let j = i + 1;
    while (j < lines.length && !/^\s+at /.test(lines[j]) && j - i < 20) j++;
    if (j >= lines.length || !/^\s+at /.test(lines[j])) continue;
    while (j < lines.length && /^\s+at /.test(lines[j])) j++;
    for (let k = i; k < j; k++) keep[k] = false;
    i = j - 1;
  }
  return lines.filter((_, i) => keep[i]).join('\n');
}
