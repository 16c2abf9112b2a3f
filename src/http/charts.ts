/**
 * The pool page's small charts of the last hour, as plain inline SVG (no charting library): one
 * polyline per series over a fixed time window, scaled to the window's largest value.
 */
import type { HistorySample } from '../reconcile/history.js';
import { ALL_VM_STATES, type VmState } from '../pool/types.js';

const W = 240;
const H = 64;
/** Room for the title line above the plot. */
const TOP = 14;

export interface ChartSeries {
  name: string;
  color: string;
  /** [epoch ms, value]; a null value is a gap. */
  points: readonly (readonly [number, number | null])[];
}

/** Colours of the states, as the page's state badges (darker, for lines). */
export const STATE_COLORS: Record<VmState, string> = {
  got_ip: '#8e5cc7',
  check_health: '#c99a00',
  check_health_failed: '#c0392b',
  ready: '#2e9a48',
  in_use: '#3a6ea5',
  terminating: '#888888',
};

const esc = (value: string) => value.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const fmt = (n: number) => (Number.isInteger(n) ? String(n) : n < 10 ? n.toFixed(2) : n.toFixed(1));

/** One chart: the series as polylines over [from, to], with its title, the latest values and the scale. */
export function lineChart(options: { id: string; title: string; unit?: string; from: number; to: number; series: readonly ChartSeries[] }): string {
  const { from, to, series } = options;
  const unit = options.unit ?? '';
  const values = series.flatMap((s) => s.points.map(([, v]) => v)).filter((v): v is number => v !== null);
  const max = Math.max(1, ...values);
  const x = (t: number) => ((Math.min(Math.max(t, from), to) - from) / Math.max(1, to - from)) * W;
  const y = (v: number) => H - 2 - (v / max) * (H - TOP - 4);
  const lines = series.map((s) => {
    // A gap (null) ends a run; each run is its own polyline.
    const runs: string[][] = [[]];
    for (const [t, v] of s.points) {
      if (v === null) runs.push([]);
      else runs.at(-1)!.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    const last = [...s.points].reverse().find(([, v]) => v !== null)?.[1] ?? null;
    return runs
      .filter((r) => r.length > 0)
      .map((r) => {
        const points = r.length === 1 ? `${r[0]} ${(Number(r[0]!.split(',')[0]) + 2).toFixed(1)},${r[0]!.split(',')[1]}` : r.join(' ');
        return `<polyline data-series="${esc(s.name)}" data-last="${last === null ? '' : fmt(last)}" points="${points}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`;
      })
      .join('');
  });
  const latest = series
    .map((s) => {
      const last = [...s.points].reverse().find(([, v]) => v !== null)?.[1];
      return last === undefined ? null : `${s.name} ${fmt(last!)}${unit}`;
    })
    .filter((t): t is string => t !== null)
    .join(', ');
  const label = `${options.title}, last hour: ${latest || 'no data'}`;
  return (
    `<svg class="chart" data-chart="${esc(options.id)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(label)}">` +
    `<title>${esc(label)}</title>` +
    `<rect x="0" y="${TOP}" width="${W}" height="${H - TOP}" fill="#fbfcfd" stroke="#e3e6eb"/>` +
    `<text x="2" y="10" font-size="10" fill="#445">${esc(options.title)} · last hour</text>` +
    `<text x="${W - 2}" y="10" font-size="10" fill="#889" text-anchor="end">max ${fmt(max)}${esc(unit)}</text>` +
    lines.join('') +
    '</svg>'
  );
}

/** A group's three charts over the hour before `now`: VMs per state, waiting requests, acquire wait p95. */
export function groupCharts(samples: readonly HistorySample[], now: number): string {
  const from = now - 3_600_000;
  const inWindow = samples.filter((s) => s.t >= from && s.t <= now);
  if (inWindow.length === 0) return '<p class="charts none">no history yet: reconcile takes a sample a minute</p>';
  const states = ALL_VM_STATES.filter((state) => inWindow.some((s) => (s.counts[state] ?? 0) > 0));
  const stateSeries = (states.length ? states : (['ready'] as VmState[])).map((state) => ({
    name: state,
    color: STATE_COLORS[state],
    points: inWindow.map((s) => [s.t, s.counts[state] ?? 0] as const),
  }));
  const legend = stateSeries.map((s) => `<span class="legend" style="border-color:${s.color}">${esc(s.name)}</span>`).join(' ');
  return (
    '<div class="charts">' +
    `<figure>${lineChart({ id: 'states', title: 'VMs per state', from, to: now, series: stateSeries })}<figcaption>${legend}</figcaption></figure>` +
    `<figure>${lineChart({ id: 'waiting', title: 'waiting requests', from, to: now, series: [{ name: 'waiting', color: '#b35c00', points: inWindow.map((s) => [s.t, s.waiting] as const) }] })}</figure>` +
    `<figure>${lineChart({ id: 'acquire-p95', title: 'acquire wait p95 (pool)', unit: ' s', from, to: now, series: [{ name: 'p95', color: '#5a3fa0', points: inWindow.map((s) => [s.t, s.acquireP95] as const) }] })}</figure>` +
    '</div>'
  );
}
