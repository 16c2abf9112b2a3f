/**
 * Pool benchmark: acquire latency, acquire+release throughput and Redis memory per VM, for pools of
 * 10, 1,000 and 10,000 ready VMs, on a private redis-server that this script starts and stops.
 * Beside it, in the same rounds: an ioredis EVALSHA of a no-op script, the limit of a direct acquire.
 *   npm run bench:pool
 * BENCH_POOL_SIZES=10,1000,10000,100000 and BENCH_POOL_SAMPLES=1000 change the sizes and samples;
 * BENCH_JSON=1 also prints one line `BENCH_RESULT <json>` (npm run bench reads it).
 */
import { Redis } from 'ioredis';
import { poolKeyBase } from '../src/pool/keys.js';
import { VmManager } from '../src/pool/vmManager.js';
import type { ConfigInput } from '../src/config/index.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { startPrivateRedis, type PrivateRedis } from './lib/redisServer.js';

const SIZES = (process.env.BENCH_POOL_SIZES ?? '10,1000,10000').split(',').map(Number);
const WARMUP = 200;
const SAMPLES = Number(process.env.BENCH_POOL_SAMPLES ?? 2_000);
const CYCLE_SECONDS = 2;
const TARGET_P50_MS = 0.5;
const TARGET_RATIO = 1.3;
const TARGET_BYTES_PER_VM = 1024;

const config: ConfigInput = {
  // A per-user limit that the bench's owners never reach: every clean acquisition is allowed.
  groups: [{ name: 'bench', max_vm_total: 100_000, max_vm_per_user: 100_000 }],
};

// The manager logs every acquire at info, as in production.
const logger = discardingLogger();

function ipOf(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

async function usedMemory(redis: Redis): Promise<number> {
  const info = await redis.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)![1]);
}

/** Sum of MEMORY USAGE over every key of the pool (not BullMQ's). */
async function memoryUsageOfPool(redis: Redis, base: string): Promise<{ bytes: number; keys: number }> {
  let cursor = '0';
  let bytes = 0;
  let keys = 0;
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${base}*`, 'COUNT', 2000);
    cursor = next;
    if (batch.length) {
      const pipeline = redis.pipeline();
      for (const k of batch) pipeline.memory('USAGE', k, 'SAMPLES', '0');
      for (const [err, n] of (await pipeline.exec()) ?? []) {
        if (err) throw err;
        bytes += Number(n);
      }
      keys += batch.length;
    }
  } while (cursor !== '0');
  return { bytes, keys };
}

/** Adds VMs and brings them to ready through the real API (add, check, ok), a batch at a time. */
async function addReady(vmm: VmManager, from: number, count: number): Promise<void> {
  const BATCH = 250;
  for (let start = from; start < from + count; start += BATCH) {
    const batch: Promise<void>[] = [];
    for (let i = start; i < Math.min(from + count, start + BATCH); i++) {
      batch.push(
        (async () => {
          const name = `vm-${i}`;
          await vmm.addVmToPool(ipOf(i), name, 'bench');
          await vmm.startVmCheck(name);
          await vmm.recordHealthCheckResult(name, true);
        })(),
      );
    }
    await Promise.all(batch);
  }
}

export interface SizeResult {
  size: number;
  cleanP50: number;
  cleanP99: number;
  dirtyP50: number;
  dirtyP99: number;
  cyclesPerSecond: number;
  bytesPerVmUsed: number;
  bytesPerVmKeys: number;
  keysPerVm: number;
}

/** One pool of `size` ready VMs under its own prefix, with its measurements so far. */
interface Pool {
  size: number;
  vmm: VmManager;
  nextVm: number;
  owners: number;
  clean: number[];
  dirty: number[];
  cycles: number;
  cycleSeconds: number;
  bytesPerVmUsed: number;
  bytesPerVmKeys: number;
  keysPerVm: number;
}

async function createPool(redis: Redis, size: number): Promise<Pool> {
  const vmm = new VmManager(config, { redis, prefix: `bench${size}`, logger });
  await vmm.markServerStart();
  // Load the scripts and the terminate queue before the memory baseline.
  await vmm.addVmToPool('10.255.255.254', 'probe', 'bench');
  await vmm.startVmTermination('probe');
  await vmm.removeVmFromPool('probe');
  await vmm.getTerminateQueue().obliterate({ force: true });

  const before = await usedMemory(redis);
  await addReady(vmm, 0, size);
  const after = await usedMemory(redis);
  const keys = await memoryUsageOfPool(redis, poolKeyBase(vmm.prefix));
  // Owners for the dirty cycle: each gets one VM bound to its sandbox; half the pool stays clean.
  const owners = Math.min(Math.floor(size / 2), 100);
  for (let o = 0; o < owners; o++) {
    const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/proj`, workerId: 'bench' });
    await vmm.releaseVm(vm.vmName);
  }
  return {
    size,
    vmm,
    nextVm: size,
    owners,
    clean: [],
    dirty: [],
    cycles: 0,
    cycleSeconds: 0,
    bytesPerVmUsed: (after - before) / size,
    bytesPerVmKeys: keys.bytes / size,
    keysPerVm: keys.keys / size,
  };
}

/**
 * Clean acquisitions: a new owner each time. The VM is then replaced by a new clean one (untimed),
 * so the pool keeps `size` ready VMs.
 */
async function sampleClean(pool: Pool, count: number, record: boolean): Promise<void> {
  const { vmm } = pool;
  for (let i = 0; i < count; i++) {
    const owner = `owner-${pool.nextVm}`;
    const t0 = process.hrtime.bigint();
    const vm = await vmm.acquireVm({ groups: [0], owner, sandbox: `${owner}/proj`, workerId: 'bench' });
    const t1 = process.hrtime.bigint();
    if (record) pool.clean.push(Number(t1 - t0) / 1e6);
    if (vm.owner !== owner || vm.buildsCount !== 0) throw new Error(`expected a clean VM, got ${vm.vmName}`);
    await vmm.startVmTermination(vm.vmName, 'in_use');
    await vmm.removeVmFromPool(vm.vmName);
    await addReady(vmm, pool.nextVm++, 1);
  }
}

/** Dirty acquisitions, the realistic cycle: many owners, each with a sandbox that has a VM bound to it. */
async function sampleDirty(pool: Pool, count: number, record: boolean): Promise<void> {
  const { vmm } = pool;
  for (let i = 0; i < count; i++) {
    const o = (pool.dirty.length + i) % pool.owners;
    const t0 = process.hrtime.bigint();
    const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/proj`, workerId: 'bench', taskId: `task-${i}` });
    const t1 = process.hrtime.bigint();
    if (record) pool.dirty.push(Number(t1 - t0) / 1e6);
    if (vm.owner !== `user-${o}` || vm.buildsCount === 0) throw new Error(`expected a dirty VM of user-${o}, got ${vm.vmName}`);
    await vmm.releaseVm(vm.vmName);
  }
}

/** Serial acquire+release cycles (dirty, over the pool's owners) for a slice of time. */
async function runCycles(pool: Pool, seconds: number): Promise<void> {
  const { vmm } = pool;
  const started = process.hrtime.bigint();
  const end = started + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < end) {
    const o = pool.cycles % pool.owners;
    const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/proj`, workerId: 'bench', taskId: `cycle-${pool.cycles}` });
    await vmm.releaseVm(vm.vmName);
    pool.cycles++;
  }
  pool.cycleSeconds += Number(process.hrtime.bigint() - started) / 1e9;
}

/**
 * Measures every size in turns of ROUND samples, so that load from elsewhere on the machine falls on
 * all sizes alike and the 10k/10 ratio compares like with like.
 */
async function benchAll(server: PrivateRedis): Promise<{ results: SizeResult[]; evalshaP50: number; evalshaP99: number }> {
  const redis = new Redis(server.url, { maxRetriesPerRequest: 2 });
  // The limit of a direct acquire: one EVALSHA round trip of a script that does nothing.
  const noopSha = String(await redis.script('LOAD', 'return 1'));
  const evalsha: number[] = [];
  const sampleEvalsha = async (count: number, record: boolean) => {
    for (let i = 0; i < count; i++) {
      const t0 = process.hrtime.bigint();
      await redis.evalsha(noopSha, 0);
      if (record) evalsha.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  };
  const pools: Pool[] = [];
  for (const size of SIZES) {
    process.stderr.write(`filling a pool of ${size} VMs...\n`);
    pools.push(await createPool(redis, size));
  }
  process.stderr.write('measuring...\n');
  const ROUND = 100;
  for (const pool of pools) {
    await sampleClean(pool, WARMUP, false);
    await sampleDirty(pool, WARMUP, false);
  }
  await sampleEvalsha(WARMUP, false);
  for (let done = 0; done < SAMPLES; done += ROUND) {
    await sampleEvalsha(ROUND, true);
    for (const pool of pools) await sampleClean(pool, ROUND, true);
    for (const pool of pools) await sampleDirty(pool, ROUND, true);
  }
  const SLICES = 4;
  for (let s = 0; s < SLICES; s++) for (const pool of pools) await runCycles(pool, CYCLE_SECONDS / SLICES);

  const results: SizeResult[] = [];
  for (const pool of pools) {
    const ready = (await pool.vmm.getVmsByGroupAndStates('bench', ['ready'])).length;
    if (ready !== pool.size) throw new Error(`pool drifted: ${ready} ready VMs, expected ${pool.size}`);
    const clean = [...pool.clean].sort((a, b) => a - b);
    const dirty = [...pool.dirty].sort((a, b) => a - b);
    results.push({
      size: pool.size,
      cleanP50: percentile(clean, 50),
      cleanP99: percentile(clean, 99),
      dirtyP50: percentile(dirty, 50),
      dirtyP99: percentile(dirty, 99),
      cyclesPerSecond: pool.cycles / pool.cycleSeconds,
      bytesPerVmUsed: pool.bytesPerVmUsed,
      bytesPerVmKeys: pool.bytesPerVmKeys,
      keysPerVm: pool.keysPerVm,
    });
    await pool.vmm.close();
  }
  await redis.quit();
  evalsha.sort((a, b) => a - b);
  return { results, evalshaP50: percentile(evalsha, 50), evalshaP99: percentile(evalsha, 99) };
}

const mark = (ok: boolean) => (ok ? 'PASS' : 'MISS');

async function main(): Promise<void> {
  const startedAt = Date.now();
  const server = await startPrivateRedis();
  const stop = () => void server.stop().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  let measured: Awaited<ReturnType<typeof benchAll>>;
  try {
    measured = await benchAll(server);
  } finally {
    await server.stop();
  }

  const { results, evalshaP50, evalshaP99 } = measured;
  const small = results[0]!;
  const large = results.find((r) => r.size === 10_000) ?? results[results.length - 1]!;
  console.log(`vmpool pool benchmark: private redis-server on port ${server.port}, ${SAMPLES} timed acquires per kind after ${WARMUP} warm-up, serial, one connection, sizes measured in alternating rounds of 100`);
  console.log('acquire = time around vmm.acquireVm (process.hrtime.bigint); clean = new owner, dirty = owner+sandbox with a bound VM');
  console.log('memory  = used_memory delta (INFO memory) over filling the pool / VMs; keys = sum of MEMORY USAGE over the pool keys / VMs');
  console.log('          (at 10 VMs the used_memory delta is dominated by fixed allocations; the targets use 10,000)\n');
  const header = ['VMs', 'clean p50 ms', 'clean p99 ms', 'dirty p50 ms', 'dirty p99 ms', 'acq+rel cycles/s', 'B/VM used_memory', 'B/VM keys', 'keys/VM'];
  const rows = results.map((r) => [
    r.size.toLocaleString('en-US'),
    r.cleanP50.toFixed(3),
    r.cleanP99.toFixed(3),
    r.dirtyP50.toFixed(3),
    r.dirtyP99.toFixed(3),
    Math.round(r.cyclesPerSecond).toLocaleString('en-US'),
    Math.round(r.bytesPerVmUsed).toString(),
    Math.round(r.bytesPerVmKeys).toString(),
    r.keysPerVm.toFixed(2),
  ]);
  console.log(markdownTable(header, rows));
  console.log(`\nioredis EVALSHA of a no-op script (same rounds): p50 ${evalshaP50.toFixed(3)} ms, p99 ${evalshaP99.toFixed(3)} ms`);

  console.log('\ntargets (at 10,000 VMs):');
  const checks: [string, number, string, boolean][] = [
    ['clean acquire p50', large.cleanP50, `<= ${TARGET_P50_MS} ms`, large.cleanP50 <= TARGET_P50_MS],
    ['dirty acquire p50', large.dirtyP50, `<= ${TARGET_P50_MS} ms`, large.dirtyP50 <= TARGET_P50_MS],
    ['clean p50 10k / p50 10', large.cleanP50 / small.cleanP50, `<= ${TARGET_RATIO}x`, large.cleanP50 / small.cleanP50 <= TARGET_RATIO],
    ['dirty p50 10k / p50 10', large.dirtyP50 / small.dirtyP50, `<= ${TARGET_RATIO}x`, large.dirtyP50 / small.dirtyP50 <= TARGET_RATIO],
    ['memory per VM (used_memory)', large.bytesPerVmUsed, `<= ${TARGET_BYTES_PER_VM} B`, large.bytesPerVmUsed <= TARGET_BYTES_PER_VM],
    ['memory per VM (MEMORY USAGE)', large.bytesPerVmKeys, `<= ${TARGET_BYTES_PER_VM} B`, large.bytesPerVmKeys <= TARGET_BYTES_PER_VM],
  ];
  for (const [name, value, target, ok] of checks) {
    console.log(`  ${name.padEnd(30)} ${value.toFixed(3).padStart(10)}   target ${target.padEnd(10)} ${mark(ok)}`);
  }
  console.log(`\nfinished in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify({ sizes: results, evalshaP50, evalshaP99, samples: SAMPLES })}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
