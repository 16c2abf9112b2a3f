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
import { addReadyVms } from './lib/fill.js';
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
  await addReadyVms(vmm, { count: VMS, group: 0, ipOf: (i) => `10.1.${i >> 8}.${i & 255}`, batch: 100 });
  for (let o = 0; o < OWNERS; o++) {
    const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/p`, workerId: 'fill' });
    await vmm.releaseVm(vm.vmName);
  }
  await vmm.close();
}

/** The driver process: says READY once connected, and on a line from stdin cycles on one pool for SECONDS; prints the count. */
async function drive(url: string, prefix: string): Promise<void> {
  const redis = connectTo(url, { maxRetriesPerRequest: 2 });
  const vmm = new VmManager(config, { redis, prefix, logger });
  await vmm.countOwnerVms('nobody', 0);
  let cycles = 0;
  const go = new Promise((r) => process.stdin.once('data', r));
  console.log('READY');
  await go;
  const until = Date.now() + SECONDS * 1000;
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

/** Starts a driver; resolves once it is READY, with a `go` that starts it and resolves with its count. */
function startDriver(url: string, prefix: string): Promise<{ go(): Promise<number> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--driver', url, prefix], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  const counted = new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => {
      const m = /CYCLES (\d+)/.exec(out);
      if (code === 0 && m) resolve(Number(m[1]));
      else reject(new Error(`driver for ${prefix} exited ${code}`));
    });
  });
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      if (out.includes('READY')) resolve({ go: () => (child.stdin!.end('go\n'), counted) });
    });
    counted.catch(reject);
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
  // Every driver connected before any starts, so that they run over the same window.
  const drivers = await Promise.all(pools.map((p) => startDriver(url, p.prefix)));
  const before = await Promise.all(pools.map((p) => cpuSeconds(p.port)));
  const counts = await Promise.all(drivers.map((d) => d.go()));
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
  const [url, prefix] = process.argv.slice(3);
  await drive(url!, prefix!);
  process.exit(0);
} else {
  await main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
