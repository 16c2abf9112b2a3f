/**
 * A plain text table: each column padded to its widest cell, two spaces apart, trailing spaces
 * trimmed. `rule` puts a line of dashes under the headers (Copr's info table has one).
 */
export function textTable(headers: string[], rows: string[][], options: { rule?: boolean } = {}): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  const rule = options.rule ? [line(widths.map((w) => '-'.repeat(w)))] : [];
  return [line(headers), ...rule, ...rows.map(line)].join('\n');
}
