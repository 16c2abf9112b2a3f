import { Queue } from 'bullmq';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LeaseLost, NoVmAvailable, VmDescriptorNotFound } from '../../src/pool/types.js';
import { VmPoolClient } from '../../src/client/vmPoolClient.js';
import { HEALTH_QUEUE } from '../../queues/health.js';
import { TERMINATE_QUEUE, terminateJobId } from '../../queues/terminate.js';
import { createPoolKit, T0, type PoolKit } from '../pool/fixtures/kit.js';

let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('leases', {
    groups: [
      { name: 'term', lease_timeout: 60, max_vm_per_user: 4 },
      { name: 'back', lease_timeout: 30, on_lease_expiry: 'release', max_vm_per_user: 4 },
    ],
  });
});
afterAll(async () => {
  await kit.close();
});
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

const req = (group: number, taskId = 't1') => ({ groups: [group], owner: 'alice', sandbox: 's', workerId: 'w', taskId });

async function lease(vmName: string) {
  const [id, expires, ms] = await kit.redis.hmget(kit.keys.vm(vmName), 'lease_id', 'lease_expires_at', 'lease_timeout_ms');
  return { id, expires: expires === null ? null : Number(expires), ms, score: await kit.redis.zscore(kit.keys.leases, vmName) };
}

describe('leases', () => {
  it('acquireVm keeps its contract and sets a lease of the group timeout', async () => {
    await kit.addReady('a1', '10.6.0.1', 0);
    const vm = await kit.vmm.acquireVm(req(0));
    expect(vm).toEqual(await kit.vmm.getVmByName('a1'));
    const l = await lease('a1');
    expect(l.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(l).toMatchObject({ expires: T0 + 1000 + 60_000, ms: '60000', score: String(T0 + 1000 + 60_000) });
  });

  it('renewLease extends by the stored timeout, only for the holder', async () => {
    await kit.addReady('a1', '10.6.0.1', 1);
    const attempt = await kit.vmm.tryAcquireVm(req(1));
    if (attempt.status !== 'acquired') throw new Error(attempt.status);
    kit.clock.now = T0 + 20_000;
    expect(await kit.vmm.renewLease('a1', attempt.leaseId)).toBe(T0 + 20_000 + 30_000);
    expect((await lease('a1')).score).toBe(String(T0 + 50_000));
    await expect(kit.vmm.renewLease('a1', 'not-the-lease')).rejects.toThrow(LeaseLost);
    expect((await lease('a1')).expires).toBe(T0 + 50_000);
    await expect(kit.vmm.renewLease('nope', attempt.leaseId)).rejects.toThrow(VmDescriptorNotFound);
  });

  it('releaseVm with a lease id refuses another lease and changes nothing; without one it is unchanged', async () => {
    await kit.addReady('a1', '10.6.0.1', 0);
    const attempt = await kit.vmm.tryAcquireVm(req(0));
    if (attempt.status !== 'acquired') throw new Error(attempt.status);
    await expect(kit.vmm.releaseVm('a1', 'stale-lease')).rejects.toThrow(LeaseLost);
    expect((await kit.vmm.getVmByName('a1')).state).toBe('in_use');
    expect(await kit.vmm.releaseVm('a1', attempt.leaseId)).toBe(true);
    const after = await lease('a1');
    expect(after).toEqual({ id: null, expires: null, ms: null, score: null });
    expect(await kit.vmm.releaseVm('a1', attempt.leaseId)).toBe(false);
    // One-argument form, as before.
    await kit.vmm.acquireVm(req(0, 't2'));
    expect(await kit.vmm.releaseVm('a1')).toBe(true);
    expect(await kit.vmm.renewLease('a1', attempt.leaseId).catch((e: unknown) => e)).toBeInstanceOf(LeaseLost);
  });

  it('the client renews and releases through the scripts, without config, refusing a wrong lease', async () => {
    await kit.addReady('a1', '10.6.0.1', 0);
    const attempt = await kit.vmm.tryAcquireVm(req(0));
    if (attempt.status !== 'acquired') throw new Error(attempt.status);
    const client = new VmPoolClient({ redis: kit.redis, prefix: kit.prefix, clock: () => kit.clock.now });
    try {
      const assignment = { vmName: 'a1', vmIp: '10.6.0.1', group: 'term', leaseId: attempt.leaseId, leaseExpiresAt: attempt.leaseExpiresAt };
      const wrong = { ...assignment, leaseId: 'wrong' };
      await expect(client.renew(wrong)).rejects.toThrow(LeaseLost);
      expect(await client.release(wrong)).toBe(false);
      expect((await kit.vmm.getVmByName('a1')).state).toBe('in_use');
      kit.clock.now = T0 + 10_000;
      expect((await client.renew(assignment)).leaseExpiresAt).toBe(T0 + 70_000);
      expect(await client.release(assignment)).toBe(true);
      expect((await kit.vmm.getVmByName('a1')).state).toBe('ready');
      expect(await client.release(assignment)).toBe(false);
    } finally {
      await client.close();
    }
  });

  it('leaving in_use any other way (failed check, termination) ends the lease', async () => {
    await kit.addReady('a1', '10.6.0.1', 0);
    await kit.vmm.acquireVm(req(0));
    await kit.vmm.startVmTermination('a1');
    expect(await lease('a1')).toEqual({ id: null, expires: null, ms: null, score: null });
  });
});

describe('expireLeases', () => {
  it('terminates at expiry (not before) and enqueues the terminate job with reason lease_expired', async () => {
    await kit.addReady('a1', '10.6.0.1', 0);
    await kit.vmm.acquireVm(req(0));
    const expiry = T0 + 1000 + 60_000;
    kit.clock.now = expiry - 1;
    expect(await kit.vmm.expireLeases()).toEqual([]);
    expect((await kit.vmm.getVmByName('a1')).state).toBe('in_use');
    kit.clock.now = expiry;
    expect(await kit.vmm.expireLeases()).toEqual([{ vmName: 'a1', action: 'terminate' }]);
    const vm = await kit.vmm.getVmByName('a1');
    expect(vm).toMatchObject({ state: 'terminating', terminatingSince: expiry });
    expect(await lease('a1')).toEqual({ id: null, expires: null, ms: null, score: null });
    const queue = new Queue(TERMINATE_QUEUE, { connection: kit.redis, prefix: kit.prefix });
    try {
      const job = await queue.getJob(terminateJobId('a1', expiry));
      expect(job?.data).toEqual({ vmName: 'a1', reason: 'lease_expired' });
    } finally {
      await queue.close();
    }
    expect(await kit.vmm.expireLeases()).toEqual([]);
  });

  it('a renewed lease does not expire at its old time', async () => {
    await kit.addReady('a1', '10.6.0.1', 0);
    const attempt = await kit.vmm.tryAcquireVm(req(0));
    if (attempt.status !== 'acquired') throw new Error(attempt.status);
    kit.clock.now = T0 + 50_000;
    await kit.vmm.renewLease('a1', attempt.leaseId);
    kit.clock.now = T0 + 61_000;
    expect(await kit.vmm.expireLeases()).toEqual([]);
  });

  it('release policy: the VM is released (dirty, into check_health) and a health check is enqueued', async () => {
    await kit.addReady('b1', '10.6.0.2', 1);
    await kit.addReady('a1', '10.6.0.1', 0);
    await kit.vmm.acquireVm(req(1, 'tb'));
    await kit.vmm.acquireVm(req(0, 'ta'));
    kit.clock.now = T0 + 1000 + 30_000;
    expect(await kit.vmm.expireLeases()).toEqual([{ vmName: 'b1', action: 'release' }]);
    // Not ready: its state after the lapsed build is unknown until the health check passes.
    expect(await kit.vmm.getVmByName('b1')).toMatchObject({
      state: 'check_health',
      owner: 'alice',
      taskId: null,
      buildsCount: 1,
      lastHealthCheck: T0 + 1000 + 30_000,
    });
    expect(await kit.vmm.getVmByTaskId('tb')).toBeNull();
    expect((await kit.vmm.getVmByName('a1')).state).toBe('in_use');
    const queue = new Queue(HEALTH_QUEUE, { connection: kit.redis, prefix: kit.prefix });
    try {
      const jobs = await queue.getJobs(['waiting', 'prioritized', 'delayed']);
      expect(jobs.map((j) => j.data)).toEqual([{ vmName: 'b1' }]);
    } finally {
      await queue.close();
    }
  });

  it('release policy: the same owner and sandbox get no VM until the health check passes, then get it back', async () => {
    await kit.addReady('b1', '10.6.0.2', 1);
    await kit.vmm.acquireVm(req(1, 'tb'));
    kit.clock.now = T0 + 1000 + 30_000;
    expect(await kit.vmm.expireLeases()).toEqual([{ vmName: 'b1', action: 'release' }]);
    await expect(kit.vmm.acquireVm(req(1, 'tb2'))).rejects.toThrow(NoVmAvailable);
    // The health job takes over the check that expireLeases started.
    kit.clock.now += 1000;
    expect(await kit.vmm.startVmCheck('b1')).toBe(true);
    await expect(kit.vmm.acquireVm(req(1, 'tb2'))).rejects.toThrow(NoVmAvailable);
    // A second start is refused again (the takeover happens once).
    expect(await kit.vmm.startVmCheck('b1')).toBe(false);
    expect((await kit.vmm.recordHealthCheckResult('b1', true)).outcome).toBe('ok');
    const vm = await kit.vmm.acquireVm(req(1, 'tb2'));
    expect(vm).toMatchObject({ vmName: 'b1', owner: 'alice', taskId: 'tb2', buildsCount: 1 });
  });

  it('release policy: a failed check after expiry leaves the VM out of the pool (check_health_failed)', async () => {
    await kit.addReady('b1', '10.6.0.2', 1);
    await kit.vmm.acquireVm(req(1, 'tb'));
    kit.clock.now = T0 + 1000 + 30_000;
    await kit.vmm.expireLeases();
    expect(await kit.vmm.startVmCheck('b1')).toBe(true);
    expect((await kit.vmm.recordHealthCheckResult('b1', false)).vm.state).toBe('check_health_failed');
    await expect(kit.vmm.acquireVm(req(1, 'tb2'))).rejects.toThrow(NoVmAvailable);
  });

  it('handles at most a batch per call, oldest expiry first', async () => {
    for (let i = 1; i <= 3; i++) {
      await kit.addReady(`v${i}`, `10.6.1.${i}`, 0);
      kit.clock.now = T0 + 1000 + i;
      await kit.vmm.acquireVm(req(0, `t${i}`));
    }
    kit.clock.now = T0 + 200_000;
    expect(await kit.vmm.expireLeases(2)).toEqual([
      { vmName: 'v1', action: 'terminate' },
      { vmName: 'v2', action: 'terminate' },
    ]);
    expect(await kit.vmm.expireLeases(2)).toEqual([{ vmName: 'v3', action: 'terminate' }]);
  });
});
