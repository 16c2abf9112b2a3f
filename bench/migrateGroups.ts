/**
 * The migration to data format 2 (groups by name) on a pool of N VMs in 4 groups: the pool is
 * built with this code, moved back to the version-1 layout (every reference by group index, data
 * format 1), then migrated by DataFormat.ensure() as the first process of this release does at
 * boot. Prints the pool's size (VMs, keys) and how long the migration took. A one-time cost per
 * pool, proportional to its keys (it scans them once).
 *   npx tsx bench/migrateGroups.ts     (BENCH_MIGRATE_VMS=10000)
 */
import { Redis } from 'ioredis';
import { parseConfig } from '../src/config/index.js';
import { PoolAccess } from '../src/pool/context.js';
import { DataFormat } from '../src/pool/dataFormat.js';
import { moveGroupReferences } from '../src/pool/groupNames.js';
import { VmManager } from '../src/pool/vmManager.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
import { startPrivateRedis } from './lib/redisServer.js';

const VMS = Number(process.env.BENCH_MIGRATE_VMS ?? 10_000);
const GROUPS = ['alpha', 'beta', 'gamma', 'delta'];
const prefix = 'bench-migrate';

const server = await startPrivateRedis();
const redis = new Redis(server.url);
try {
  const config = parseConfig({ redis: { url: server.url, prefix }, groups: GROUPS.map((name) => ({ name, max_vm_total: 100_000, max_vm_per_user: 100_000 })) }, {});
  const vmm = new VmManager(config, { redis, prefix, logger: discardingLogger() });
  await vmm.markServerStart();
  for (let from = 0; from < VMS; from += 500) {
    const batch: Promise<unknown>[] = [];
    for (let i = from; i < Math.min(VMS, from + 500); i++) {
      const name = `vm-${i}`;
      const group = GROUPS[i % GROUPS.length]!;
      batch.push(vmm.addVmToPool(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, name, group).then(() => vmm.startVmCheck(name)).then(() => vmm.recordHealthCheckResult(name, true)));
    }
    await Promise.all(batch);
  }
  // A third of the VMs in use, bound to one of 100 owners (their own ready_dirty and line keys later).
  for (let i = 0; i < VMS; i += 3) {
    const group = GROUPS[i % GROUPS.length]!;
    await vmm.tryAcquireVm({ groups: [group], owner: `owner-${i % 100}`, sandbox: `owner-${i % 100}/p`, workerId: 'bench' });
  }
  await vmm.close();
  await moveGroupReferences(new PoolAccess(redis, prefix), new Map(GROUPS.map((g, i) => [g, String(i)])));
  await redis.hset(`${prefix}:{vmpool}:data_format`, 'version', 1);
  const keys = Number(await redis.dbsize());

  const t0 = performance.now();
  const state = await new DataFormat({ redis, prefix, logger: discardingLogger(), groups: GROUPS }).ensure();
  const seconds = (performance.now() - t0) / 1000;
  if (state.version !== 2) throw new Error(`migrated to ${state.version}`);
  console.log(`bench:migrateGroups — data format 1 -> 2 (groups by name), ${GROUPS.length} groups, one process, private redis-server\n`);
  console.log(markdownTable(['VMs', 'keys', 'seconds', 'keys/s'], [[String(VMS), String(keys), seconds.toFixed(2), (keys / seconds).toFixed(0)]]));
} finally {
  await redis.quit();
  await server.stop();
}
