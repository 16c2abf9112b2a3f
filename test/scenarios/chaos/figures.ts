// The chaos suite's figures and their table: no vitest or process helpers here, so that the
// suite's global setup (summary.setup.ts) can import it.

/** CHAOS_SCALE=N runs every scenario N times longer (more cycles, more kills). Default 1: CI size. */
export const CHAOS_SCALE = Math.max(1, Number(process.env.CHAOS_SCALE ?? 1) || 1);

/** One scenario's figures: what it tried, lost, doubled and how long recovery took. */
export interface Figures {
  scenario: string;
  tried: number;
  lost: number;
  doubled: number;
  /** Time to recover (ms), or null when the scenario has no fault to recover from. */
  recoverMs: number | null;
  /** Anything else worth a column: leaked machines, limit breaches, seconds taken. */
  notes?: string;
}

/** The summary table of the figures collected (markdown, as the table in docs/reliability.md). */
export function figuresTable(rows: readonly Figures[], scale: number): string {
  const head = `| Scenario (CHAOS_SCALE=${scale}) | Tried | Lost | Doubled | Time to recover | Notes |`;
  const lines = rows.map((f) => `| ${f.scenario} | ${f.tried} | ${f.lost} | ${f.doubled} | ${f.recoverMs === null ? '-' : `${(f.recoverMs / 1000).toFixed(1)} s`} | ${f.notes ?? ''} |`);
  return [head, '|---|---:|---:|---:|---:|---|', ...lines].join('\n');
}
