/**
 * What check_on_acquire adds to an acquire, on a private redis-server that this script starts and
 * stops: VmPoolClient.acquire through the acquire process type's own worker (runWorker), on two
 * groups of ready VMs at 127.0.0.1, one plain and one with `check: { type: tcp }` and
 * `check_on_acquire: tcp` against a TCP listener of this process (the real TcpHealthCheck, built by
 * createHealthCheck as the workers build it). Serial samples alternate between the groups, so
 * background load hits both alike; each acquire is released before the next.
 *   npm run bench:check-on-acquire
 */
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { parseConfig } from '../src/config/index.js';
import { createHealthCheck } from '../src/health/index.js';
import type { Provider } from '../src/providers/types.js';
import { acquireProcessor, stopAcquireWaits } from '../src/processors/acquire.js';
import { VmPoolClient } from '../src/client/vmPoolClient.js';
import { createJobContext, runWorker } from '../src/runtime/worker.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { freePort, startPrivateRedis } from './lib/redisServer.js';

const WARMUP = 50;
const SERIAL = 500;
const POOL = 20;
const PREFIX = 'bench-check';
const logger = discardingLogger();

async function main(): Promise<void> {
  const redisServer = await startPrivateRedis();
  const listener = createServer((socket) => socket.destroy());
  const port = await freePort();
  await new Promise<void>((resolve) => listener.listen(port, '127.0.0.1', resolve));
  const producer = new Redis(redisServer.url, { maxRetriesPerRequest: 2 });
  try {
    const common = { max_vm_total: POOL, max_vm_per_user: POOL, allowed_networks: ['127.0.0.0/8'], check: { type: 'tcp' as const, port } };
    const config = parseConfig(
      {
        redis: { url: redisServer.url, prefix: PREFIX },
        groups: [
          { name: 'plain', ...common },
          { name: 'checked', ...common, check_on_acquire: 'tcp' },
        ],
      },
      {},
    );
    // No machine is made or destroyed here: the provider is never asked.
    const provider = { type: 'none' } as unknown as Provider;
    const ctx = createJobContext(config, { logger, prefix: PREFIX, providerFactory: () => provider, healthCheckFactory: createHealthCheck });
    await ctx.vmm.markServerStart();
    for (const group of ['plain', 'checked']) {
      for (let i = 0; i < POOL; i++) {
        const name = `${group}-${i}`;
        await ctx.vmm.addVmToPool('127.0.0.1', name, group);
        await ctx.vmm.startVmCheck(name);
        await ctx.vmm.recordHealthCheckResult(name, true);
      }
    }
    const acquireWorker = runWorker(ctx, acquireProcessor, 4);
    await acquireWorker.worker.waitUntilReady();
    const client = new VmPoolClient({ redis: producer, prefix: PREFIX, logger });
    const samples: Record<string, number[]> = { plain: [], checked: [] };
    let n = 0;
    for (let i = 0; i < WARMUP + SERIAL; i++) {
      for (const group of ['plain', 'checked']) {
        n += 1;
        const t = process.hrtime.bigint();
        const a = await client.acquire({ owner: `owner-${n % 4}`, sandbox: 'bench/x', groups: [group], taskId: `task-${n}` });
        if (i >= WARMUP) samples[group]!.push(Number(process.hrtime.bigint() - t) / 1e6);
        if (a.group !== group) throw new Error(`asked ${group}, got ${a.group}`);
        if (!(await client.release(a))) throw new Error(`release of ${a.vmName} refused`);
      }
    }
    const closing = acquireWorker.close(10_000);
    await stopAcquireWaits(ctx);
    await closing;
    await client.close();
    await ctx.close();
    const f = (x: number) => x.toFixed(3);
    const figures = Object.fromEntries(
      Object.entries(samples).map(([group, s]) => {
        const sorted = s.sort((x, y) => x - y);
        return [group, { p50: percentile(sorted, 50), p99: percentile(sorted, 99) }];
      }),
    );
    const plain = figures.plain!;
    const checked = figures.checked!;
    console.log(
      [
        `bench:check-on-acquire — private redis-server ${redisServer.url}; acquire worker (concurrency 4) and producer in this process; tcp listener 127.0.0.1:${port}`,
        `serial: ${SERIAL} acquires per group after ${WARMUP} warm-up, alternating, each released before the next; ${POOL} ready VMs per group`,
        '',
        markdownTable(
          ['case', 'p50 ms', 'p99 ms'],
          [
            ['acquire, no check_on_acquire', f(plain.p50), f(plain.p99)],
            ['acquire, check_on_acquire tcp', f(checked.p50), f(checked.p99)],
          ],
        ),
        '',
        `added by check_on_acquire tcp: p50 ${f(checked.p50 - plain.p50)} ms, p99 ${f(checked.p99 - plain.p99)} ms`,
      ].join('\n'),
    );
    if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify({ plain, checked })}`);
  } finally {
    producer.disconnect();
    listener.close();
    await redisServer.stop();
  }
}

await main();
