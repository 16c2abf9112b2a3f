/**
 * Past one shard: direct acquire+release cycles per second of 1, 2 and 3 pools on a 3-master Redis
 * Cluster (private redis-servers on loopback), each pool under its own
 * hash tag on its own master, beside one pool on a standalone redis-server. A pool lives in one
 * slot, so one pool is bound by one shard; pools on other masters add shards.
 * Each pool is driven by its own process (CONCURRENCY loops of acquire then release, dirty, over
 * OWNERS owners, on a pool of VMS ready VMs) for SECONDS. Beside the wall rate (bound by this
 * machine's cores when drivers and servers share them), each master's CPU (INFO cpu,
 * used_cpu_user + used_cpu_sys) per cycle gives the shard's own ceiling: 1 s / Redis CPU per cycle.
 *   npx tsx bench/cluster.ts
 * BENCH_JSON=1 also prints `BENCH_RESULT <json>` ({rows}; `npm run bench` reads it).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { connectTo, type RedisConnection } from '../src/redis.js';
import { VmManager } from '../src/pool/vmManager.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
import { startPrivateCluster, startPrivateRedis } from './lib/redisServer.js';

const VMS = 1_000;
const OWNERS = 100;
const CONCURRENCY = Number(process.env.BENCH_CLUSTER_CONCURRENCY ?? 8);
const SECONDS = Number(process.env.BENCH_CLUSTER_SECONDS ?? 6);
const logger = discardingLogger();
const config = { groups: [{ name: 'bench', max_vm_total: 100_000, max_vm_per_user: 100_000 }] };

/** Fills a pool of VMS ready VMs, OWNERS of them bound to an owner's sandbox (dirty). */
async function fillPool(redis: RedisConnection, prefix: string): Promise<void> {
  const vmm = new VmManager(config, { redis, prefix, logger });
  await vmm.markServerStart();
  for (let i = 0; i < VMS; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, VMS - i) }, async (_, k) => {
        const name = `vm-${i + k}`;
        await vmm.addVmToPool(`10.1.${(i + k) >> 8}.${(i + k) & 255}`, name, 0);
        await vmm.startVmCheck(name);
        await vmm.recordHealthCheckResult(name, true);
      }),
    );
  }
  for (let o = 0; o < OWNERS; o++) {
    const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/p`, workerId: 'fill' });
    await vmm.releaseVm(vm.vmName);
  }
  await vmm.close();
}

/** The driver process: cycles on one pool until `until` (epoch ms); prints the count. */
async function drive(url: string, prefix: string, startAt: number, until: number): Promise<void> {
  const redis = connectTo(url, { maxRetriesPerRequest: 2 });
  const vmm = new VmManager(config, { redis, prefix, logger });
  let cycles = 0;
  await new Promise((r) => setTimeout(r, Math.max(0, startAt - Date.now())));
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, loop) => {
      for (let n = loop; Date.now() < until; n += CONCURRENCY) {
        // Each loop keeps to its own owners: a dirty VM is always there for it.
        const o = (n % (OWNERS / CONCURRENCY)) * CONCURRENCY + loop;
        const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/p`, workerId: 'bench', taskId: `t-${n}` });
        await vmm.releaseVm(vm.vmName);
        cycles++;
      }
    }),
  );
  console.log(`CYCLES ${cycles}`);
  await vmm.close();
  redis.disconnect();
}

function runDriver(url: string, prefix: string, startAt: number, until: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--driver', url, prefix, String(startAt), String(until)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.once('exit', (code) => {
      const m = /CYCLES (\d+)/.exec(out);
      if (code === 0 && m) resolve(Number(m[1]));
      else reject(new Error(`driver for ${prefix} exited ${code}`));
    });
  });
}

async function cpuSeconds(port: number): Promise<number> {
  const r = new Redis(port, '127.0.0.1');
  const info = await r.info('cpu');
  r.disconnect();
  return Number(/used_cpu_user:([\d.]+)/.exec(info)![1]) + Number(/used_cpu_sys:([\d.]+)/.exec(info)![1]);
}

/** Hash tags whose slots are on distinct masters, one per master. */
async function tagsOnDistinctMasters(ports: number[]): Promise<{ tag: string; port: number }[]> {
  const r = new Redis(ports[0]!, '127.0.0.1');
  const slots = (await r.cluster('SLOTS')) as unknown as [number, number, [string, number]][];
  const tags: { tag: string; port: number }[] = [];
  for (let i = 0; tags.length < ports.length && i < 10_000; i++) {
    const tag = `pool-${i}`;
    const slot = Number(await r.cluster('KEYSLOT', tag));
    const port = slots.find(([from, to]) => slot >= from && slot <= to)![2][1];
    if (!tags.some((t) => t.port === port)) tags.push({ tag, port });
  }
  r.disconnect();
  return tags;
}

export interface ClusterRow {
  setup: string;
  pools: number;
  cyclesPerSecond: number;
  redisCpuMicrosPerCycle: number;
  shardCeilingPerSecond: number;
}

/** Runs the drivers of `pools` together; returns the total rate and the Redis CPU per cycle. */
async function measure(url: string, pools: { prefix: string; port: number }[]): Promise<{ rate: number; cpuMicros: number }> {
  const before = await Promise.all(pools.map((p) => cpuSeconds(p.port)));
  const startAt = Date.now() + 2_000;
  const until = startAt + SECONDS * 1000;
  const counts = await Promise.all(pools.map((p) => runDriver(url, p.prefix, startAt, until)));
  const after = await Promise.all(pools.map((p) => cpuSeconds(p.port)));
  const cycles = counts.reduce((a, b) => a + b, 0);
  // Each pool is alone on its master: that master's CPU over the window is the pool's.
  const cpuMicros = pools.reduce((sum, _, i) => sum + (after[i]! - before[i]!), 0) * 1e6 / cycles;
  return { rate: cycles / SECONDS, cpuMicros };
}

async function main(): Promise<void> {
  const rows: ClusterRow[] = [];
  const standalone = await startPrivateRedis();
  try {
    const prefix = 'solo';
    const redis = connectTo(standalone.url, { maxRetriesPerRequest: 2 });
    await fillPool(redis, prefix);
    redis.disconnect();
    const m = await measure(standalone.url, [{ prefix, port: standalone.port }]);
    rows.push({ setup: 'standalone redis-server', pools: 1, cyclesPerSecond: m.rate, redisCpuMicrosPerCycle: m.cpuMicros, shardCeilingPerSecond: 1e6 / m.cpuMicros });
  } finally {
    await standalone.stop();
  }
  const cluster = await startPrivateCluster(3);
  try {
    const tags = await tagsOnDistinctMasters(cluster.ports);
    const redis = connectTo(cluster.url, { maxRetriesPerRequest: 2 });
    for (const t of tags) await fillPool(redis, `{${t.tag}}`);
    redis.disconnect();
    for (const n of [1, 2, 3]) {
      const m = await measure(cluster.url, tags.slice(0, n).map((t) => ({ prefix: `{${t.tag}}`, port: t.port })));
      rows.push({ setup: '3-master Cluster, one pool per master', pools: n, cyclesPerSecond: m.rate, redisCpuMicrosPerCycle: m.cpuMicros, shardCeilingPerSecond: 1e6 / m.cpuMicros });
    }
  } finally {
    await cluster.stop();
  }
  console.log(`acquire+release cycles per second (direct, dirty, ${CONCURRENCY} loops per pool, one driver process per pool, ${SECONDS} s, ${VMS} ready VMs per pool)`);
  console.log(
    markdownTable(
      ['setup', 'pools', 'cycles/s, all pools', 'Redis CPU µs per cycle', 'one shard\'s ceiling, cycles/s'],
      rows.map((r) => [r.setup, String(r.pools), Math.round(r.cyclesPerSecond).toLocaleString('en-US'), r.redisCpuMicrosPerCycle.toFixed(0), Math.round(r.shardCeilingPerSecond).toLocaleString('en-US')]),
    ),
  );
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify({ rows })}`);
}

if (process.argv[2] === '--driver') {
  const [url, prefix, startAt, until] = process.argv.slice(3);
  await drive(url!, prefix!, Number(startAt), Number(until));
  process.exit(0);
} else {
  await main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
