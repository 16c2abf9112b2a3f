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
  /** The bench part (its `--only` name) that measured the row; absent in reports saved before it was recorded. */
  source?: string;
}

/** Parts measured by a later run (`--only ... --merge FILE`) than the rest of a report. */
export interface BenchMerge {
  /** When that run ended, ISO 8601 (UTC). */
  date: string;
  /** The parts (`--only` names) whose rows it measured. */
  parts: string[];
  machine: BenchMachine;
  /** Its wall time, seconds. */
  seconds: number | null;
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
  /** Parts measured later than the rest and merged in (mergeBenchReports), said above the table. */
  merges?: BenchMerge[];
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

/** "2 cores, CPU ..., 23.5 GiB memory, Node ..., Redis ...". */
function machineText(m: BenchMachine): string {
  const cores = m.cores === null ? `cores ${unknown}` : `${m.cores} cores`;
  const cpu = `CPU ${m.cpuModel ?? unknown}`;
  const memory = m.memoryBytes === null ? `memory ${unknown}` : `${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB memory`;
  const node = `Node ${m.node ?? unknown}`;
  const redis = `Redis ${m.redis ?? unknown}`;
  return `${cores}, ${cpu}, ${memory}, ${node}, ${redis}`;
}

/** The header line: date and machine. */
export function renderBenchHeader(report: BenchReport): string {
  const took = report.seconds === null ? '' : `; ${Math.round(report.seconds)} s in all`;
  const parts = Object.entries(report.timings);
  const each = parts.length ? ` (${parts.map(([k, v]) => `${k} ${Math.round(v)} s`).join(', ')})` : '';
  return `Measured ${utcMinute(report.date)} on ${machineText(report.machine)}${took}${each}.`;
}

function sameMachine(a: BenchMachine, b: BenchMachine): boolean {
  return a.cores === b.cores && a.cpuModel === b.cpuModel && a.memoryBytes === b.memoryBytes && a.node === b.node && a.redis === b.redis;
}

/** One line per merged run: which parts, when, and on what machine when it is not the report's. */
export function renderBenchMerges(report: BenchReport): string[] {
  return (report.merges ?? []).map((m) => {
    const where = sameMachine(m.machine, report.machine) ? 'on the same machine' : `on ${machineText(m.machine)}`;
    const took = m.seconds === null ? '' : `, ${Math.round(m.seconds)} s`;
    const names = m.parts.join(', ');
    return `The rows of ${m.parts.length > 1 ? 'the parts' : 'the part'} ${names} were measured ${utcMinute(m.date)} ${where}${took} (\`npm run bench -- --only ${m.parts.join(',')} --merge FILE\`).`;
  });
}

/** The whole Markdown block: header, note, merged runs, table, errors. Deterministic for one report. */
export function renderBenchMarkdown(report: BenchReport): string {
  const lines = [renderBenchHeader(report), ''];
  if (report.note) lines.push(`> ${report.note}`, '');
  for (const line of renderBenchMerges(report)) lines.push(`> ${line}`, '');
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
  for (const m of r.merges ?? []) {
    if (typeof m.date !== 'string' || !Array.isArray(m.parts) || !m.machine) throw new Error(`bench merge ${JSON.stringify(m)}: needs date, parts and machine`);
  }
  return { seconds: null, timings: {}, errors: [], ...r } as BenchReport;
}

/**
 * The part that measured a row: its `source`, or for a row saved before sources were recorded, the
 * part whose rows are named so (bench/run.ts's part names); null when neither tells.
 */
export function sourceOfRow(row: BenchRow): string | null {
  if (row.source) return row.source;
  const legacy: [string, string][] = [
    ['raw BullMQ no-op job', 'acquire'],
    ['acquire through BullMQ', 'acquire'],
    ['fairness (acquire line)', 'acquire'],
    ['acquire with check_on_acquire', 'check-on-acquire'],
    ['VM sets', 'sets'],
    ['acquire script by step', 'steps'],
    ['ioredis EVALSHA no-op script', 'pool'],
    ['direct acquire', 'pool'],
    ['memory per VM', 'pool'],
    ['past one shard', 'cluster'],
    ['reconcile', 'reconcile'],
    ['health', 'health'],
    ['restart storm', 'restart'],
    ['rollout', 'rollout'],
  ];
  return legacy.find(([prefix]) => row.part.startsWith(prefix))?.[1] ?? null;
}

/**
 * A saved report with the parts `ran` replaced by a later run's rows (`npm run bench -- --only
 * PARTS --merge FILE`), so that one part can be measured again without the whole bench. Rows keep
 * the parts' order (`order`); the report's date, machine and wall time stay the first run's, the
 * re-run parts' timings leave its header, and `merges` says which parts were measured when (a part
 * merged again replaces its earlier merge). The later run's errors are added. Throws when a saved
 * row's part cannot be told (a hand-edited file), or a part is not in `order`.
 */
export function mergeBenchReports(base: BenchReport, later: BenchReport, ran: readonly string[], order: readonly string[]): BenchReport {
  const unknownPart = ran.find((p) => !order.includes(p));
  if (unknownPart !== undefined) throw new Error(`unknown bench part ${unknownPart} (parts: ${order.join(', ')})`);
  const bySource = (rows: BenchRow[], what: string) =>
    rows.map((row) => {
      const source = sourceOfRow(row);
      if (source === null || !order.includes(source)) throw new Error(`${what}: cannot tell which bench part measured the row ${JSON.stringify(row.part)} / ${JSON.stringify(row.figure)}`);
      return { ...row, source };
    });
  const old = bySource(base.rows, 'the saved report');
  const fresh = bySource(later.rows, 'the run');
  const rows = order.flatMap((part) => (ran.includes(part) ? fresh : old).filter((r) => r.source === part));
  const timings = Object.fromEntries(Object.entries(base.timings).filter(([k]) => !ran.includes(k)));
  const merges = (base.merges ?? [])
    .map((m) => ({ ...m, parts: m.parts.filter((p) => !ran.includes(p)) }))
    .filter((m) => m.parts.length > 0);
  merges.push({ date: later.date, parts: order.filter((p) => ran.includes(p)), machine: later.machine, seconds: later.seconds });
  const merged: BenchReport = { date: base.date, machine: base.machine, seconds: base.seconds, timings, errors: [...base.errors, ...later.errors], rows, merges };
  if (base.note) merged.note = base.note;
  return merged;
}
