import { Job, Queue, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { AcquireAborted, SetRequestConflict, VmPoolClient } from '../../src/client/vmPoolClient.js';
import { createJobContext, type OwnedJobContext } from '../../src/runtime/worker.js';
import { requestGroupIds } from '../../src/acquire/requestGroups.js';
import { InvalidVmRequest, NoVmAvailable } from '../../src/pool/types.js';
import {
  ACQUIRE_QUEUE,
  AcquireFailures,
  AcquireJobNames,
  acquireFailureOf,
  acquireSetRequestId,
  acquireSetRequestSchema,
  failAcquireJob,
  type VmSetAssignment,
} from '../../queues/acquire.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import { acquireConfig, until } from '../acquire/fixtures.js';

// VmPoolClient.acquireSet's own side of the queue: the vm-acquire job it adds, joins, replaces,
// waits for and withdraws. The acquire-set jobs are served here by a plain BullMQ Worker on the
// real queue that takes the set with the pool's own script (VmManager.tryAcquireVmSet) at once or
// fails the job as no_vm_available: the client is what is tested, not the acquire line.

const config = acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 4, lease_timeout: 0.9 }, { name: 'arm', archs: ['aarch64'], max_vm_per_user: 4 }] });

interface HandKit {
  prefix: string;
  redis: Redis;
  ctx: OwnedJobContext;
  client: VmPoolClient;
  queue: Queue;
  worker: Worker | undefined;
  /** Jobs the worker saw, by name. */
  seen: string[];
  /** Held before the worker answers a job (the test opens it). */
  gate: Promise<void> | undefined;
  startWorker(): Worker;
  addReady(name: string, ip: string, group?: string): Promise<void>;
  close(): Promise<void>;
}

let kit: HandKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

async function createHandKit(name: string): Promise<HandKit> {
  const prefix = uniquePrefix(name);
  const redis = connect();
  const parsed = parseConfig(config, { REDIS_URL });
  const unused = () => {
    throw new Error('no provider in these tests');
  };
  const ctx = createJobContext(parsed, { prefix, providerFactory: unused, healthCheckFactory: unused });
  await ctx.vmm.markServerStart();
  const client = new VmPoolClient({ redis: connect(), prefix, graceMs: 3_000, groups: parsed.groups });
  const queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
  const workerConnection = connect({ maxRetriesPerRequest: null });
  const k: HandKit = {
    prefix,
    redis,
    ctx,
    client,
    queue,
    worker: undefined,
    seen: [],
    gate: undefined,
    startWorker() {
      k.worker = new Worker(
        ACQUIRE_QUEUE,
        async (job: Job): Promise<VmSetAssignment> => {
          k.seen.push(job.name);
          if (job.name !== AcquireJobNames.ACQUIRE_SET) throw new Error(`unexpected job ${job.name}`);
          const data = acquireSetRequestSchema.parse(job.data);
          const attempt = await ctx.vmm.tryAcquireVmSet({
            owner: data.owner,
            sandbox: data.sandbox,
            workerId: 'hand',
            jobId: String(job.id),
            items: data.vms.map((item) => ({ groups: requestGroupIds(parsed.groups, item) })),
          });
          await k.gate;
          if (attempt.status !== 'acquired' && attempt.status !== 'reattached') throw await failAcquireJob(job, AcquireFailures.NO_VM_AVAILABLE, 'NoVmAvailable: no set now');
          return {
            vms: attempt.vms.map(({ vm, leaseId, leaseExpiresAt }) => ({ vmName: vm.vmName, vmIp: vm.vmIp, group: vm.group, leaseId, leaseExpiresAt, requestedAt: job.timestamp })),
            requestedAt: job.timestamp,
          };
        },
        { connection: workerConnection, prefix, concurrency: 4 },
      );
      return k.worker;
    },
    async addReady(vmName, ip, group = 'base') {
      await ctx.vmm.addVmToPool(ip, vmName, group);
      await ctx.vmm.startVmCheck(vmName);
      await ctx.vmm.recordHealthCheckResult(vmName, true);
    },
    async close() {
      await k.worker?.close();
      await workerConnection.quit();
      await client.close();
      await queue.close();
      await ctx.close();
      await deleteKeysWithPrefix(redis, prefix);
      await (client.redis as Redis).quit();
      await redis.quit();
    },
  };
  return k;
}

const vmState = async (k: HandKit, name: string) => (await k.ctx.vmm.getVmByName(name)).state;

describe('VmPoolClient.acquireSet (client side, a hand-run worker)', () => {
  it('adds one acquire-set job (group indexes resolved to names) and returns every VM in the order asked, each under its own lease', async () => {
    kit = await createHandKit('set-client-served');
    kit.startWorker();
    await kit.addReady('b1', '10.9.0.1');
    await kit.addReady('a1', '10.9.1.1', 'arm');
    const set = await kit.client.acquireSet({ owner: 'alice', sandbox: 's', vms: [{ arch: 'aarch64' }, { groups: [0] }], requestId: 'r1' });
    expect(set.vms.map((v) => [v.vmName, v.group])).toEqual([
      ['a1', 'arm'],
      ['b1', 'base'],
    ]);
    expect(new Set(set.vms.map((v) => v.leaseId)).size).toBe(2);
    for (const v of set.vms) expect(await kit.client.holds(v)).toBe(true);
    const job = (await Job.fromId(kit.queue, acquireSetRequestId('alice', 'r1')))!;
    expect(job.name).toBe(AcquireJobNames.ACQUIRE_SET);
    // The job in Redis names its groups: index 0 became 'base'.
    expect(job.data).toMatchObject({ owner: 'alice', sandbox: 's', vms: [{ arch: 'aarch64' }, { groups: ['base'] }], requestId: 'r1' });
    expect(set.requestedAt).toBe(job.timestamp);
    expect(kit.seen).toEqual(['acquire-set']);
  });

  it('the same requestId again joins the finished job while all its VMs are held; once one is released, the request is replaced', async () => {
    kit = await createHandKit('set-client-rejoin');
    kit.startWorker();
    for (const [n, ip] of [['b1', '10.9.0.1'], ['b2', '10.9.0.2'], ['b3', '10.9.0.3']] as const) await kit.addReady(n, ip);
    const request = { owner: 'alice', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['base'] }], requestId: 'r2' };
    const first = await kit.client.acquireSet(request);
    const again = await kit.client.acquireSet(request);
    expect(again).toEqual(first);
    // The worker ran once: the second call read the finished job.
    expect(kit.seen).toEqual(['acquire-set']);

    expect(await kit.client.release(first.vms[0]!)).toBe(true);
    const replaced = await kit.client.acquireSet(request);
    expect(kit.seen).toEqual(['acquire-set', 'acquire-set']);
    expect(replaced.requestedAt).toBeGreaterThan(first.requestedAt!);
    for (const v of replaced.vms) expect(await kit.client.holds(v)).toBe(true);
    expect(replaced.vms.map((v) => v.leaseId)).not.toContain(first.vms[1]!.leaseId);
  });

  it('a failed set job throws its error (NoVmAvailable), having taken nothing', async () => {
    kit = await createHandKit('set-client-failed');
    kit.startWorker();
    await kit.addReady('b1', '10.9.0.1');
    const err = await kit.client.acquireSet({ owner: 'bob', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['base'] }], requestId: 'r3' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoVmAvailable);
    expect(await vmState(kit, 'b1')).toBe('ready');
    const job = (await Job.fromId(kit.queue, acquireSetRequestId('bob', 'r3')))!;
    expect(acquireFailureOf(job)).toBe(AcquireFailures.NO_VM_AVAILABLE);
    // A failed request of an earlier run is replaced when asked again.
    await kit.addReady('b2', '10.9.0.2');
    const set = await kit.client.acquireSet({ owner: 'bob', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['base'] }], requestId: 'r3' });
    expect(set.vms.map((v) => v.vmName).sort()).toEqual(['b1', 'b2']);
  });

  it('refuses an invalid request before enqueueing anything, and another sandbox of the owner using the request id', async () => {
    kit = await createHandKit('set-client-invalid');
    for (const bad of [
      { owner: 'alice', sandbox: 's', vms: [] },
      { owner: 'alice', sandbox: 's', vms: [{}] },
      { owner: 'alice', sandbox: 's', vms: [{ groups: ['base'], arch: 'x86_64' }] },
      { owner: 'alice', sandbox: 's', vms: Array.from({ length: 33 }, () => ({ groups: ['base'] })) },
      { owner: '', sandbox: 's', vms: [{ groups: ['base'] }] },
    ]) {
      await expect(kit.client.acquireSet(bad as never)).rejects.toThrow(InvalidVmRequest);
    }
    expect(await kit.queue.getJobCounts()).toMatchObject({ waiting: 0, completed: 0, failed: 0 });

    // No worker yet: the first request stays queued; the same id from another sandbox is refused.
    const controller = new AbortController();
    const first = kit.client.acquireSet({ owner: 'alice', sandbox: 's1', vms: [{ groups: ['base'] }], requestId: 'shared', timeoutMs: 30_000 }, { signal: controller.signal }).catch((e: unknown) => e);
    await until(async () => (await Job.fromId(kit!.queue, acquireSetRequestId('alice', 'shared'))) !== undefined, 'the first request enqueued');
    await expect(kit.client.acquireSet({ owner: 'alice', sandbox: 's2', vms: [{ groups: ['base'] }], requestId: 'shared' })).rejects.toThrow(SetRequestConflict);
    // Another owner's same request id is another request.
    const otherOwner = acquireSetRequestId('bob', 'shared');
    expect(otherOwner).not.toBe(acquireSetRequestId('alice', 'shared'));
    controller.abort();
    expect(await first).toBeInstanceOf(AcquireAborted);
  });

  it('aborting withdraws a queued request: its job is removed and nothing is taken later', async () => {
    kit = await createHandKit('set-client-abort-queued');
    await kit.addReady('b1', '10.9.0.1');
    const controller = new AbortController();
    const pending = kit.client.acquireSet({ owner: 'carol', sandbox: 's', vms: [{ groups: ['base'] }], requestId: 'r5', timeoutMs: 30_000 }, { signal: controller.signal }).catch((e: unknown) => e);
    const jobId = acquireSetRequestId('carol', 'r5');
    await until(async () => (await kit!.queue.getJobState(jobId)) === 'waiting', 'the set queued');
    controller.abort(new Error('builder stopped'));
    const err = await pending;
    expect((err as Error).message).toBe('builder stopped');
    expect(await kit.queue.getJobState(jobId)).toBe('unknown');
    // A worker that starts now finds nothing to serve.
    kit.startWorker();
    await new Promise((r) => setTimeout(r, 300));
    expect(kit.seen).toEqual([]);
    expect(await vmState(kit, 'b1')).toBe('ready');
  });

  it('aborting while the worker serves the set gives back every VM served meanwhile', async () => {
    kit = await createHandKit('set-client-abort-served');
    await kit.addReady('b1', '10.9.0.1');
    await kit.addReady('a1', '10.9.1.1', 'arm');
    let open!: () => void;
    kit.gate = new Promise<void>((resolve) => (open = resolve));
    kit.startWorker();
    const controller = new AbortController();
    const pending = kit.client.acquireSet({ owner: 'dave', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['arm'] }], timeoutMs: 30_000 }, { signal: controller.signal }).catch((e: unknown) => e);
    // The worker took both VMs and has not answered yet.
    await until(async () => (await vmState(kit!, 'b1')) === 'in_use' && (await vmState(kit!, 'a1')) === 'in_use', 'the set taken');
    controller.abort();
    open();
    expect(await pending).toBeInstanceOf(AcquireAborted);
    expect(await vmState(kit, 'b1')).toBe('ready');
    expect(await vmState(kit, 'a1')).toBe('ready');
  });

  it('withVmSet renews every lease while fn runs, and releases them all at the end (also when fn throws)', async () => {
    kit = await createHandKit('set-client-with');
    kit.startWorker();
    await kit.addReady('b1', '10.9.0.1');
    await kit.addReady('b2', '10.9.0.2');
    const k = kit;
    const keys = poolKeys(k.prefix);
    const names = await k.client.withVmSet({ owner: 'erin', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['base'] }] }, async (set, signal) => {
      // lease_timeout 0.9 s: both leases move forward (renewed) while fn holds them.
      const first = await Promise.all(set.vms.map(async (v) => Number(await k.redis.hget(keys.vm(v.vmName), 'lease_expires_at'))));
      await until(async () => {
        const now = await Promise.all(set.vms.map(async (v) => Number(await k.redis.hget(keys.vm(v.vmName), 'lease_expires_at'))));
        return now.every((t, i) => t > first[i]!);
      }, 'both leases renewed');
      expect(signal.aborted).toBe(false);
      for (const v of set.vms) expect(await vmState(k, v.vmName)).toBe('in_use');
      return set.vms.map((v) => v.vmName).sort();
    });
    expect(names).toEqual(['b1', 'b2']);
    expect(await vmState(k, 'b1')).toBe('ready');
    expect(await vmState(k, 'b2')).toBe('ready');

    const err = await k.client
      .withVmSet({ owner: 'erin', sandbox: 's', vms: [{ groups: ['base'] }] }, () => {
        throw new Error('test failed');
      })
      .catch((e: unknown) => e);
    expect((err as Error).message).toBe('test failed');
    expect(await vmState(k, 'b1')).toBe('ready');
    expect(await vmState(k, 'b2')).toBe('ready');
  }, 20_000);
});
