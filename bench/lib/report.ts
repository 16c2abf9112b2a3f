/**
 * The benchmark's report: its rows, when and on what machine they were measured, and the one
 * Markdown rendering that both `npm run bench -- --markdown` and docs/performance.md use.
 */
import { execFileSync } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { markdownTable } from './measure.js';

export interface BenchRow {
  part: string;
  figure: string;
  target: string;
  measured: string;
  result: 'PASS' | 'MISS' | 'limit' | 'info' | 'not measured';
}

/** Where the figures were measured; null for what a run did not record. */
export interface BenchMachine {
  cores: number | null;
  cpuModel: string | null;
  memoryBytes: number | null;
  node: string | null;
  redis: string | null;
}

export interface BenchReport {
  /** When the run ended, ISO 8601 (UTC). */
  date: string;
  machine: BenchMachine;
  /** Wall time of the whole run and of each part, seconds (null when not recorded). */
  seconds: number | null;
  timings: Record<string, number>;
  errors: string[];
  rows: BenchRow[];
  /** Said above the table, for figures with a history (such as rows carried over from an older run). */
  note?: string;
}

/** The version of the redis-server the parts start, or null when it does not run. */
function redisServerVersion(): string | null {
  try {
    const out = execFileSync('redis-server', ['--version'], { encoding: 'utf8', timeout: 5000 });
    return /v=(\S+)/.exec(out)?.[1] ?? null;
  } catch {
    return null;
  }
}

/** This machine, as the benchmark's header names it. */
export function machineInfo(): BenchMachine {
  const list = cpus();
  return {
    cores: list.length,
    cpuModel: list[0]?.model.trim().replace(/\s+/g, ' ') ?? null,
    memoryBytes: totalmem(),
    node: process.version,
    redis: redisServerVersion(),
  };
}

const unknown = 'not recorded';

/** "2026-12-02 01:36 UTC" from an ISO date. */
function utcMinute(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 16)} UTC`;
}

/** The header line: date and machine. */
export function renderBenchHeader(report: BenchReport): string {
  const m = report.machine;
  const cores = m.cores === null ? `cores ${unknown}` : `${m.cores} cores`;
  const cpu = `CPU ${m.cpuModel ?? unknown}`;
  const memory = m.memoryBytes === null ? `memory ${unknown}` : `${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB memory`;
  const node = `Node ${m.node ?? unknown}`;
  const redis = `Redis ${m.redis ?? unknown}`;
  const took = report.seconds === null ? '' : `; ${Math.round(report.seconds)} s in all`;
  const parts = Object.entries(report.timings);
  const each = parts.length ? ` (${parts.map(([k, v]) => `${k} ${Math.round(v)} s`).join(', ')})` : '';
  return `Measured ${utcMinute(report.date)} on ${cores}, ${cpu}, ${memory}, ${node}, ${redis}${took}${each}.`;
}

/** The whole Markdown block: header, note, table, errors. Deterministic for one report. */
export function renderBenchMarkdown(report: BenchReport): string {
  const lines = [renderBenchHeader(report), ''];
  if (report.note) lines.push(`> ${report.note}`, '');
  const cell = (text: string) => text.replace(/\|/g, '\\|');
  lines.push(markdownTable(['part', 'figure', 'target', 'measured', 'result'], report.rows.map((r) => [r.part, r.figure, r.target, r.measured, r.result].map(cell))));
  for (const e of report.errors) lines.push('', `error: ${e}`);
  return lines.join('\n');
}

/** Checks the shape of a saved report (a file someone may have edited by hand). */
export function parseBenchReport(text: string): BenchReport {
  const r = JSON.parse(text) as Partial<BenchReport>;
  if (typeof r.date !== 'string' || !r.machine || !Array.isArray(r.rows)) throw new Error('a bench report needs date, machine and rows');
  for (const row of r.rows) {
    for (const k of ['part', 'figure', 'target', 'measured', 'result'] as const)
      if (typeof row[k] !== 'string') throw new Error(`bench row ${JSON.stringify(row)}: ${k} is not a string`);
  }
  return { seconds: null, timings: {}, errors: [], ...r } as BenchReport;
}
