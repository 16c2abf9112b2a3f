import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { processAcquireJob, stopAcquireWaits } from '../../src/processors/acquire.js';
import type { VmAssignment } from '../../queues/acquire.js';

/** A single request's job: its result is one VM's assignment. */
const runAcquire = async (...args: Parameters<typeof processAcquireJob>) => (await processAcquireJob(...args)) as VmAssignment;
import { createJobContext, type OwnedJobContext } from '../../src/runtime/worker.js';
import { ACQUIRE_QUEUE, acquireJobOptions } from '../../queues/acquire.js';
import { PoolScripts } from '../../src/pool/poolScripts.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

// A worker that dies after the acquire script ran, before it completed the job: stalled-job recovery
// runs the same job (same id) again. Here the processor runs twice on one job, in this process and
// with no BullMQ worker on the prefix, which is exactly what the re-run does: the job's first run
// took a VM, the second must get the same VM and lease, not a second VM.
const prefix = uniquePrefix('acq-rerun');
const keys = poolKeys(prefix);
const noFactory = () => {
  throw new Error('no provider');
};

let redis: Redis;
let ctx: OwnedJobContext;
let queue: Queue;

async function addReady(name: string, ip: string): Promise<void> {
  await ctx.vmm.addVmToPool(ip, name, 'base');
  await ctx.vmm.startVmCheck(name);
  await ctx.vmm.recordHealthCheckResult(name, true);
}

beforeAll(async () => {
  redis = connect();
  ctx = createJobContext(parseConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 4 }] }, { REDIS_URL }), {
    prefix,
    providerFactory: noFactory,
    healthCheckFactory: noFactory,
  });
  await ctx.vmm.markServerStart();
  queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
});

afterAll(async () => {
  await stopAcquireWaits(ctx);
  await queue.close();
  await ctx.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

async function inUse(): Promise<string[]> {
  return (await ctx.vmm.getAllVms()).filter((v) => v.state === 'in_use').map((v) => v.vmName);
}

describe('an acquire job run twice', () => {
  for (const taskId of [undefined, 'rerun-task']) {
    it(`gets the VM and lease of its first run (${taskId ? 'with' : 'without'} a task id)`, async () => {
      const owner = `rerun-${taskId ? 'task' : 'none'}`;
      await addReady(`${owner}-a`, taskId ? '10.77.0.1' : '10.77.0.2');
      await addReady(`${owner}-b`, taskId ? '10.77.0.3' : '10.77.0.4');
      const before = (await inUse()).length;
      const jobId = `acquire-${owner}`;
      await queue.add('acquire', { owner, sandbox: 's', groups: [0], ...(taskId ? { taskId } : {}) }, { ...acquireJobOptions, jobId });
      const first = await runAcquire((await Job.fromId(queue, jobId))!, ctx);
      // The worker died here: the job is still not completed; it runs again.
      const second = await runAcquire((await Job.fromId(queue, jobId))!, ctx);
      expect(second).toEqual(first);
      const used = await inUse();
      expect(used.length - before).toBe(1);
      expect(used).toContain(first.vmName);
      expect(await redis.hget(keys.ownerVms('base'), owner)).toBe('1');
      expect(await redis.hget(keys.vm(first.vmName), 'lease_id')).toBe(first.leaseId);
    });
  }

  it('a released VM is not handed back to a later run of the same job id', async () => {
    const owner = 'rerun-released';
    await addReady('rel-a', '10.77.1.1');
    const jobId = 'acquire-rerun-released';
    await queue.add('acquire', { owner, sandbox: 's', groups: [0] }, { ...acquireJobOptions, jobId });
    const first = await runAcquire((await Job.fromId(queue, jobId))!, ctx);
    expect(await ctx.vmm.releaseVm(first.vmName, first.leaseId)).toBe(true);
    expect(await redis.exists(keys.acquireAssignment(jobId))).toBe(1);
    const second = await runAcquire((await Job.fromId(queue, jobId))!, ctx);
    // The record no longer matches (the VM left that lease): a fresh assignment, with a new lease.
    expect(second.leaseId).not.toBe(first.leaseId);
  });

  it('a job withdrawn between its runs gives its VM back instead of keeping it for nobody', async () => {
    const owner = 'rerun-cancel';
    await addReady('can-a', '10.77.2.1');
    const jobId = 'acquire-rerun-cancel';
    await queue.add('acquire', { owner, sandbox: 's', groups: [0] }, { ...acquireJobOptions, jobId });
    const job = (await Job.fromId(queue, jobId))!;
    const first = await runAcquire(job, ctx);
    // The builder gave up (its worker died before completing the job) and withdrew the request.
    await new PoolScripts(redis, prefix).cancelAcquire({ member: acquireWaiterMember(job.timestamp, jobId), jobId }, 'gone', 60_000);
    const err = await runAcquire((await Job.fromId(queue, jobId))!, ctx).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/^cancelled: gone/);
    expect(await redis.hget(keys.vm(first.vmName), 'state')).toBe('ready');
    expect(await redis.exists(keys.acquireAssignment(jobId))).toBe(0);
  });
});
