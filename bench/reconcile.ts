/**
 * Reconcile benchmark: the time and the Redis commands of one reconcile cycle (VmMaster.doCycle)
 * with nothing due and with 1/12 of the VMs due for a health check (their health jobs added), at
 * 10,000 and 100,000 ready VMs in 50 groups; and one filtered page of GET /api/v1/vms
 * (VmManager.listVms, group + state, 500 VMs), beside reading every VM record (what a cycle read
 * before the due-time sets). On a private redis-server that this script starts and stops.
 *   npm run bench:reconcile            (or: npx tsx bench/reconcile.ts 10000)
 */
import { Redis } from 'ioredis';
import { VmManager } from '../src/pool/vmManager.js';
import { VmMaster } from '../src/reconcile/vmMaster.js';
import { HEALTH_QUEUE } from '../queues/health.js';
import type { ConfigInput } from '../src/config/index.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { startPrivateRedis } from './lib/redisServer.js';

const SIZES = process.argv.slice(2).length > 0 ? process.argv.slice(2).map(Number) : [10_000, 100_000];
const GROUPS = 50;
const PERIOD_S = 120;
const T0 = 1_750_000_000_000;
const REPEATS = 5;

const config: ConfigInput = {
  groups: Array.from({ length: GROUPS }, (_, i) => ({ name: `g${i}`, max_vm_total: 100_000, max_vm_per_user: 100_000, min_ready: 0, vm_health_check_period: PERIOD_S })),
};
const logger = discardingLogger();

function ipOf(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

/** Redis commands since the last CONFIG RESETSTAT (INFO commandstats), without INFO and CONFIG. */
async function commands(redis: Redis): Promise<number> {
  const info = await redis.info('commandstats');
  let n = 0;
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (m[1] !== 'info' && m[1] !== 'config') n += Number(m[2]);
  return n;
}

/** VM i is checked at T0 + (i % 12) * period / 12: at T0 + period + period/24, one VM in 12 is due. */
async function seed(vmm: VmManager, clock: { now: number }, size: number): Promise<void> {
  const BATCH = 500;
  for (let phase = 0; phase < 12; phase++) {
    clock.now = T0 + (phase * PERIOD_S * 1000) / 12;
    const mine: number[] = [];
    for (let i = phase; i < size; i += 12) mine.push(i);
    for (let b = 0; b < mine.length; b += BATCH) {
      await Promise.all(
        mine.slice(b, b + BATCH).map(async (i) => {
          const name = `vm-${i}`;
          await vmm.addVmToPool(ipOf(i), name, i % GROUPS);
          await vmm.startVmCheck(name);
          await vmm.recordHealthCheckResult(name, true);
        }),
      );
    }
  }
}

interface Row {
  size: number;
  idleMs: number;
  idleCommands: number;
  dueMs: number;
  dueCommands: number;
  dueJobs: number;
  pageMs: number;
  pageCommands: number;
  fullReadMs: number;
}

async function measureCycle(redis: Redis, master: VmMaster): Promise<{ ms: number; commands: number; health: number }> {
  await redis.config('RESETSTAT');
  const t = process.hrtime.bigint();
  const report = await master.doCycle();
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  return { ms, commands: await commands(redis), health: report.counts.checkVmsHealth };
}

async function benchSize(url: string, size: number): Promise<Row> {
  const redis = new Redis(url, { maxRetriesPerRequest: null });
  const clock = { now: T0 - 1000 };
  const vmm = new VmManager(config, { redis, prefix: `rb${size}`, logger, clock: () => clock.now });
  const master = new VmMaster(vmm, { historyPeriodMs: 3_600_000 });
  await vmm.markServerStart();
  const seeded = Date.now();
  await seed(vmm, clock, size);
  console.error(`seeded ${size} VMs in ${((Date.now() - seeded) / 1000).toFixed(1)} s`);

  // Nothing due: the newest check is period/12 old, the oldest period - period/24.
  clock.now = T0 + PERIOD_S * 1000 - (PERIOD_S * 1000) / 24;
  await master.doCycle(); // warms the scripts, takes the history sample
  const idle = [];
  for (let r = 0; r < REPEATS; r++) idle.push(await measureCycle(redis, master));
  idle.sort((a, b) => a.ms - b.ms);

  // 1/12 due: the VMs checked at T0. Each run adds their health jobs; the queue is emptied between runs.
  clock.now = T0 + PERIOD_S * 1000 + (PERIOD_S * 1000) / 24;
  const due = [];
  for (let r = 0; r < 3; r++) {
    await vmm.queue(HEALTH_QUEUE).obliterate({ force: true });
    due.push(await measureCycle(redis, master));
  }
  due.sort((a, b) => a.ms - b.ms);

  const pages: number[] = [];
  let pageCommands = 0;
  for (let r = 0; r < 20; r++) {
    await redis.config('RESETSTAT');
    const t = process.hrtime.bigint();
    await vmm.listVms({ group: vmm.vmGroups[r % GROUPS]!, state: 'ready', limit: 500 });
    pages.push(Number(process.hrtime.bigint() - t) / 1e6);
    pageCommands = await commands(redis);
  }
  pages.sort((a, b) => a - b);

  const t = process.hrtime.bigint();
  await vmm.getAllVmRecords();
  const fullReadMs = Number(process.hrtime.bigint() - t) / 1e6;

  await vmm.close();
  await redis.quit();
  const mid = <T>(xs: T[]) => xs[Math.floor(xs.length / 2)]!;
  return {
    size,
    idleMs: mid(idle).ms,
    idleCommands: mid(idle).commands,
    dueMs: mid(due).ms,
    dueCommands: mid(due).commands,
    dueJobs: mid(due).health,
    pageMs: percentile(pages, 50),
    pageCommands,
    fullReadMs,
  };
}

async function main(): Promise<void> {
  const startedAt = Date.now();
  const server = await startPrivateRedis();
  const stop = () => void server.stop().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const rows: Row[] = [];
  try {
    for (const size of SIZES) rows.push(await benchSize(server.url, size));
  } finally {
    await server.stop();
  }
  console.log(`vmpool reconcile benchmark: private redis-server, ${GROUPS} groups, health check period ${PERIOD_S} s; median of ${REPEATS} idle cycles and 3 cycles with 1/12 due`);
  console.log('cycle = VmMaster.doCycle (every step; no provider, so no orphan pass); commands = INFO commandstats calls during it');
  console.log('page  = VmManager.listVms (GET /api/v1/vms) for one group in state ready, limit 500, median of 20; full read = every VM record (getAllVmRecords)\n');
  const header = ['VMs', 'idle cycle ms', 'idle cmds', '1/12 due cycle ms', 'due cmds', 'health jobs', 'page ms', 'page cmds', 'full read ms'];
  console.log(
    markdownTable(
      header,
      rows.map((r) => [
        r.size.toLocaleString('en-US'),
        r.idleMs.toFixed(1),
        String(r.idleCommands),
        r.dueMs.toFixed(0),
        String(r.dueCommands),
        String(r.dueJobs),
        r.pageMs.toFixed(1),
        String(r.pageCommands),
        r.fullReadMs.toFixed(0),
      ]),
    ),
  );
  const large = rows[rows.length - 1]!;
  console.log(`\ntargets (at ${large.size.toLocaleString('en-US')} VMs): idle cycle <= 20 ms: ${large.idleMs.toFixed(1)} ${large.idleMs <= 20 ? 'PASS' : 'MISS'}; 1/12 due <= 1500 ms: ${large.dueMs.toFixed(0)} ${large.dueMs <= 1500 ? 'PASS' : 'MISS'}; page <= 50 ms: ${large.pageMs.toFixed(1)} ${large.pageMs <= 50 ? 'PASS' : 'MISS'}`);
  console.log(`finished in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
  if (process.env.BENCH_JSON === '1') {
    // For npm run bench (bench/run.ts): one row per figure of each size.
    const part = (r: Row) => `reconcile, ${r.size.toLocaleString('en-US')} VMs in ${GROUPS} groups`;
    const out = rows.flatMap((r) => [
      { part: part(r), figure: `cycle, nothing due (${r.idleCommands} commands)`, target: '<= 20 ms', measured: `${r.idleMs.toFixed(1)} ms`, pass: r.idleMs <= 20 },
      { part: part(r), figure: `cycle, 1/12 due (${r.dueJobs} health jobs)`, target: '<= 1.5 s', measured: `${r.dueMs.toFixed(0)} ms`, pass: r.dueMs <= 1500 },
      { part: part(r), figure: 'filtered GET /vms page (limit 500)', target: '<= 50 ms', measured: `${r.pageMs.toFixed(1)} ms`, pass: r.pageMs <= 50 },
    ]);
    console.log(`BENCH_RESULT ${JSON.stringify({ rows: out })}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
