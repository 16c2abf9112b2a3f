import { Job } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidVmRequest, NoVmAvailable, VmError } from '../../src/pool/types.js';
import { acquireJobId } from '../../src/client/vmPoolClient.js';
import { acquireJobError, acquireJobOptions } from '../../queues/acquire.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from './fixtures.js';

let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

async function poolSnapshot(k: AcquireKit): Promise<Record<string, unknown>> {
  const vms = await k.ctx.vmm.getAllVmRecords();
  const keys = k.keys;
  return {
    vms,
    leases: await k.redis.zrange(keys.leases, 0, '-1', 'WITHSCORES'),
    waiters: await Promise.all(['base', 'arm', 'big'].map((g) => k.redis.zrange(keys.waiters(g), 0, '-1'))),
    demand: await Promise.all(['base', 'arm', 'big'].map((g) => k.redis.zrange(keys.demand(g), 0, '-1'))),
    waiterInfo: await k.redis.hgetall(keys.waiterInfo),
  };
}

describe('acquire job', () => {
  it('returns an assignment with a lease and leaves no demand behind', async () => {
    kit = await createAcquireKit('acq-ok');
    await kit.addReady('vm1', '10.1.0.1', 0);
    const a = await kit.client.acquire({ owner: 'alice', sandbox: 'alice/p', arch: 'x86_64', taskId: 'task-1', buildId: 'b1', chroot: 'fedora-x86_64' });
    expect(a).toMatchObject({ vmName: 'vm1', vmIp: '10.1.0.1', group: 'base' });
    expect(a.leaseId).toMatch(/^[0-9a-f-]{36}$/);
    const rec = await kit.ctx.vmm.getVmByName('vm1');
    expect(rec).toMatchObject({ state: 'in_use', owner: 'alice', sandbox: 'alice/p', taskId: 'task-1', buildId: 'b1', chroot: 'fedora-x86_64' });
    const [leaseId, expires, ttl] = await kit.redis.hmget(kit.keys.vm('vm1'), 'lease_id', 'lease_expires_at', 'lease_timeout_ms');
    expect(leaseId).toBe(a.leaseId);
    expect(Number(expires)).toBe(a.leaseExpiresAt);
    expect(ttl).toBe('300000');
    expect(await kit.redis.zscore(kit.keys.leases, 'vm1')).toBe(String(a.leaseExpiresAt));
    expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
    const job = await Job.fromId(kit.queue, acquireJobId('task-1', 'alice'));
    expect(job?.returnvalue).toEqual(a);
  });

  it('maps an arch to its groups in config order', async () => {
    kit = await createAcquireKit('acq-arch');
    await kit.addReady('big1', '10.1.0.9', 2);
    await kit.addReady('arm1', '10.1.0.8', 1);
    const a = await kit.client.acquire({ owner: 'alice', sandbox: 's', arch: 'x86_64' });
    expect(a.vmName).toBe('big1');
    const b = await kit.client.acquire({ owner: 'alice', sandbox: 's', arch: 'aarch64' });
    expect(b.vmName).toBe('arm1');
  });

  it('fails with NoVmAvailable at the timeout and leaves the line', async () => {
    kit = await createAcquireKit('acq-timeout');
    await kit.addReady('armvm', '10.1.0.2', 1); // another arch: must not be handed out
    const err = await kit.client.acquire({ owner: 'alice', sandbox: 's', arch: 'x86_64', taskId: 't-late', timeoutMs: 400 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoVmAvailable);
    expect((err as Error).message).toMatch(/^NoVmAvailable: no VM for owner alice .* in groups base\(0\), big\(2\) within 400 ms/);
    const job = await Job.fromId(kit.queue, acquireJobId('t-late', 'alice'));
    expect(await job?.getState()).toBe('failed');
    expect(job?.failedReason).toMatch(/^NoVmAvailable:/);
    expect(job?.attemptsMade).toBe(1);
    const snap = await poolSnapshot(kit);
    expect(snap.waiters).toEqual([[], [], []]);
    expect(snap.demand).toEqual([[], [], []]);
    expect(snap.waiterInfo).toEqual({});
    expect((await kit.ctx.vmm.getVmByName('armvm')).state).toBe('ready');
  });

  it('a waiting request wakes when a VM becomes ready, without the safety retry', async () => {
    kit = await createAcquireKit('acq-wake');
    // The safety retry is 60 s and the test bound is 20 s: only the ready message can serve it.
    const pending = kit.client.acquire({ owner: 'alice', sandbox: 's', groups: [0], timeoutMs: 30_000 });
    await kit.untilWaiting(0, 1);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(1);
    await new Promise((r) => setTimeout(r, 300));
    await kit.addReady('late1', '10.1.0.3', 0);
    const a = await pending;
    expect(a.vmName).toBe('late1');
    expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
  }, 20_000);

  it('a waiting request wakes when its owner releases a dirty VM of the same sandbox', async () => {
    kit = await createAcquireKit('acq-wake-release', acquireConfig({ groups: [{ name: 'one', max_vm_per_user: 1 }] }));
    await kit.addReady('only', '10.1.0.4', 0);
    const first = await kit.client.acquire({ owner: 'bob', sandbox: 'bob/x', groups: [0] });
    const pending = kit.client.acquire({ owner: 'bob', sandbox: 'bob/x', groups: [0], timeoutMs: 30_000 });
    await kit.untilWaiting(0, 1);
    expect(await kit.client.release(first)).toBe(true);
    const second = await pending;
    expect(second.vmName).toBe('only');
    expect(second.leaseId).not.toBe(first.leaseId);
  }, 20_000);

  it('reattaches by taskId: a second enqueue returns the same VM and lease', async () => {
    kit = await createAcquireKit('acq-reattach');
    await kit.addReady('r1', '10.1.0.5', 0);
    await kit.addReady('r2', '10.1.0.6', 0);
    const a = await kit.client.acquire({ owner: 'alice', sandbox: 's', groups: [0], taskId: 'build:42/x86' });
    // A restarted builder: a new client, the same task.
    const { VmPoolClient } = await import('../../src/client/vmPoolClient.js');
    const { connect } = await import('../helpers/redis.js');
    const conn = connect();
    const again = new VmPoolClient({ redis: conn, prefix: kit.prefix });
    try {
      const b = await again.acquire({ owner: 'alice', sandbox: 's', groups: [0], taskId: 'build:42/x86' });
      expect(b).toEqual(a);
      expect(await kit.ctx.vmm.getVmsByGroupAndStates('base', ['in_use'])).toHaveLength(1);
      // The job itself was removed (retention): the pool still answers for the task.
      await (await Job.fromId(kit.queue, acquireJobId('build:42/x86', 'alice')))!.remove();
      const c = await again.acquire({ owner: 'alice', sandbox: 's', groups: [0], taskId: 'build:42/x86' });
      // A new job (its own requestedAt) that the script answered with the VM and lease the task holds.
      expect({ ...c, requestedAt: a.requestedAt }).toEqual(a);
      expect(c.requestedAt).toBeGreaterThanOrEqual(a.requestedAt!);
      expect(await kit.ctx.vmm.getVmsByGroupAndStates('base', ['in_use'])).toHaveLength(1);
      // Once released, the same task asks anew instead of getting the stale assignment.
      expect(await again.release(a)).toBe(true);
      const d = await again.acquire({ owner: 'alice', sandbox: 's', groups: [0], taskId: 'build:42/x86' });
      expect(d.leaseId).not.toBe(a.leaseId);
      expect(await kit.client.holds(d)).toBe(true);
    } finally {
      await again.close();
      await conn.quit();
    }
  });

  it('job ids from task ids contain no colon and are never plain integers', () => {
    expect(acquireJobId('a:b', 'o:1')).not.toContain(':');
    expect(acquireJobId('a:b', 'o')).not.toBe(acquireJobId('a_b', 'o'));
    expect(acquireJobId('123', '4')).toBe('acquire-4+123');
    expect(acquireJobId(undefined)).toMatch(/^acquire-[0-9a-f-]{36}$/);
  });
});

describe('invalid requests', () => {
  it.each([
    ['bad payload', { owner: '', sandbox: 's', groups: [0] }, /^invalid vm-acquire payload: owner/],
    ['both groups and arch', { owner: 'a', sandbox: 's', groups: [0], arch: 'x86_64' }, /exactly one of groups or arch/],
    ['unknown key', { owner: 'a', sandbox: 's', groups: [0], pid: 7 }, /invalid vm-acquire payload/],
    ['unknown arch', { owner: 'a', sandbox: 's', arch: 's390x' }, /^unknown arch "s390x"/],
    ['unknown group', { owner: 'a', sandbox: 's', groups: [0, 9] }, /^unknown group 9/],
  ])('%s fails at once, unretried, and changes nothing', async (_name, data, reason) => {
    kit = await createAcquireKit('acq-invalid');
    await kit.addReady('v1', '10.1.0.7', 0);
    const before = await poolSnapshot(kit);
    const job = await kit.queue.add('acquire', data, { ...acquireJobOptions, jobId: 'acquire-invalid', attempts: 3 });
    await until(async () => (await job.getState()) === 'failed', 'the job to fail');
    const failed = (await Job.fromId(kit.queue, job.id!))!;
    expect(failed.failedReason).toMatch(reason);
    expect(failed.attemptsMade).toBe(1);
    expect(await poolSnapshot(kit)).toEqual(before);
    // The job says why it failed: a bad request, whatever its message.
    expect(acquireJobError(failed)).toBeInstanceOf(InvalidVmRequest);
  });

  it('the client reports a request for an unknown group as InvalidVmRequest', async () => {
    kit = await createAcquireKit('acq-invalid-group');
    await expect(kit.client.acquire({ owner: 'a', sandbox: 's', groups: [9] })).rejects.toThrow(InvalidVmRequest);
  });

  it('the client refuses a bad request before enqueueing', async () => {
    kit = await createAcquireKit('acq-invalid-client');
    await expect(kit.client.acquire({ owner: 'a', sandbox: 's' } as never)).rejects.toThrow(VmError);
    expect(await kit.queue.getJobCounts()).toMatchObject({ waiting: 0, active: 0, completed: 0, failed: 0 });
  });
});

describe('first come, first served', () => {
  async function enqueue(k: AcquireKit, owner: string, priority?: number): Promise<{ owner: string; done: Promise<string> }> {
    const done = k.client.acquire({ owner, sandbox: 's', groups: [0], taskId: `t-${owner}`, timeoutMs: 30_000 }, { priority }).then((a) => a.vmName);
    return { owner, done };
  }

  async function served(reqs: { owner: string; done: Promise<string> }[]): Promise<string[]> {
    const out: string[] = [];
    await Promise.all(reqs.map((r) => r.done.then(() => out.push(r.owner))));
    return out;
  }

  it('serves waiting requests oldest first, one VM at a time', async () => {
    kit = await createAcquireKit('acq-fifo');
    const order: string[] = [];
    const reqs = [];
    for (const owner of ['u1', 'u2', 'u3']) {
      const r = await enqueue(kit, owner);
      reqs.push(r);
      void r.done.then(() => order.push(owner));
      await kit.untilWaiting(0, reqs.length);
    }
    for (let i = 1; i <= 3; i++) {
      await kit.addReady(`f${i}`, `10.2.0.${i}`, 0);
      await until(async () => order.length === i, `request ${i} served`);
    }
    expect(order).toEqual(['u1', 'u2', 'u3']);
    await served(reqs);
  }, 30_000);

  it('honours BullMQ priority before age', async () => {
    kit = await createAcquireKit('acq-prio');
    const order: string[] = [];
    const reqs = [];
    for (const [owner, priority] of [['low', 10], ['mid', 5], ['high', 1]] as const) {
      const r = await enqueue(kit, owner, priority);
      reqs.push(r);
      void r.done.then(() => order.push(owner));
      await kit.untilWaiting(0, reqs.length);
    }
    for (let i = 1; i <= 3; i++) {
      await kit.addReady(`p${i}`, `10.3.0.${i}`, 0);
      await until(async () => order.length === i, `request ${i} served`);
    }
    expect(order).toEqual(['high', 'mid', 'low']);
  }, 30_000);

  it('skips a request ahead that could not take the VM (owner at max_vm_per_user)', async () => {
    kit = await createAcquireKit('acq-fifo-eligible');
    await kit.addReady('c1', '10.4.0.1', 0);
    await kit.addReady('c2', '10.4.0.2', 0);
    await kit.client.acquire({ owner: 'carol', sandbox: 'a', groups: [0] });
    await kit.client.acquire({ owner: 'carol', sandbox: 'b', groups: [0] });
    // carol holds her 2 VMs; her third request waits first in line, dave's second.
    const carol = kit.client.acquire({ owner: 'carol', sandbox: 'c', groups: [0], timeoutMs: 30_000 });
    await kit.untilWaiting(0, 1);
    const dave = kit.client.acquire({ owner: 'dave', sandbox: 'd', groups: [0], timeoutMs: 30_000 });
    await kit.untilWaiting(0, 2);
    await kit.addReady('c3', '10.4.0.3', 0);
    expect((await dave).vmName).toBe('c3');
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(1);
    // carol's request still waits; closing the kit sends it back to the queue.
    void carol.catch(() => undefined);
  }, 30_000);

  it('a new request does not overtake one already waiting for the same VM', async () => {
    kit = await createAcquireKit('acq-no-overtake');
    const first = kit.client.acquire({ owner: 'erin', sandbox: 's', groups: [0], timeoutMs: 30_000 });
    await kit.untilWaiting(0, 1);
    // A VM appears and, at the same moment, a direct caller in line behind erin tries for it.
    const keys = kit.keys;
    const lateWaiter = { member: `${'9'.repeat(15)}|late`, priority: 0, deadline: Date.now() + 30_000, jobId: 'late' };
    await kit.addReady('n1', '10.5.0.1', 0);
    const late = await kit.ctx.vmm.tryAcquireVm({ groups: [0], owner: 'frank', sandbox: 's', workerId: 'w' }, lateWaiter);
    const erin = await first;
    expect(erin.vmName).toBe('n1');
    expect(['none', 'deferred']).toContain(late.status);
    await kit.ctx.vmm.leaveAcquireLine(lateWaiter, ['base']);
    expect(await kit.redis.zcard(keys.waiters('base'))).toBe(0);
  }, 30_000);
});
