import { pino } from 'pino';

/** A logger at info, as in production, whose lines go to /dev/null: logging costs what it costs there. */
export function discardingLogger() {
  return pino({ level: 'info' }, pino.destination({ dest: '/dev/null', sync: false }));
}

/** The p-th percentile (0-100) of an ascending array of samples. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** A Markdown table, each column as wide as its widest cell; the first column left-aligned, the others right. */
export function markdownTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}
