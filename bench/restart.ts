/**
 * Restart storm: a pool of N ready VMs, then a server start (markServerStart), after which no VM is
 * handed out until a fresh check passed (Copr's rule). Health jobs for every VM go onto the health
 * queue in bulk and one health process (runWorker with the health processor, concurrency 16, the tcp
 * check against a loopback listener) works them off. Prints the time until 10%, 50%, 90% and 100%
 * of the VMs can be handed out again, for two check orders: oldest check first, and arbitrary.
 *   npx tsx bench/restart.ts     (BENCH_RESTART_VMS=10000; BENCH_JSON=1: a `BENCH_RESULT <json>` line)
 */
import { createServer } from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseConfig } from '../src/config/index.js';
import { createHealthCheck } from '../src/health/index.js';
import { healthProcessor } from '../src/processors/health.js';
import type { Provider } from '../src/providers/types.js';
import { createJobContext, runWorker } from '../src/runtime/worker.js';
import { HEALTH_QUEUE, addHealthJobs } from '../queues/health.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
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
    for (let from = 0; from < VMS; from += 1000) {
      const batch: Promise<unknown>[] = [];
      for (let i = from; i < Math.min(VMS, from + 1000); i++) {
        const name = `vm-${i}`;
        batch.push(ctx.vmm.addVmToPool('127.0.0.1', name, 'bench').then(() => ctx.vmm.startVmCheck(name)).then(() => ctx.vmm.recordHealthCheckResult(name, true)));
      }
      await Promise.all(batch);
    }
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

export async function benchRestart(): Promise<RestartResult[]> {
  const server = await startPrivateRedis();
  const listener = createServer((s) => s.destroy());
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', () => r()));
  const port = (listener.address() as { port: number }).port;
  try {
    const results: RestartResult[] = [];
    for (const order of ['oldest first', 'arbitrary'] as const) {
      process.stderr.write(`restart: ${VMS} VMs, checks ${order}...\n`);
      results.push(await storm(server.url, port, order));
    }
    return results;
  } finally {
    listener.close();
    await server.stop();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await benchRestart();
  console.log(`bench:restart — ${VMS} ready VMs, server start, one health process (concurrency ${CONCURRENCY}, tcp check on loopback), health jobs added in bulk\n`);
  const f = (x: number) => x.toFixed(2);
  console.log(markdownTable(['order', '10% s', '50% s', '90% s', '100% s', 'checks/s'], results.map((r) => [r.order, f(r.secondsTo.p10), f(r.secondsTo.p50), f(r.secondsTo.p90), f(r.secondsTo.p100), r.checksPerSecond.toFixed(0)])));
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify(results)}`);
}
