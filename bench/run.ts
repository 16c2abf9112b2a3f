/**
 * One benchmark: runs the parts one after another, each as its own process on its own private
 * redis-server (bench/acquire.ts, bench/checkOnAcquire.ts, bench/acquireSet.ts, bench/acquireSteps.ts, bench/pool.ts,
 * bench/cluster.ts on a 3-master Cluster, bench/health.ts, bench/restart.ts, bench/rollout.ts, and
 * bench/reconcile.ts when it exists), reads the `BENCH_RESULT <json>` line each prints with BENCH_JSON=1, and prints one table
 * of target, measured and PASS/MISS. Ratios compare figures of the same run.
 *   npm run bench                    (Markdown: date and machine, then the table; also --markdown)
 *   npm run bench -- --json          (the same report as JSON)
 *   npm run bench -- --save FILE     (also writes the report as JSON to FILE, such as
 *                                     docs/performance/bench-results.json; `npm run docs` renders it)
 *   npm run bench -- --only pool,health   (only these parts: acquire, check-on-acquire, sets, steps, pool, cluster, reconcile, health, restart, rollout)
 *   npm run bench -- --only check-on-acquire --merge docs/performance/bench-results.json
 *                                    (measures these parts again and replaces their rows in the saved
 *                                     report FILE, keeping the other parts' rows; writes FILE back)
 * BENCH_POOL_SIZES and BENCH_POOL_SAMPLES, when set, replace the pool part's sizes and samples.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HealthResult } from './health.js';
import type { SizeResult } from './pool.js';
import type { ClusterRow } from './cluster.js';
import type { StepRow } from './acquireSteps.js';
import type { ReplicasResult, RestartResult } from './restart.js';
import type { CheckOnAcquireResult } from './checkOnAcquire.js';
import type { AcquireSetBenchResult } from './acquireSet.js';
import { machineInfo, mergeBenchReports, parseBenchReport, renderBenchMarkdown, type BenchReport, type BenchRow } from './lib/report.js';

const here = dirname(fileURLToPath(import.meta.url));
const PARTS = ['acquire', 'check-on-acquire', 'sets', 'steps', 'pool', 'cluster', 'reconcile', 'health', 'restart', 'rollout'] as const;
type Part = (typeof PARTS)[number];

function usage(message: string): never {
  process.stderr.write(`bench: ${message}\nusage: npm run bench -- [--markdown | --json] [--save FILE | --merge FILE] [--only ${PARTS.join(',')}]\n`);
  process.exit(2);
}

/**
 * The command line: output form, where to save the report (or which saved report to merge the run
 * into: read and checked here, before any part runs), which parts to run.
 */
function parseArgs(argv: string[]): { asJson: boolean; save: string | null; merge: { file: string; base: BenchReport } | null; only: Set<Part> } {
  let asJson = false;
  let save: string | null = null;
  let mergeFile: string | null = null;
  let only = new Set<Part>(PARTS);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--json') asJson = true;
    else if (arg === '--markdown') asJson = false;
    else if (arg === '--save' || arg === '--only' || arg === '--merge') {
      const value = argv[++i];
      if (!value) usage(`${arg} needs a value`);
      if (arg === '--save') save = value;
      else if (arg === '--merge') mergeFile = value;
      else {
        const names = value.split(',').map((n) => n.trim());
        const bad = names.filter((n) => !(PARTS as readonly string[]).includes(n));
        if (bad.length) usage(`unknown part ${bad.join(', ')}`);
        only = new Set(names as Part[]);
      }
    } else usage(`unknown argument ${arg}`);
  }
  if (save !== null && mergeFile !== null) usage('--merge FILE writes the merged report back to FILE: give --save or --merge, not both');
  let merge: { file: string; base: BenchReport } | null = null;
  if (mergeFile !== null) {
    const file = resolve(mergeFile);
    try {
      merge = { file, base: parseBenchReport(readFileSync(file, 'utf8')) };
    } catch (err) {
      usage(`--merge ${mergeFile}: not a saved bench report (${(err as Error).message})`);
    }
    // The rows of every part must be told apart before a run is spent on it.
    try {
      mergeBenchReports(merge.base, { ...merge.base, rows: [] }, [], PARTS);
    } catch (err) {
      usage(`--merge ${mergeFile}: ${(err as Error).message}`);
    }
  }
  return { asJson, save, merge, only };
}

const args = parseArgs(process.argv.slice(2));

type Row = BenchRow;

interface PartOutput {
  stdout: string;
  result: Record<string, unknown> | null;
  seconds: number;
  error?: string;
}

/** Runs one part under tsx with BENCH_JSON=1; its progress goes to our stderr. */
function runPart(file: string, env: Record<string, string> = {}): Promise<PartOutput> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, file)], {
      env: { ...process.env, ...env, BENCH_JSON: '1' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.once('exit', (code, signal) => {
      const line = stdout.split('\n').find((l) => l.startsWith('BENCH_RESULT '));
      let result: Record<string, unknown> | null = null;
      try {
        if (line) result = JSON.parse(line.slice('BENCH_RESULT '.length)) as Record<string, unknown>;
      } catch {
        result = null;
      }
      const seconds = (Date.now() - started) / 1000;
      resolve({ stdout, result, seconds, ...(code === 0 ? {} : { error: `${file} exited ${code ?? signal}` }) });
    });
  });
}

const ms = (x: number) => `${x.toFixed(3)} ms`;
const times = (x: number) => `${x.toFixed(2)}x`;
const perSec = (x: number) => `${Math.round(x).toLocaleString('en-US')}/s`;
const verdict = (ok: boolean): Row['result'] => (ok ? 'PASS' : 'MISS');

/**
 * bench/acquire.ts figures: from its BENCH_RESULT when it prints one, else from its table
 * (rows `no-op job`, `acquire (alone)`, `acquire + release`: p50, p99, cycles/s).
 */
function acquireFigures(out: PartOutput) {
  const r = out.result as Record<string, any> | null;
  const fromTable = (name: string) => {
    const line = out.stdout.split('\n').find((l) => l.startsWith(`| ${name} `));
    if (!line) return null;
    const cells = line.split('|').slice(2, -1).map((c) => Number(c.trim()));
    return { p50: cells[0]!, p99: cells[1]!, perSecond: cells[2]! };
  };
  const pick = (keys: string[], table: string) => {
    for (const k of keys) if (r?.[k] && typeof r[k].p50 === 'number') return r[k] as { p50: number; p99: number; perSecond?: number };
    return fromTable(table);
  };
  return {
    noop: pick(['noop', 'noOp'], 'no-op job'),
    acquire: pick(['acquireOnly', 'acquireAlone', 'acquire'], 'acquire (alone)'),
    cycle: pick(['acquireRelease', 'cycle'], 'acquire + release'),
    fairness: (r?.fairness ?? null) as unknown,
  };
}

/** The fairness figures, however bench/acquire.ts shapes them: {name: value} or [{figure, target, measured, pass}]. */
function fairnessRows(fairness: unknown): Row[] {
  const part = 'fairness (acquire line)';
  if (fairness === null || fairness === undefined) return [{ part, figure: 'fairness figures', target: '-', measured: '-', result: 'not measured' }];
  const items = Array.isArray(fairness) ? fairness : Object.entries(fairness as Record<string, unknown>).map(([figure, v]) => (typeof v === 'object' && v ? { figure, ...v } : { figure, measured: v }));
  return items.map((it: any) => ({
    part,
    figure: String(it.figure ?? it.name ?? '?'),
    target: it.target !== undefined ? String(it.target) : '-',
    measured: typeof it.measured === 'number' ? String(Number(it.measured.toFixed(3))) : String(it.measured ?? it.value ?? '-'),
    result: typeof it.pass === 'boolean' ? verdict(it.pass) : 'info',
  }));
}

/** The rows a part printed in its BENCH_RESULT (`{ rows: [{ part, figure, target, measured, pass | result }] }`). */
function partRows(printed: Partial<Row & { pass: boolean }>[], part: string): Row[] {
  return printed.map((x) => ({
    part: String(x.part ?? part),
    figure: String(x.figure ?? '?'),
    target: String(x.target ?? '-'),
    measured: String(x.measured ?? '-'),
    result: typeof x.pass === 'boolean' ? verdict(x.pass) : ((x.result as Row['result']) ?? 'info'),
  }));
}

/** The rows of bench/acquireSet.ts: acquireSet through BullMQ, the set script alone, sets in line with singles. */
function setRows(r: AcquireSetBenchResult | null): Row[] {
  const queuedPart = 'VM sets through BullMQ (acquireSet)';
  const directPart = 'VM sets, the script alone (no waiter)';
  const linePart = 'VM sets in line with single requests';
  if (!r) {
    return [
      { part: queuedPart, figure: 'acquire vs acquireSet of 1, 2, 4, 8: p50 / p95 / p99', target: '-', measured: '-', result: 'not measured' },
      { part: directPart, figure: 'tryAcquireVm vs tryAcquireVmSet of 1, 2, 4, 8: p50', target: '-', measured: '-', result: 'not measured' },
      { part: linePart, figure: 'set wait from the VM completing it, singles given surplus VMs only', target: '-', measured: '-', result: 'not measured' },
    ];
  }
  const rows: Row[] = [];
  const three = (p: { p50: number; p95: number; p99: number }) => `${p.p50.toFixed(3)} / ${p.p95.toFixed(3)} / ${p.p99.toFixed(3)} ms`;
  const single = r.queued.cases.find((c) => c.size === 0);
  for (const c of r.queued.cases) {
    const what = c.size === 0 ? 'single acquire' : `acquireSet of ${c.size}`;
    const ratio = single && c.size !== 0 ? `; p50 ${times(c.p50 / single.p50)} the single's` : '';
    rows.push({ part: queuedPart, figure: `${what}: p50 / p95 / p99 (${c.samples} serial${ratio})`, target: '-', measured: three(c), result: 'info' });
  }
  const [small, large] = r.direct.pools;
  const at = (size: number, pool: number | undefined) => r.direct.cases.find((c) => c.size === size && c.pool === pool);
  const us = (x: number) => `${x.toFixed(0)} µs`;
  for (const size of [...new Set(r.direct.cases.map((c) => c.size))]) {
    const big = at(size, large);
    const few = at(size, small);
    if (!big || !few || large === undefined || small === undefined) continue;
    rows.push({
      part: directPart,
      figure: `${size === 0 ? 'tryAcquireVm' : `tryAcquireVmSet of ${size}`}: clean / dirty p50 at ${large.toLocaleString('en-US')} VMs (at ${small.toLocaleString('en-US')} VMs)`,
      target: '-',
      measured: `${us(big.cleanP50)} / ${us(big.dirtyP50)} (${us(few.cleanP50)} / ${us(few.dirtyP50)})`,
      result: 'info',
    });
  }
  const largest = Math.max(...r.direct.cases.map((c) => c.size));
  const bigSet = at(largest, large);
  const fewSet = at(largest, small);
  if (bigSet && fewSet && large !== undefined && small !== undefined)
    rows.push({
      part: directPart,
      figure: `set of ${largest}, clean p50 ${large.toLocaleString('en-US')} VMs / ${small.toLocaleString('en-US')} VMs (EVALSHA no-op p50 ${us(r.direct.evalshaP50)})`,
      target: '-',
      measured: times(bigSet.cleanP50 / fewSet.cleanP50),
      result: 'info',
    });
  const c = r.contention;
  rows.push({
    part: linePart,
    figure: `set: from the VM completing it ready to served, p50 / p95 / p99 (${c.rounds} rounds: 2 sets of 2, ${c.singles} singles)`,
    target: '-',
    measured: three(c.setWait),
    result: 'info',
  });
  rows.push({ part: linePart, figure: 'single behind the sets: from its VM ready to served, p50 / p95 / p99', target: '-', measured: three(c.singleWait), result: 'info' });
  const unserved = c.unserved ? `; ${c.unserved} not served` : '';
  rows.push({
    part: linePart,
    figure: `singles given a VM the waiting sets could use (sets served at their completing VM: ${c.setsServedInTurn} of ${2 * c.rounds}${unserved})`,
    target: '0',
    measured: String(c.singlesBeforeSets),
    result: verdict(c.singlesBeforeSets === 0 && c.unserved === 0),
  });
  return rows;
}

async function main(): Promise<void> {
  const started = Date.now();
  const rows: Row[] = [];
  const errors: string[] = [];
  const timings: Record<string, number> = {};
  /** Marks the rows added since the last call as the part's (BenchRow.source), for --merge. */
  let tagged = 0;
  const measured = (part: Part) => {
    for (const row of rows.slice(tagged)) row.source = part;
    tagged = rows.length;
  };

  if (args.only.has('acquire')) {
    process.stderr.write('bench: acquire through BullMQ (bench/acquire.ts)...\n');
    const acquireOut = await runPart('acquire.ts');
    timings.acquire = acquireOut.seconds;
    if (acquireOut.error) errors.push(acquireOut.error);
    const a = acquireFigures(acquireOut);
    if (a.noop) {
      rows.push({ part: 'raw BullMQ no-op job', figure: 'serial p50 / p99', target: 'limit', measured: `${ms(a.noop.p50)} / ${ms(a.noop.p99)}`, result: 'limit' });
      rows.push({ part: 'raw BullMQ no-op job', figure: 'parallel throughput', target: 'limit', measured: perSec(a.noop.perSecond ?? NaN), result: 'limit' });
    }
    if (a.noop && a.acquire) {
      const ratio = a.acquire.p50 / a.noop.p50;
      rows.push({ part: 'acquire through BullMQ', figure: `p50 (${ms(a.acquire.p50)}) / no-op p50`, target: '<= 1.40x', measured: times(ratio), result: verdict(ratio <= 1.4) });
    } else rows.push({ part: 'acquire through BullMQ', figure: 'p50 / no-op p50', target: '<= 1.40x', measured: '-', result: 'not measured' });
    if (a.noop?.perSecond && a.cycle?.perSecond) {
      const ratio = a.cycle.perSecond / a.noop.perSecond;
      rows.push({ part: 'acquire through BullMQ', figure: `acquire+release (${perSec(a.cycle.perSecond)}) / no-op throughput`, target: '>= 0.70x', measured: times(ratio), result: verdict(ratio >= 0.7) });
    } else rows.push({ part: 'acquire through BullMQ', figure: 'acquire+release / no-op throughput', target: '>= 0.70x', measured: '-', result: 'not measured' });
    rows.push(...fairnessRows(a.fairness));
    measured('acquire');
  }

  if (args.only.has('check-on-acquire')) {
    process.stderr.write('bench: acquire with check_on_acquire none, tcp, ssh (bench/checkOnAcquire.ts)...\n');
    const out = await runPart('checkOnAcquire.ts');
    timings['check-on-acquire'] = out.seconds;
    if (out.error) errors.push(out.error);
    const c = out.result as CheckOnAcquireResult | null;
    const part = 'check at hand-over (check_on_acquire)';
    const none = c?.cases.find((x) => x.case === 'none');
    for (const kind of ['none', 'tcp', 'ssh'] as const) {
      const x = c?.cases.find((y) => y.case === kind);
      const label = kind === 'none' ? 'acquire through BullMQ, no check' : `acquire through BullMQ, check_on_acquire ${kind}`;
      if (!x) {
        const why = c?.skipped[kind];
        rows.push({ part, figure: `${label}: p50 / p95${why ? ` (${why})` : ''}`, target: '-', measured: '-', result: 'not measured' });
        continue;
      }
      const diff = none ? x.p50 - none.p50 : 0;
      const added = none && kind !== 'none' ? `, ${diff < 0 ? '-' : '+'}${ms(Math.abs(diff))} p50` : '';
      const failed = x.failedChecks > 0 ? `, ${x.failedChecks} VMs failed the check` : '';
      rows.push({ part, figure: `${label}: p50 / p95 (${x.samples} serial${added}${failed})`, target: '-', measured: `${ms(x.p50)} / ${ms(x.p95)}`, result: 'info' });
    }
    measured('check-on-acquire');
  }

  if (args.only.has('sets')) {
    process.stderr.write('bench: VM sets through BullMQ, the set script alone, sets in line with singles (bench/acquireSet.ts)...\n');
    const out = await runPart('acquireSet.ts');
    timings.sets = out.seconds;
    if (out.error) errors.push(out.error);
    rows.push(...setRows(out.result as AcquireSetBenchResult | null));
    measured('sets');
  }

  if (args.only.has('steps')) {
    process.stderr.write('bench: the acquire script by step (bench/acquireSteps.ts)...\n');
    const out = await runPart('acquireSteps.ts');
    timings.steps = out.seconds;
    if (out.error) errors.push(out.error);
    const steps = (out.result as { rows: StepRow[] } | null)?.rows;
    if (steps)
      for (const r of steps)
        rows.push({
          part: `acquire script by step, ${r.mode}`,
          figure: r.step,
          target: '-',
          // JSON has no NaN: a row without a step cost reads null.
          measured: typeof r.savedMicros === 'number' && Number.isFinite(r.savedMicros) ? `${r.medianMicros.toFixed(0)} µs (step ${r.savedMicros.toFixed(0)} µs)` : `${r.medianMicros.toFixed(0)} µs`,
          result: 'info',
        });
    else rows.push({ part: 'acquire script by step', figure: 'SLOWLOG medians', target: '-', measured: '-', result: 'not measured' });
    measured('steps');
  }

  if (args.only.has('pool')) {
    process.stderr.write('bench: direct acquire and release (bench/pool.ts)...\n');
    // 100,000 VMs take a while to fill; fewer samples keep the whole run inside its budget.
    const poolOut = await runPart('pool.ts', {
      BENCH_POOL_SIZES: process.env.BENCH_POOL_SIZES || '10,1000,10000,100000',
      BENCH_POOL_SAMPLES: process.env.BENCH_POOL_SAMPLES || '1000',
    });
    timings.pool = poolOut.seconds;
    if (poolOut.error) errors.push(poolOut.error);
    const pool = poolOut.result as { sizes: SizeResult[]; evalshaP50: number; evalshaP99: number; samples: number } | null;
    if (pool) {
      rows.push({ part: 'ioredis EVALSHA no-op script', figure: 'serial p50 / p99', target: 'limit', measured: `${ms(pool.evalshaP50)} / ${ms(pool.evalshaP99)}`, result: 'limit' });
      for (const s of pool.sizes) {
        const at = `${s.size.toLocaleString('en-US')} VMs`;
        rows.push({ part: `direct acquire, ${at}`, figure: 'clean p50 / p99', target: 'p50 <= 0.500 ms', measured: `${ms(s.cleanP50)} / ${ms(s.cleanP99)}`, result: verdict(s.cleanP50 <= 0.5) });
        rows.push({ part: `direct acquire, ${at}`, figure: 'dirty p50 / p99', target: 'p50 <= 0.500 ms', measured: `${ms(s.dirtyP50)} / ${ms(s.dirtyP99)}`, result: verdict(s.dirtyP50 <= 0.5) });
        rows.push({ part: `direct acquire, ${at}`, figure: 'acquire+release, serial', target: '-', measured: perSec(s.cyclesPerSecond), result: 'info' });
      }
      const at10k = pool.sizes.find((s) => s.size === 10_000);
      const at10 = pool.sizes.find((s) => s.size === 10);
      if (at10k) {
        for (const [kind, p50] of [['clean', at10k.cleanP50], ['dirty', at10k.dirtyP50]] as const) {
          const ratio = p50 / pool.evalshaP50;
          rows.push({ part: 'direct acquire vs EVALSHA', figure: `${kind} acquireVm p50 at 10,000 VMs / EVALSHA p50`, target: '<= 2.00x', measured: times(ratio), result: verdict(ratio <= 2) });
        }
        if (at10) {
          const ratio = at10k.dirtyP50 / at10.dirtyP50;
          rows.push({ part: 'direct acquire, flat', figure: 'dirty p50 10,000 VMs / 10 VMs', target: '<= 1.30x', measured: times(ratio), result: verdict(ratio <= 1.3) });
        }
      }
      const at100k = pool.sizes.find((s) => s.size === 100_000);
      if (at10k && at100k) {
        const ratio = at100k.dirtyP50 / at10k.dirtyP50;
        rows.push({ part: 'direct acquire, flat', figure: 'dirty p50 100,000 VMs / 10,000 VMs', target: '<= 1.30x', measured: times(ratio), result: verdict(ratio <= 1.3) });
      }
      for (const s of pool.sizes.filter((x) => x.size >= 10_000)) {
        rows.push({
          part: 'memory per VM',
          figure: `${s.size.toLocaleString('en-US')} VMs: used_memory delta / MEMORY USAGE of the pool keys`,
          target: '<= 1024 B',
          measured: `${Math.round(s.bytesPerVmUsed)} B / ${Math.round(s.bytesPerVmKeys)} B`,
          result: verdict(Math.max(s.bytesPerVmUsed, s.bytesPerVmKeys) <= 1024),
        });
      }
    } else rows.push({ part: 'direct acquire', figure: 'all sizes', target: '-', measured: '-', result: 'not measured' });
    measured('pool');
  }

  if (args.only.has('cluster')) {
    process.stderr.write('bench: pools on a 3-master Cluster (bench/cluster.ts)...\n');
    const out = await runPart('cluster.ts');
    timings.cluster = out.seconds;
    if (out.error) errors.push(out.error);
    const cluster = (out.result as { rows: ClusterRow[] } | null)?.rows;
    if (cluster)
      for (const r of cluster)
        rows.push({
          part: `past one shard, ${r.setup}`,
          figure: `${r.pools} pool${r.pools > 1 ? 's' : ''}: acquire+release cycles/s, all pools (Redis CPU ${r.redisCpuMicrosPerCycle.toFixed(0)} µs per cycle: one shard's ceiling ${perSec(r.shardCeilingPerSecond)})`,
          target: '-',
          measured: perSec(r.cyclesPerSecond),
          result: 'info',
        });
    else rows.push({ part: 'past one shard', figure: 'cycles/s of 1, 2, 3 pools', target: '-', measured: '-', result: 'not measured' });
    measured('cluster');
  }

  if (!args.only.has('reconcile')) {
    // not asked for
  } else if (existsSync(join(here, 'reconcile.ts'))) {
    process.stderr.write('bench: reconcile (bench/reconcile.ts)...\n');
    const out = await runPart('reconcile.ts');
    timings.reconcile = out.seconds;
    if (out.error) errors.push(out.error);
    const rr = out.result as { rows?: Partial<Row & { pass: boolean }>[] } | null;
    if (rr?.rows) rows.push(...partRows(rr.rows, 'reconcile'));
    else if (rr) for (const [figure, v] of Object.entries(rr)) rows.push({ part: 'reconcile', figure, target: '-', measured: JSON.stringify(v), result: 'info' });
    else rows.push({ part: 'reconcile', figure: 'cycle, nothing due / 1/12 due', target: '<= 20 ms / <= 1.5 s', measured: '-', result: 'not measured' });
  } else rows.push({ part: 'reconcile', figure: 'cycle, nothing due / 1/12 due', target: '<= 20 ms / <= 1.5 s', measured: '-', result: 'not measured' });
  if (args.only.has('reconcile')) measured('reconcile');

  if (args.only.has('health')) {
    process.stderr.write('bench: health checks (bench/health.ts)...\n');
    // The wall rate is bound by the one local sshd on shared cores; 160 checks per size give a stable CPU figure.
    const healthOut = await runPart('health.ts', { BENCH_HEALTH_CHECKS: '160', BENCH_HEALTH_OPENSSH_CHECKS: '24' });
    timings.health = healthOut.seconds;
    if (healthOut.error) errors.push(healthOut.error);
    const h = healthOut.result as HealthResult | null;
    if (h) {
      for (const s of h.sizes) {
        const at = `${s.vms.toLocaleString('en-US')} VMs`;
        rows.push({
          part: `health (ssh2), ${at}`,
          figure: `client CPU per check (${perSec(s.ssh2.checksPerSecond)} with one local sshd, ${s.ssh2.failed} failed)`,
          target: `<= ${h.targetCpuMs} ms`,
          measured: ms(s.ssh2.cpuMsPerCheck),
          result: verdict(s.ssh2.cpuMsPerCheck <= h.targetCpuMs),
        });
        rows.push({ part: `health (OpenSSH client), ${at}`, figure: `client CPU per check (${perSec(s.openssh.checksPerSecond)}, ${s.openssh.failed} failed)`, target: 'reference', measured: ms(s.openssh.cpuMsPerCheck), result: 'info' });
      }
      if (h.negotiated) {
        const n = h.negotiated;
        rows.push({ part: 'health (ssh2), handshake', figure: `negotiated with OpenSSH (ssh2 native binding ${n.nativeBinding ? 'loaded' : 'not built'})`, target: '-', measured: `${n.kex}, ${n.serverHostKey}, ${n.cipher}`, result: 'info' });
        rows.push({ part: 'health (ssh2), bare', figure: 'client CPU per check of a bare ssh2 connect, exec, close (no pool, no processor)', target: '-', measured: ms(h.bareSsh2CpuMsPerCheck), result: 'info' });
      }
      const cpus = h.sizes.map((s) => s.ssh2.cpuMsPerCheck);
      const flat = Math.max(...cpus) / Math.min(...cpus);
      rows.push({ part: 'health (ssh2), flat', figure: `CPU per check, largest / smallest over ${h.sizes.map((s) => s.vms.toLocaleString('en-US')).join(', ')} VMs`, target: '<= 1.30x', measured: times(flat), result: verdict(flat <= 1.3) });
      rows.push({ part: 'health processes', figure: 'checks/s of one process, client CPU bound (1000 / worst CPU ms)', target: '-', measured: perSec(h.cpuBoundChecksPerSecond), result: 'info' });
      rows.push({ part: 'health processes', figure: '10,000 VMs at 120 s (83 checks/s) / 100,000 VMs (833 checks/s)', target: '-', measured: `${h.processesFor10k} / ${h.processesFor100k}`, result: 'info' });
    } else rows.push({ part: 'health', figure: 'checks per second', target: '<= 5 ms CPU/check', measured: '-', result: 'not measured' });
    measured('health');
  }

  if (args.only.has('restart')) {
    process.stderr.write('bench: restart storm (bench/restart.ts)...\n');
    const restartOut = await runPart('restart.ts');
    timings.restart = restartOut.seconds;
    if (restartOut.error) errors.push(restartOut.error);
    const result = restartOut.result as unknown as { storms: RestartResult[]; replicas: ReplicasResult[] } | null;
    if (result) {
      for (const r of result.storms)
        rows.push({
          part: `restart storm, ${r.vms.toLocaleString('en-US')} VMs`,
          figure: `server start until 50% / 90% / 100% can be handed out (one health process, tcp check), ${r.order}`,
          target: '-',
          measured: `${r.secondsTo.p50.toFixed(2)} / ${r.secondsTo.p90.toFixed(2)} / ${r.secondsTo.p100.toFixed(2)} s`,
          result: 'info',
        });
      for (const r of result.replicas)
        rows.push({
          part: `restart storm, ${r.vms.toLocaleString('en-US')} VMs`,
          figure: `server start until 50% / 90% / 100% can be handed out, ${r.processes} health process${r.processes > 1 ? 'es' : ''} (Redis CPU ${r.redisCpuMsPerVm.toFixed(3)} ms per VM)`,
          target: '-',
          measured: `${r.secondsTo.p50.toFixed(2)} / ${r.secondsTo.p90.toFixed(2)} / ${r.secondsTo.p100.toFixed(2)} s`,
          result: 'info',
        });
    } else rows.push({ part: 'restart storm', figure: 'server start until 90% can be handed out', target: '-', measured: '-', result: 'not measured' });
    measured('restart');
  }

  if (args.only.has('rollout')) {
    process.stderr.write('bench: rolling out a new image (bench/rollout.ts)...\n');
    const out = await runPart('rollout.ts');
    timings.rollout = out.seconds;
    if (out.error) errors.push(out.error);
    const rr = out.result as { rows?: Partial<Row & { pass: boolean }>[] } | null;
    if (rr?.rows) rows.push(...partRows(rr.rows, 'rollout'));
    else rows.push({ part: 'rollout', figure: 'change to last old VM gone, min ready, extra VM-minutes', target: '-', measured: '-', result: 'not measured' });
    measured('rollout');
  }

  const seconds = (Date.now() - started) / 1000;
  const skipped = PARTS.filter((p) => !args.only.has(p));
  let report: BenchReport = {
    date: new Date().toISOString(),
    machine: machineInfo(),
    seconds,
    timings,
    errors,
    rows,
    ...(skipped.length && !args.merge ? { note: `Only some parts ran (--only); not run: ${skipped.join(', ')}.` } : {}),
  };
  if (args.merge) {
    report = mergeBenchReports(args.merge.base, report, PARTS.filter((p) => args.only.has(p)), PARTS);
    writeFileSync(args.merge.file, `${JSON.stringify(report, null, 2)}\n`);
    process.stderr.write(`bench: rows of ${PARTS.filter((p) => args.only.has(p)).join(', ')} merged into ${args.merge.file}; \`npm run docs\` renders it into docs/performance.md\n`);
  }
  if (args.save) {
    const file = resolve(args.save);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    process.stderr.write(`bench: report saved to ${file}; \`npm run docs\` renders it into docs/performance.md\n`);
  }
  if (args.asJson) console.log(JSON.stringify(report, null, 2));
  else console.log(renderBenchMarkdown(report));
  if (errors.length) process.exitCode = 1;
}

await main();
