/**
 * Restart storm: a pool of N ready VMs, then a server start (markServerStart), after which no VM is
 * handed out until a fresh check passed (Copr's rule). Health jobs for every VM go onto the health
 * queue in bulk and one health process (runWorker with the health processor, concurrency 16, the tcp
 * check against a loopback listener) works them off. Prints the time until 10%, 50%, 90% and 100%
 * of the VMs can be handed out again, for two check orders: oldest check first, and arbitrary.
 * Then the same storm (oldest first) worked off by 1, 2 and 4 health processes at once (each its
 * own process, the same worker), timed from the server start until 50%, 90% and 100% of the VMs
 * are in the ready index with a check after it (what acquire hands out), read from Redis.
 *   npx tsx bench/restart.ts     (BENCH_RESTART_VMS=10000; BENCH_JSON=1: a `BENCH_RESULT <json>` line)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { poolKeys } from '../src/pool/keys.js';
import { parseConfig } from '../src/config/index.js';
import { createHealthCheck } from '../src/health/index.js';
import { healthProcessor } from '../src/processors/health.js';
import type { Provider } from '../src/providers/types.js';
import { createJobContext, runWorker } from '../src/runtime/worker.js';
import { HEALTH_QUEUE, addHealthJobs } from '../queues/health.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
import { addReadyVms } from './lib/fill.js';
import { startPrivateRedis } from './lib/redisServer.js';

const VMS = Number(process.env.BENCH_RESTART_VMS ?? 10_000);
const CONCURRENCY = 16;
type Order = 'oldest first' | 'arbitrary';

export interface RestartResult {
  vms: number;
  order: Order;
  /** Seconds from the server start until that share of the VMs passed its fresh check. */
  secondsTo: { p10: number; p50: number; p90: number; p100: number };
  checksPerSecond: number;
}

async function storm(url: string, port: number, order: Order): Promise<RestartResult> {
  const prefix = `bench-restart-${order === 'arbitrary' ? 'a' : 'o'}`;
  const config = parseConfig({ redis: { url, prefix }, groups: [{ name: 'bench', max_vm_total: 200_000, check: { type: 'tcp', port } }] }, {});
  const noProvider = {} as Provider;
  const ctx = createJobContext(config, { logger: discardingLogger(), prefix, providerFactory: () => noProvider, healthCheckFactory: createHealthCheck });
  try {
    await ctx.vmm.markServerStart();
    await addReadyVms(ctx.vmm, { count: VMS, group: 'bench', ipOf: () => '127.0.0.1' });
    // vm-0 was checked first, so it is the oldest; the arbitrary order is a fixed shuffle.
    const names = Array.from({ length: VMS }, (_, i) => `vm-${i}`);
    if (order === 'arbitrary') {
      let seed = 12345;
      for (let i = names.length - 1; i > 0; i--) {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        const j = seed % (i + 1);
        [names[i], names[j]] = [names[j]!, names[i]!];
      }
    }
    const queue = ctx.queue(HEALTH_QUEUE);
    await ctx.vmm.markServerStart(); // the restart: every VM now waits for a fresh check
    const t0 = performance.now();
    let passed = 0;
    const marks: Partial<RestartResult['secondsTo']> = {};
    const allPassed = new Promise<void>((resolve) => {
      const worker = runWorker(ctx, healthProcessor, CONCURRENCY);
      worker.worker.on('completed', (_job, result: { ok: boolean }) => {
        if (!result.ok) return;
        passed += 1;
        const s = (performance.now() - t0) / 1000;
        for (const [k, share] of [['p10', 0.1], ['p50', 0.5], ['p90', 0.9], ['p100', 1]] as const) if (marks[k] === undefined && passed >= share * VMS) marks[k] = s;
        if (passed === VMS) void worker.close(5_000).then(() => resolve());
      });
    });
    await addHealthJobs(queue, names);
    await allPassed;
    // Handed out again: one acquire now succeeds.
    await ctx.vmm.acquireVm({ groups: [0], owner: 'after-restart', sandbox: 'after-restart/x', workerId: 'bench' });
    const secondsTo = marks as RestartResult['secondsTo'];
    return { vms: VMS, order, secondsTo, checksPerSecond: VMS / secondsTo.p100 };
  } finally {
    await ctx.close();
  }
}

export interface ReplicasResult {
  vms: number;
  processes: number;
  secondsTo: { p50: number; p90: number; p100: number };
  /** Redis CPU (INFO cpu) per VM brought back: its health job, check result and the ready index. */
  redisCpuMsPerVm: number;
}

async function redisCpuSeconds(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  return Number(/used_cpu_user:([\d.]+)/.exec(info)![1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)![1]);
}

function stormContext(url: string, prefix: string, port: number) {
  const config = parseConfig({ redis: { url, prefix }, groups: [{ name: 'bench', max_vm_total: 200_000, check: { type: 'tcp', port } }] }, {});
  const noProvider = {} as Provider;
  return createJobContext(config, { logger: discardingLogger(), prefix, providerFactory: () => noProvider, healthCheckFactory: createHealthCheck });
}

/** A health process of the storm: the health worker (CONCURRENCY) until SIGTERM. */
async function healthProcess(url: string, prefix: string, port: number): Promise<void> {
  const ctx = stormContext(url, prefix, port);
  const worker = runWorker(ctx, healthProcessor, CONCURRENCY);
  await worker.worker.waitUntilReady();
  process.stdout.write('READY\n');
  process.once('SIGTERM', () => void worker.close(3_000).then(() => ctx.close()).then(() => process.exit(0)));
}

function startHealthProcess(url: string, prefix: string, port: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--health-process', url, prefix, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString('utf8').includes('READY') && resolve(child));
    child.once('exit', (code) => reject(new Error(`health process exited ${code}`)));
  });
}

/** The storm worked off by `processes` health processes; progress read from the ready index. */
async function stormWithReplicas(url: string, port: number, processes: number): Promise<ReplicasResult> {
  const prefix = `bench-restart-r${processes}`;
  const ctx = stormContext(url, prefix, port);
  const redis = new Redis(url);
  const children: ChildProcess[] = [];
  try {
    await ctx.vmm.markServerStart();
    await addReadyVms(ctx.vmm, { count: VMS, group: 'bench', ipOf: () => '127.0.0.1' });
    for (let i = 0; i < processes; i++) children.push(await startHealthProcess(url, prefix, port));
    const keys = poolKeys(prefix);
    const cpuBefore = await redisCpuSeconds(redis);
    await ctx.vmm.markServerStart();
    const t0 = performance.now();
    const start = Number(await redis.get(keys.serverStart));
    await addHealthJobs(ctx.queue(HEALTH_QUEUE), Array.from({ length: VMS }, (_, i) => `vm-${i}`));
    const marks: Partial<ReplicasResult['secondsTo']> = {};
    while (marks.p100 === undefined) {
      // Checked after the start (score = last check): what pickReady hands out.
      const ready = await redis.zcount(keys.readyClean('bench'), `(${start}`, '+inf');
      const s = (performance.now() - t0) / 1000;
      for (const [k, share] of [['p50', 0.5], ['p90', 0.9], ['p100', 1]] as const) if (marks[k] === undefined && ready >= share * VMS) marks[k] = s;
      if (s > 600) throw new Error(`restart storm with ${processes} processes: ${ready} of ${VMS} after 600 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const redisCpuMsPerVm = ((await redisCpuSeconds(redis)) - cpuBefore) * 1000 / VMS;
    return { vms: VMS, processes, secondsTo: marks as ReplicasResult['secondsTo'], redisCpuMsPerVm };
  } finally {
    await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : (c.once('exit', r), c.kill('SIGTERM'))))));
    redis.disconnect();
    await ctx.close();
  }
}

/** A private redis-server and a loopback listener for the tcp check, for the time of `fn`. */
async function withServerAndListener<T>(fn: (url: string, port: number) => Promise<T>): Promise<T> {
  const server = await startPrivateRedis();
  const listener = createServer((s) => s.destroy());
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', () => r()));
  try {
    return await fn(server.url, (listener.address() as { port: number }).port);
  } finally {
    listener.close();
    await server.stop();
  }
}

export function benchRestartReplicas(): Promise<ReplicasResult[]> {
  return withServerAndListener(async (url, port) => {
    const results: ReplicasResult[] = [];
    for (const processes of [1, 2, 4]) {
      process.stderr.write(`restart: ${VMS} VMs, ${processes} health processes...\n`);
      results.push(await stormWithReplicas(url, port, processes));
    }
    return results;
  });
}

export function benchRestart(): Promise<RestartResult[]> {
  return withServerAndListener(async (url, port) => {
    const results: RestartResult[] = [];
    for (const order of ['oldest first', 'arbitrary'] as const) {
      process.stderr.write(`restart: ${VMS} VMs, checks ${order}...\n`);
      results.push(await storm(url, port, order));
    }
    return results;
  });
}

if (process.argv[2] === '--health-process') {
  const [url, prefix, port] = process.argv.slice(3);
  await healthProcess(url!, prefix!, Number(port));
} else if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await benchRestart();
  const replicas = await benchRestartReplicas();
  console.log(`bench:restart — ${VMS} ready VMs, server start, one health process (concurrency ${CONCURRENCY}, tcp check on loopback), health jobs added in bulk\n`);
  const f = (x: number) => x.toFixed(2);
  console.log(markdownTable(['order', '10% s', '50% s', '90% s', '100% s', 'checks/s'], results.map((r) => [r.order, f(r.secondsTo.p10), f(r.secondsTo.p50), f(r.secondsTo.p90), f(r.secondsTo.p100), r.checksPerSecond.toFixed(0)])));
  console.log(`\nthe same storm (oldest first), worked off by several health processes at once (each concurrency ${CONCURRENCY})\n`);
  console.log(markdownTable(['health processes', '50% s', '90% s', '100% s', 'Redis CPU ms per VM'], replicas.map((r) => [String(r.processes), f(r.secondsTo.p50), f(r.secondsTo.p90), f(r.secondsTo.p100), r.redisCpuMsPerVm.toFixed(3)])));
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify({ storms: results, replicas })}`);
}
