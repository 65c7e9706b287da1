// What a replay reports: problems, each at a trace line.

/**
 * refused: the pool refused an operation, as the kernel would (and the model agreed); mismatch:
 * the pool and the model disagree; deadlock: IO in flight that can never finish; check: the
 * metadata fails thin_check; unsupported: the trace asks for what the engine does not run.
 */
export type ProblemKind = 'refused' | 'mismatch' | 'deadlock' | 'unsupported' | 'check';

export interface Problem {
  line: number;
  kind: ProblemKind;
  message: string;
}

/** A problem at a trace line, thrown to end the operation (or one bio of it). */
export class LineProblem extends Error {
  constructor(readonly kind: ProblemKind, message: string) {
    super(message);
  }
}

export function mismatch(message: string): never {
  throw new LineProblem('mismatch', message);
}

export function refused(message: string): never {
  throw new LineProblem('refused', message);
}
