/**
 * "Only one reconcile cycle runs at a time across all replicas": two workers on the vm-reconcile
 * queue, each with its own connections (as two replicas), and two VmMasters racing doCycle. A Redis
 * counter of cycles in progress records the most that ever ran at once. Control runs without the
 * guard show that the same detector does see overlap.
 */
import { Queue, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import type { JobContext } from '../../src/runtime/context.js';
import { createLogger } from '../../src/logger.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { CycleLock } from '../../src/pool/locks.js';
import { ensureReconcileScheduler, processReconcileJob, RECONCILE_JOB_NAME } from '../../src/processors/reconcile.js';
import { VmMaster, cycleLockKey } from '../../src/reconcile/vmMaster.js';
import type { QueueName } from '../../queues/names.js';
import { RECONCILE_QUEUE, RECONCILE_SCHEDULER_ID } from '../../queues/reconcile.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// orphan_check_period 0: the cycles here have no provider to list (the provider stub throws).
const config = parseConfig({ vm_cycle_timeout: 3600, groups: [{ name: 'base', min_ready: 0, orphan_check_period: 0 }] }, {});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const opened: { close(): Promise<unknown> }[] = [];
const connections: Redis[] = [];
const prefixes: string[] = [];
let admin: Redis;

function conn(workerConnection = false): Redis {
  const c = connect(workerConnection ? { maxRetriesPerRequest: null } : {});
  connections.push(c);
  return c;
}

/** One replica's job context: its own producer connection, manager and queue handles. */
function replicaContext(prefix: string): JobContext {
  const connection = conn();
  const vmm = new VmManager(config, { redis: connection, prefix });
  const queues = new Map<QueueName, Queue>();
  opened.push(vmm, { close: () => Promise.all([...queues.values()].map((q) => q.close())) });
  return {
    config,
    vmm,
    logger: createLogger('test'),
    prefix,
    clock: Date.now,
    workerId: `replica-${prefix}`,
    connection,
    queue(name) {
      let q = queues.get(name);
      if (!q) queues.set(name, (q = new Queue(name, { connection, prefix })));
      return q;
    },
    provider: () => {
      throw new Error('reconcile does not call providers');
    },
    healthCheck: () => {
      throw new Error('reconcile does not run checks');
    },
  };
}

/** Counts cycles in progress in Redis; keeps the highest count seen. */
function detector(prefix: string) {
  const active = `${prefix}:test:active`;
  const max = `${prefix}:test:max`;
  const runs = `${prefix}:test:runs`;
  return {
    async around<T>(fn: () => Promise<T>): Promise<T> {
      const n = await admin.incr(active);
      await admin.eval("if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end", 1, max, n);
      try {
        await sleep(25);
        return await fn();
      } finally {
        await admin.decr(active);
        await admin.incr(runs);
      }
    },
    async maxActive(): Promise<number> {
      return Number((await admin.get(max)) ?? 0);
    },
    async runs(): Promise<number> {
      return Number((await admin.get(runs)) ?? 0);
    },
  };
}

/** Two replicas' reconcile workers (concurrency 1 each) work through `jobs` reconcile jobs. */
async function runTwoReplicas(prefix: string, jobs: number, guard: boolean) {
  const queue = new Queue(RECONCILE_QUEUE, { connection: conn(), prefix });
  opened.push(queue);
  if (guard) await ensureReconcileScheduler(queue, config);
  const d = detector(prefix);
  for (let r = 0; r < 2; r++) {
    const ctx = replicaContext(prefix);
    const worker = new Worker(RECONCILE_QUEUE, (job: Job) => d.around(() => processReconcileJob(job, ctx)), {
      connection: conn(true),
      prefix,
      concurrency: 1,
    });
    opened.push(worker);
  }
  await queue.addBulk(Array.from({ length: jobs }, () => ({ name: RECONCILE_JOB_NAME, data: {} })));
  const deadline = Date.now() + 20_000;
  while (((await queue.getJobCounts('completed')).completed ?? 0) < jobs && Date.now() < deadline) await sleep(50);
  return { queue, detector: d, completed: (await queue.getJobCounts('completed')).completed };
}

beforeAll(() => {
  admin = connect();
});

afterAll(async () => {
  for (const o of opened.reverse()) await o.close();
  for (const p of prefixes) await deleteKeysWithPrefix(admin, p);
  for (const c of connections) await c.quit();
  await admin.quit();
});

describe('one reconcile cycle at a time across replicas', () => {
  it('two reconcile workers never run cycles at the same time (global concurrency 1 and the scheduler)', async () => {
    const prefix = uniquePrefix('reconcile-x');
    prefixes.push(prefix);
    const { queue, detector: d, completed } = await runTwoReplicas(prefix, 12, true);
    expect(completed).toBeGreaterThanOrEqual(12);
    expect(await d.runs()).toBeGreaterThanOrEqual(12);
    expect(await d.maxActive()).toBe(1);
    expect(await queue.getGlobalConcurrency()).toBe(1);
    const scheduler = await queue.getJobScheduler(RECONCILE_SCHEDULER_ID);
    expect(scheduler?.every).toBe(config.vm_cycle_timeout * 1000);
    // Idempotent for every replica that starts: still one scheduler.
    await ensureReconcileScheduler(queue, config);
    expect(await queue.getJobSchedulersCount()).toBe(1);
  });

  it('control: without the queue guard the same detector sees two at once', async () => {
    const prefix = uniquePrefix('reconcile-y');
    prefixes.push(prefix);
    const { detector: d, completed } = await runTwoReplicas(prefix, 12, false);
    expect(completed).toBe(12);
    expect(await d.maxActive()).toBe(2);
  });

  it('the cycle lock keeps two holders on separate connections apart; without it they overlap', async () => {
    const prefix = uniquePrefix('reconcile-z');
    prefixes.push(prefix);
    const locked = detector(`${prefix}:locked`);
    const locks = [new CycleLock(conn(), prefix, 5_000), new CycleLock(conn(), prefix, 5_000)];
    let ran = 0;
    await Promise.all(
      locks.map(async (lock) => {
        for (let i = 0; i < 10; i++) {
          const outcome = await lock.run(() => locked.around(async () => undefined));
          if (outcome.acquired) ran += 1;
          await sleep(1);
        }
      }),
    );
    expect(ran).toBeGreaterThan(0);
    expect(await locked.maxActive()).toBe(1);
    const free = detector(`${prefix}:free`);
    await Promise.all([0, 1].map(() => free.around(async () => undefined)));
    expect(await free.maxActive()).toBe(2);
  });

  it('two replicas racing doCycle: exactly one runs, the other returns ran: false', async () => {
    const prefix = uniquePrefix('reconcile-w');
    prefixes.push(prefix);
    const masters = [0, 1].map(() => new VmMaster(replicaContext(prefix).vmm));
    const reports = await Promise.all(masters.map((m) => m.doCycle()));
    expect(reports.map((r) => r.ran).sort()).toEqual([false, true]);
    expect(await admin.exists(cycleLockKey(masters[0]!.vmm))).toBe(0);
    // Released: the next cycle runs.
    expect((await masters[1]!.doCycle()).ran).toBe(true);
  });
});
