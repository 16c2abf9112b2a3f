/**
 * What a dispatch of a group's line costs when many VM sets wait in it and keep VMs (set_keeps,
 * includes/setKeeps), on a private redis-server that this script starts and stops. N sets of N
 * owners each ask for one VM of base, one of arm and one of big; base and arm have N ready VMs
 * each, big none but a spawn on its way, so every set waits and keeps one VM of base and one of
 * arm. Timed: VmManager.dispatchAcquireLine('base') (a sweep of the whole line), one script call,
 * repeated; nothing is served, so each call does the same work.
 *   npm run bench:set-keeps                 (BENCH_SET_KEEPS_SIZES, default 100,200,400;
 *                                             BENCH_SET_KEEPS_SAMPLES per size, default 20)
 */
import { pathToFileURL } from 'node:url';
import { VmManager } from '../src/pool/vmManager.js';
import { acquireWaiterMember } from '../src/pool/types.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { addReadyVms } from './lib/fill.js';
import { startPrivateRedis } from './lib/redisServer.js';
import { Redis } from 'ioredis';

function sizesFromEnv(): number[] {
  const raw = process.env.BENCH_SET_KEEPS_SIZES ?? '100,200,400';
  const sizes = raw.split(',').map(Number);
  if (sizes.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`BENCH_SET_KEEPS_SIZES must be positive integers, not ${raw}`);
  return sizes;
}

export async function measureSetKeeps(sizes: number[], samples: number): Promise<{ sets: number; p50Ms: number; maxMs: number; kept: number }[]> {
  const server = await startPrivateRedis();
  const results: { sets: number; p50Ms: number; maxMs: number; kept: number }[] = [];
  try {
    for (const n of sizes) {
      const redis = new Redis(server.url, { maxRetriesPerRequest: null });
      const prefix = `bench-set-keeps-${n}`;
      const group = (name: string) => ({ name, max_vm_total: 10 * n, max_vm_per_user: 4, provider: { type: 'command' as const, spawn_cmd: ['/bin/false'], terminate_cmd: ['/bin/true'] }, check: { type: 'tcp' as const, port: 22 } });
      const vmm = new VmManager({ groups: [group('base'), group('arm'), group('big')] }, { redis, prefix, logger: discardingLogger() });
      try {
        await vmm.markServerStart();
        await addReadyVms(vmm, { from: 0, count: n, group: 'base', ipOf: (i) => `10.1.${i >> 8}.${i & 255}` });
        await addReadyVms(vmm, { from: n, count: n, group: 'arm', ipOf: (i) => `10.2.${i >> 8}.${i & 255}` });
        await vmm.registerSpawn('big', 'big-on-its-way');
        const start = Date.now();
        for (let i = 0; i < n; i++) {
          const jobId = `set-${i}`;
          const attempt = await vmm.tryAcquireVmSet(
            { owner: `o${i}`, sandbox: `o${i}/sb`, workerId: 'bench', jobId, items: [{ groups: ['base'] }, { groups: ['arm'] }, { groups: ['big'] }] },
            { waiter: { member: acquireWaiterMember(start + i, jobId), jobId, priority: 0, deadline: start + 3_600_000 } },
          );
          if (attempt.status !== 'none') throw new Error(`set ${i} was ${attempt.status}: the bench expects every set to wait`);
        }
        const times: number[] = [];
        for (let s = 0; s < samples; s++) {
          const t0 = process.hrtime.bigint();
          const served = await vmm.dispatchAcquireLine('base');
          times.push(Number(process.hrtime.bigint() - t0) / 1e6);
          if (served.length > 0) throw new Error('a dispatch served a set: the bench expects none to be served');
        }
        const kept = await redis.hlen(`${prefix}:{vmpool}:group:base:set_keeps`).catch(() => 0);
        times.sort((a, b) => a - b);
        results.push({ sets: n, p50Ms: percentile(times, 50), maxMs: times[times.length - 1]!, kept });
      } finally {
        await vmm.close();
        await redis.quit();
      }
    }
  } finally {
    await server.stop();
  }
  return results;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const samples = Number(process.env.BENCH_SET_KEEPS_SAMPLES ?? 20);
  const results = await measureSetKeeps(sizesFromEnv(), samples);
  process.stdout.write(
    `${markdownTable(
      ['waiting sets (each keeps 1 base + 1 arm VM)', 'sets recorded in base set_keeps', `dispatchAcquireLine('base') p50 (${samples} samples)`, 'max'],
      results.map((r) => [String(r.sets), String(r.kept), `${r.p50Ms.toFixed(2)} ms`, `${r.maxMs.toFixed(2)} ms`]),
    )}\n`,
  );
}
