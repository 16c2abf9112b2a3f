/**
 * The fair acquire line under load (issue 11), on the benchmark's private redis-server:
 *   - time-to-VM of a light owner, with nobody waiting and with a heavy owner's 5,000 requests
 *     waiting (the heavy owner is at max_vm_per_user: its requests are parked in the line);
 *   - Redis commands per freed VM with 2,000 requests waiting (every command Redis ran, from
 *     INFO commandstats, including those inside scripts and the worker's own BullMQ commands);
 *   - the RSS of a real acquire process (workers/acquire.ts) with 10,000 requests waiting.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/index.js';
import { acquireProcessor, stopAcquireWaits } from '../../src/processors/acquire.js';
import { VmPoolClient } from '../../src/client/vmPoolClient.js';
import { createJobContext, runWorker, type OwnedJobContext } from '../../src/runtime/worker.js';
import { poolKeys } from '../../src/pool/keys.js';
import { ACQUIRE_QUEUE, acquireJobId, addAcquireJobs, type AcquireRequestData } from '../../queues/acquire.js';
import { discardingLogger, percentile } from './measure.js';

const logger = discardingLogger();
const fail = () => {
  throw new Error('no provider in the benchmark');
};

export interface LineFigures {
  lightIdle: { p50: number; p99: number };
  lightBusy: { p50: number; p99: number };
  heavyWaiting: number;
  commandsPerFreedVm: number;
  /** The same, by command (INFO commandstats names: evalsha, zadd, hset...). */
  commandsPerFreedVmByCommand: Record<string, number>;
  waitingForCommands: number;
  rssMb: number;
  rssIdleMb: number;
  waitingForRss: number;
  redisMbPerThousand: number;
}

async function until(cond: () => Promise<boolean>, what: string, limitMs = 600_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Calls of each command Redis ran so far (INFO commandstats), by command name. */
async function commandCalls(redis: Redis): Promise<Map<string, number>> {
  const info = await redis.info('commandstats');
  const calls = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls.set(m[1]!, Number(m[2]));
  return calls;
}

/** Adds `count` acquire requests straight to the queue, as builders would (in bulk, for speed). */
async function enqueue(queue: Queue, count: number, request: (i: number) => AcquireRequestData, tag: string): Promise<void> {
  for (let i = 0; i < count; i += 500) {
    const n = Math.min(500, count - i);
    await addAcquireJobs(queue, Array.from({ length: n }, (_, j) => ({ data: request(i + j), jobId: acquireJobId(`${tag}-${i + j}`, request(i + j).owner) })));
  }
}

async function addReady(ctx: OwnedJobContext, name: string, ip: string, group = 0): Promise<void> {
  await ctx.vmm.addVmToPool(ip, name, group);
  await ctx.vmm.startVmCheck(name);
  await ctx.vmm.recordHealthCheckResult(name, true);
}

async function lightAndCommands(url: string, producer: Redis, prefix: string): Promise<Pick<LineFigures, 'lightIdle' | 'lightBusy' | 'heavyWaiting' | 'commandsPerFreedVm' | 'commandsPerFreedVmByCommand' | 'waitingForCommands'>> {
  const HEAVY = 5_000;
  const CYCLES = 400;
  const WAITING = 2_000;
  const FREED = 50;
  const config = parseConfig(
    {
      redis: { url, prefix },
      acquire_safety_retry: 3600,
      groups: [
        // The heavy owner's HEAVY requests all wait: its cap (max_waiting_per_owner) above them.
        { name: 'line', archs: ['x86_64'], max_vm_total: 100_000, max_vm_per_user: 1, max_waiting_per_owner: 10_000 },
        { name: 'freed', archs: ['aarch64'], max_vm_total: 100_000, max_vm_per_user: 1_000 },
      ],
    },
    {},
  );
  const ctx = createJobContext(config, { logger, prefix, providerFactory: fail, healthCheckFactory: fail });
  await ctx.vmm.markServerStart();
  const worker = runWorker(ctx, acquireProcessor, 50);
  await worker.worker.waitUntilReady();
  const client = new VmPoolClient({ redis: producer, prefix, logger });
  const queue = new Queue(ACQUIRE_QUEUE, { connection: producer, prefix });
  const keys = poolKeys(prefix);
  try {
    for (let i = 0; i < 16; i++) await addReady(ctx, `l-${i}`, `10.9.0.${i + 1}`);
    // The heavy owner holds its one VM: its requests wait (owner_limit).
    await ctx.vmm.acquireVm({ owner: 'heavy', sandbox: 'h', groups: [0], workerId: 'bench' });
    const light = async (): Promise<number[]> => {
      const samples: number[] = [];
      for (let i = 0; i < CYCLES; i++) {
        const t = process.hrtime.bigint();
        const a = await client.acquire({ owner: `light-${i % 8}`, sandbox: 's', groups: [0] });
        samples.push(Number(process.hrtime.bigint() - t) / 1e6);
        await client.release(a);
      }
      return samples.slice(50).sort((x, y) => x - y);
    };
    const idle = await light();
    await enqueue(queue, HEAVY, () => ({ owner: 'heavy', sandbox: 'h', groups: [0], timeoutMs: 3_600_000 }), 'heavy');
    await until(async () => (await producer.zcard(keys.waiters('line'))) >= HEAVY, `${HEAVY} heavy requests parked`);
    const busy = await light();

    // Commands per freed VM: WAITING eligible requests in group 1, VMs freed one at a time (unhold).
    for (let i = 0; i < FREED; i++) {
      await addReady(ctx, `f-${i}`, `10.10.0.${i + 1}`, 1);
      await ctx.vmm.holdVm(`f-${i}`, 'bench');
    }
    await enqueue(queue, WAITING, (i) => ({ owner: `o-${i % 100}`, sandbox: 's', groups: [1], timeoutMs: 3_600_000 }), 'waiting');
    await until(async () => (await producer.zcard(keys.waiters('freed'))) >= WAITING, `${WAITING} requests parked`);
    await new Promise((r) => setTimeout(r, 500));
    let completed = 0;
    worker.worker.on('completed', () => (completed += 1));
    const before = await commandCalls(producer);
    for (let i = 0; i < FREED; i++) {
      await ctx.vmm.unholdVm(`f-${i}`);
      const want = i + 1;
      while (completed < want) await new Promise((r) => setTimeout(r, 2));
    }
    // Let the metrics writes of the last completion land, then subtract this loop's own INFO.
    await new Promise((r) => setTimeout(r, 300));
    const after = await commandCalls(producer);
    const byCommand: Record<string, number> = {};
    for (const [name, calls] of after) {
      const delta = (calls - (before.get(name) ?? 0) - (name === 'info' ? 1 : 0)) / FREED;
      if (delta > 0) byCommand[name] = delta;
    }
    const commandsPerFreedVm = Object.values(byCommand).reduce((a, b) => a + b, 0);
    process.stderr.write(`commands per freed VM by command: ${JSON.stringify(Object.fromEntries(Object.entries(byCommand).sort((a, b) => b[1] - a[1])))}\n`);
    return {
      lightIdle: { p50: percentile(idle, 50), p99: percentile(idle, 99) },
      lightBusy: { p50: percentile(busy, 50), p99: percentile(busy, 99) },
      heavyWaiting: HEAVY,
      commandsPerFreedVm,
      commandsPerFreedVmByCommand: byCommand,
      waitingForCommands: WAITING,
    };
  } finally {
    const closing = worker.close(10_000);
    await stopAcquireWaits(ctx);
    await closing;
    await client.close();
    await queue.close();
    await ctx.close();
  }
}

function rssMbOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

async function usedMemory(redis: Redis): Promise<number> {
  return Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? 0);
}

async function rssWithWaiting(url: string, producer: Redis, prefix: string): Promise<Pick<LineFigures, 'rssMb' | 'rssIdleMb' | 'waitingForRss' | 'redisMbPerThousand'>> {
  const WAITING = 10_000;
  const root = resolve(import.meta.dirname, '..', '..');
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-bench-line-'));
  const configFile = join(dir, 'vmpool.yaml');
  writeFileSync(configFile, stringify({ redis: { url, prefix }, acquire_safety_retry: 3600, groups: [{ name: 'rss', archs: ['x86_64'], max_vm_total: 0, max_vm_per_user: 1 }] }));
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'workers/acquire.ts')], {
    cwd: root,
    env: { ...process.env, VMPOOL_CONFIG: configFile, REDIS_URL: url, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'warn' },
    stdio: 'ignore',
  });
  const queue = new Queue(ACQUIRE_QUEUE, { connection: producer, prefix });
  const keys = poolKeys(prefix);
  try {
    await until(async () => (await producer.exists(`${prefix}:${ACQUIRE_QUEUE}:meta`)) === 1 || (await producer.keys(`${prefix}:*`)).length > 0, 'the acquire process', 60_000);
    await new Promise((r) => setTimeout(r, 3_000));
    const rssIdleMb = rssMbOf(child.pid!);
    const memBefore = await usedMemory(producer);
    await enqueue(queue, WAITING, (i) => ({ owner: `o-${i % 500}`, sandbox: 's', groups: [0], timeoutMs: 3_600_000 }), 'rss');
    await until(async () => (await producer.zcard(keys.waiters('rss'))) >= WAITING, `${WAITING} requests parked`);
    await new Promise((r) => setTimeout(r, 2_000));
    const rssMb = rssMbOf(child.pid!);
    const memAfter = await usedMemory(producer);
    return { rssMb, rssIdleMb, waitingForRss: WAITING, redisMbPerThousand: (memAfter - memBefore) / 1024 / 1024 / (WAITING / 1000) };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await queue.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the line scenarios on their own prefixes of the benchmark's Redis. */
export async function measureAcquireLine(url: string): Promise<LineFigures> {
  const producer = new Redis(url, { maxRetriesPerRequest: 2 });
  try {
    const a = await lightAndCommands(url, producer, 'bline');
    const b = await rssWithWaiting(url, producer, 'brss');
    return { ...a, ...b };
  } finally {
    producer.disconnect();
  }
}
