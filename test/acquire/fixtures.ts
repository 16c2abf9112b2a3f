import { Queue, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { processAcquireJob, stopAcquireWaits } from '../../src/processors/acquire.js';
import { VmPoolClient } from '../../src/client/vmPoolClient.js';
import { createJobContext, type OwnedJobContext } from '../../src/runtime/worker.js';
import { ACQUIRE_QUEUE } from '../../queues/acquire.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import type { PoolKeys } from '../../src/pool/keys.js';

/**
 * An acquire worker running processAcquireJob in this process against the real Redis, a client and
 * the pool. The safety retry is 60 s, longer than any test here waits: a request that is served
 * after waiting was woken by a ready message, not by a retry.
 */
export interface AcquireKit {
  prefix: string;
  redis: Redis;
  /** The pool's raw keys, for looking at the store on `redis`. */
  keys: PoolKeys;
  ctx: OwnedJobContext;
  worker: Worker;
  client: VmPoolClient;
  queue: Queue;
  /** Adds a VM and brings it to ready with a passing check after the server start. */
  addReady(name: string, ip: string, group?: string | number): Promise<void>;
  /** Resolves once `count` acquire requests wait in the group's line. */
  /** A group by name, or by index in the kit's config. */
  untilWaiting(group: string | number, count: number): Promise<void>;
  close(): Promise<void>;
}

export function acquireConfig(overrides: Partial<ConfigInput> = {}): ConfigInput {
  return {
    acquire_safety_retry: 60,
    groups: [
      { name: 'base', archs: ['x86_64', 'i386'], max_vm_per_user: 2 },
      { name: 'arm', archs: ['aarch64'], max_vm_per_user: 2, on_lease_expiry: 'release' },
      { name: 'big', archs: ['x86_64'], max_vm_per_user: 2 },
    ],
    ...overrides,
  };
}

const noFactory = () => {
  throw new Error('acquire tests use no provider');
};

export async function until(cond: () => Promise<boolean>, what: string, limitMs = 10_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function createAcquireKit(name: string, config: ConfigInput = acquireConfig(), concurrency = 10): Promise<AcquireKit> {
  const prefix = uniquePrefix(name);
  const redis = connect();
  const ctx = createJobContext(parseConfig(config, { REDIS_URL }), { prefix, providerFactory: noFactory, healthCheckFactory: noFactory });
  await ctx.vmm.markServerStart();
  const workerConnection = connect({ maxRetriesPerRequest: null });
  const worker = new Worker(ACQUIRE_QUEUE, (job: Job) => processAcquireJob(job, ctx), {
    connection: workerConnection,
    prefix,
    concurrency,
  });
  const client = new VmPoolClient({ redis: connect(), prefix, graceMs: 5_000 });
  const queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
  const keys = poolKeys(prefix);
  return {
    prefix,
    redis,
    keys,
    ctx,
    worker,
    client,
    queue,
    async addReady(vmName, ip, group = 0) {
      await ctx.vmm.addVmToPool(ip, vmName, group);
      await ctx.vmm.startVmCheck(vmName);
      const { outcome } = await ctx.vmm.recordHealthCheckResult(vmName, true);
      if (outcome !== 'ok') throw new Error(`health check of ${vmName}: ${outcome}`);
    },
    async untilWaiting(ref, count) {
      const group = ctx.vmm.resolveGroup(ref);
      await until(async () => (await redis.zcard(keys.waiters(group))) >= count, `${count} waiting requests in group ${group}`);
    },
    async close() {
      // Closing a worker whose connections are still starting throws 'Connection is closed' later.
      await worker.waitUntilReady().catch(() => undefined);
      // The worker stops taking jobs first; then the waiting ones go back to the queue.
      const closing = worker.close();
      await stopAcquireWaits(ctx);
      await closing;
      await workerConnection.quit();
      await client.close();
      await queue.close();
      await ctx.close();
      await deleteKeysWithPrefix(redis, prefix);
      await (client.redis as Redis).quit();
      await redis.quit();
    },
  };
}
