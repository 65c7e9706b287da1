// One fuzz case's runs and what they showed: our tools and the reference tools run as child
// processes with a deadline, what breaks a property (a finding) and what is only for review.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ourTool, referenceTool, upstreamTool } from '../reference.js';
import { ImageMap } from './image-map.js';
import { ProcessResult, crashOf, runProcess, userText } from './processes.js';
import { Rand } from './random.js';

/** Breaks a property: the campaign fails. */
export const FINDING_KINDS = [
  'crash', 'hang', 'exit-code', 'input-changed', 'output-rejected', 'looser', 'differs', 'refused',
  'unrestorable', 'recovered-fewer', 'mappings-changed', 'not-one-line', 'restore-looser', 'size-differs', 'data-lost',
] as const;
export type FindingKind = (typeof FINDING_KINDS)[number];

/** Allowed, but counted and listed so a person can look at them. */
export const REVIEW_KINDS = ['stricter', 'stricter-than-1.x', 'looser-than-1.x', 'looser-than-0.9.0', 'reference-crashed'] as const;
export type ReviewKind = (typeof REVIEW_KINDS)[number];

export interface Finding<K = FindingKind> {
  kind: K;
  detail: string;
}

/** The sizes and facts of the unmutated source a case's input came from. */
export interface SourceInfo {
  name: string;
  /** Bytes of metadata the source occupies: outputs of repair and restore get as much. */
  metadataBytes: number;
  map?: ImageMap;
  /** The source's mappings ("dev:thin:data"), when the reference could dump it. */
  truth?: () => ReadonlySet<string> | undefined;
}

/**
 * Outputs get room to spare: a flat restore or repair of metadata whose snapshots shared their
 * trees needs more blocks than the source, and a refusal for want of room shows nothing.
 */
const OUTPUT_SCALE = 4;
const MIN_OUTPUT_BYTES = 64 * 1024 * 1024;

/** One case's runs and what they showed. */
export class CaseRun {
  readonly findings: Finding[] = [];
  readonly reviews: Finding<ReviewKind>[] = [];
  readonly runs: ProcessResult[] = [];
  /** Mappings recovered, when a repair case had a reference repair to compare with. */
  recovered?: { ours: number; reference: number };
  /** Our tool's exit status in this case (the first of our runs). */
  ourStatus?: number | null;

  constructor(
    readonly dir: string,
    private readonly timeoutMs: number,
    private readonly verbose?: (line: string) => void,
  ) {}

  file(name: string): string {
    return path.join(this.dir, name);
  }

  /** A new sparse file of `bytes` for a tool to write metadata into. */
  emptyOutput(name: string, bytes: number): string {
    const p = this.file(name);
    fs.writeFileSync(p, '');
    fs.truncateSync(p, Math.max(bytes * OUTPUT_SCALE, MIN_OUTPUT_BYTES));
    return p;
  }

  find(kind: FindingKind, detail: string): void {
    this.findings.push({ kind, detail: this.relative(detail) });
  }

  review(kind: ReviewKind, detail: string): void {
    this.reviews.push({ kind, detail: this.relative(detail) });
  }

  /** Paths in the case's directory by their names, so alike findings of different cases read alike. */
  private relative(text: string): string {
    return text.split(`${this.dir}${path.sep}`).join('');
  }

  private async run(file: string, args: string[], argv0?: string[], env?: NodeJS.ProcessEnv): Promise<ProcessResult> {
    const r = await runProcess(file, args, { timeoutMs: this.timeoutMs, argv0, env });
    this.runs.push(r);
    this.verbose?.(`$ ${r.command}\n  -> ${r.timedOut ? 'TIMED OUT' : r.signal ?? r.status} in ${r.ms} ms` +
      (r.stderr.trim() ? `\n  stderr: ${r.stderr.trim().split('\n').slice(0, 12).join('\n          ')}` : ''));
    return r;
  }

  /**
   * Runs one of our tools, with stacks shown (THIN_TOOLS_DEBUG) so a bug is told from an error
   * meant for the user. Crashes, hangs and exit codes other than 0 and 1 are findings, except
   * an exit code the reference gives for the same input (`referenceStatus`).
   */
  async ours(tool: string, args: string[], referenceStatus?: number | null): Promise<ProcessResult> {
    const r = await this.run(process.execPath, args, [ourTool(tool)], { ...process.env, THIN_TOOLS_DEBUG: '1' });
    if (this.ourStatus === undefined) this.ourStatus = r.status;
    const what = `${tool} ${args.map((a) => path.basename(a)).join(' ')}`;
    if (r.timedOut) this.find('hang', `${what}: no exit within ${this.timeoutMs} ms`);
    const crash = crashOf(r);
    if (crash) this.find('crash', `${what}: ${crash}`);
    else if (!r.timedOut && r.status !== 0 && r.status !== 1 && r.status !== referenceStatus) {
      this.find('exit-code', `${what}: exit ${r.status} (the reference: ${referenceStatus ?? 'not run'})`);
    }
    return r;
  }

  /** Runs a 0.9.0 reference tool; its own crashes are only noted. */
  async reference(tool: string, args: string[]): Promise<ProcessResult> {
    const r = await this.run(referenceTool(tool), args);
    if (r.signal || r.timedOut) this.review('reference-crashed', `0.9.0 ${tool}: ${r.timedOut ? 'timed out' : r.signal}`);
    return r;
  }

  async upstream(tool: string, args: string[]): Promise<ProcessResult> {
    const r = await this.run(upstreamTool(tool), args);
    if (r.signal || r.timedOut) this.review('reference-crashed', `1.x ${tool}: ${r.timedOut ? 'timed out' : r.signal}`);
    return r;
  }

  /** The input's bytes must be what they were before our tool ran. */
  unchanged(file: string, sha256: string, tool: string): void {
    if (fileHash(file) !== sha256) this.find('input-changed', `${tool} changed its input ${path.basename(file)}`);
  }

  /**
   * On metadata 0.9.0 passes, one of our tools failing or printing otherwise than 0.9.0 is a
   * finding, unless our own check fails the metadata too (stricter than 0.9.0: for review).
   */
  async unlessOurCheckFails(input: string, checkOpts: string[], kind: FindingKind, detail: string): Promise<void> {
    const check = await this.ours('thin_check', [...checkOpts, input]);
    if (failed(check)) this.review('stricter', `${detail}, and our thin_check fails it (${lastLines(userText(check.stderr))})`);
    else this.find(kind, detail);
  }

  /** Metadata one of our tools wrote must pass both reference checkers, and ours. */
  async accepted(file: string, by: string): Promise<void> {
    const ref = await this.reference('thin_check', [file]);
    if (ref.status !== 0 && !ref.signal) this.find('output-rejected', `0.9.0 thin_check rejects what ${by} wrote: ${lastLines(ref.stderr)}`);
    const up = await this.upstream('thin_check', [file]);
    if (up.status !== 0 && !up.signal) this.find('output-rejected', `1.x thin_check rejects what ${by} wrote: ${lastLines(up.stderr)}`);
    const ours = await this.ours('thin_check', [file]);
    if (failed(ours)) this.find('output-rejected', `our thin_check rejects what ${by} wrote: ${lastLines(userText(ours.stderr))}`);
  }
}

export function fileHash(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

export function lastLines(text: string): string {
  return text.trim().split('\n').slice(-3).join(' | ');
}

export const failed = (r: ProcessResult): boolean => r.status !== 0 && !r.signal && !r.timedOut;
export const passed = (r: ProcessResult): boolean => r.status === 0;


export interface BinaryCase {
  c: CaseRun;
  input: string;
  sha256: string;
  source: SourceInfo;
  rand: Rand;
}
