// The command line both pack tools share: they take the same options and differ only in which
// way the blocks go.
import { PackFormatError, PackProgress } from '../tools/pack.js';
import { Progress, UsageError, newProgram, progressBar, runTool } from './common.js';

interface PackCommand {
  name: string;
  about: string;
  inputHelp: string;
  outputHelp: string;
  barLabel: string;
  run: (input: string, output: string, opts: { force?: boolean; onProgress?: PackProgress }) => unknown;
}

export function runPackCommand(cmd: PackCommand): void {
  void runTool(cmd.name, (argv) => {
    const program = newProgram(cmd.name, cmd.about)
      .requiredOption('-i, --input <file>', cmd.inputHelp)
      .requiredOption('-o, --output <file>', cmd.outputHelp)
      .option('-f, --force', 'overwrite an output that already holds metadata')
      .option('-q, --quiet', 'no progress bar');
    program.parse(argv, { from: 'user' });
    const o = program.opts<{ input: string; output: string; force?: boolean; quiet?: boolean }>();
    let bar: Progress | undefined;
    try {
      cmd.run(o.input, o.output, {
        force: o.force,
        onProgress: (done, total) => {
          bar ??= progressBar(cmd.barLabel, total, !!o.quiet);
          bar.update(done);
        },
      });
    } catch (e) {
      if (e instanceof PackFormatError) throw new UsageError(e.message);
      throw e;
    } finally {
      bar?.stop();
    }
    return 0;
  });
}
