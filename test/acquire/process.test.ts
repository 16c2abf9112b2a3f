import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/pool/vmManager.js';
import { VmPoolClient, acquireJobId } from '../../src/client/vmPoolClient.js';
import { ACQUIRE_QUEUE } from '../../queues/acquire.js';
import { connect, deleteKeysWithPrefix, REDIS_URL, uniquePrefix, poolKeys } from '../helpers/redis.js';
import { startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';

// Two replicas of the real acquire process (workers/acquire.ts) against the shared Redis. The safety
// retry is 60 s, longer than any wait here: requests are served because the ready message woke them.
const prefix = uniquePrefix('acq-proc');
const keys = poolKeys(prefix);
const config = {
  redis: { url: REDIS_URL, prefix },
  acquire_safety_retry: 60,
  groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 4 }],
};

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let queue: Queue;
const replicas: WorkerProcess[] = [];

async function addReady(name: string, ip: string): Promise<void> {
  await vmm.addVmToPool(ip, name, 'base');
  await vmm.startVmCheck(name);
  await vmm.recordHealthCheckResult(name, true);
}

const waiting = () => redis.zcard(keys.waiters('base'));

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  await vmm.markServerStart();
  client = new VmPoolClient({ redis, prefix, graceMs: 30_000 });
  queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix, ACQUIRE_CONCURRENCY: '5' };
  replicas.push(...(await Promise.all([startWorkerProcess('acquire', env), startWorkerProcess('acquire', env)])));
}, 60_000);

afterAll(async () => {
  await Promise.all(replicas.map((w) => w.stop()));
  await client.close();
  await queue.close();
  await vmm.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

describe('acquire worker processes', () => {
  it('serve waiting requests in arrival order across replicas, woken by ready VMs', async () => {
    const order: string[] = [];
    const pending = ['p1', 'p2', 'p3'].map((owner, i) => ({ owner, i }));
    const done: Promise<unknown>[] = [];
    for (const { owner, i } of pending) {
      done.push(
        client.acquire({ owner, sandbox: 's', arch: 'x86_64', taskId: `proc-${owner}`, timeoutMs: 40_000 }).then((a) => {
          order.push(owner);
          return a;
        }),
      );
      await waitFor(async () => (await waiting()) === i + 1, 10_000, `${i + 1} waiting requests`);
    }
    const jobs = await Promise.all(pending.map(({ owner }) => Job.fromId(queue, acquireJobId(`proc-${owner}`, owner))));
    // Parked: in the line, their jobs delayed, holding no worker.
    await waitFor(async () => (await Promise.all(jobs.map((j) => j?.getState()))).every((state) => state === 'delayed'), 10_000, 'the jobs parked');
    for (let i = 1; i <= 3; i++) {
      await addReady(`pv${i}`, `10.8.0.${i}`);
      await waitFor(() => order.length === i, 20_000, `request ${i} served`);
    }
    expect(order).toEqual(['p1', 'p2', 'p3']);
    const assignments = (await Promise.all(done)) as { vmName: string }[];
    expect(new Set(assignments.map((a) => a.vmName)).size).toBe(3);
  }, 90_000);

  it('a waiting request holds no replica: with the replica that parked it stopped, the other one serves it', async () => {
    const pending = client.acquire({ owner: 'handover', sandbox: 's', arch: 'x86_64', taskId: 'proc-handover', timeoutMs: 40_000 });
    await waitFor(async () => (await waiting()) === 1, 10_000, 'the request to wait');
    const job = await Job.fromId(queue, acquireJobId('proc-handover', 'handover'));
    await waitFor(async () => (await job!.getState()) === 'delayed', 10_000, 'the job parked');
    // processedBy is the worker name: host, pid and a random suffix.
    const stopping = replicas.find((r) => job!.processedBy?.includes(`-${r.child.pid}-`));
    if (!stopping) throw new Error(`no replica processed the job (processedBy ${job!.processedBy})`);
    const stopAt = Date.now();
    expect(await stopping.stop()).toBe(0);
    // Nothing to hand back: the stop is quick and the request is still parked in the line.
    expect(Date.now() - stopAt).toBeLessThan(5_000);
    expect(await waiting()).toBe(1);
    await addReady('hv1', '10.8.1.1');
    const assignment = await pending;
    expect(assignment.vmName).toBe('hv1');
    const served = await Job.fromId(queue, job!.id!);
    expect(served!.processedBy).not.toBe(job!.processedBy);
  }, 90_000);
});
