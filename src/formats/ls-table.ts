// thin_ls's output, byte for byte as the reference thin_ls 0.9.0 prints it: a table whose columns
// are right-aligned to their widest cell, every cell followed by one space, every row by a
// newline; sizes in the reference's units (the largest of KiB, MiB, ... that keeps the number
// above 8192 before rounding, as 0.9.0's format_disk_unit does).
import { TextSink } from './output.js';

const UNITS = ['', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB', 'ZiB', 'YiB'];

/** A size in bytes as thin_ls shows it: "0", "512", "64KiB", "670MiB", ... */
export function formatDiskUnit(bytes: bigint): string {
  let n = bytes;
  let unit = 0;
  for (; n > 1048576n; unit++) n /= 1024n;
  if (n > 8192n) {
    // Rounded to nearest, halves away from zero (n is at most 2^20 here, so the double is exact).
    n = BigInt(Math.round(Number(n) / 1024));
    unit++;
  }
  return `${n}${UNITS[unit]}`;
}

/** Rows of cells, rendered once every row is in (the widths depend on all of them). */
export class TableWriter {
  private readonly rows: string[][] = [];

  row(cells: string[]): void {
    this.rows.push(cells);
  }

  render(sink: TextSink): void {
    const widths: number[] = [];
    for (const row of this.rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
    for (const row of this.rows) {
      if (row.length === 0) continue;
      sink.write(`${row.map((cell, i) => `${cell.padStart(widths[i])} `).join('')}\n`);
    }
  }
}
