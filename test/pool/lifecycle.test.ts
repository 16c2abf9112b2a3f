import { Queue } from 'bullmq';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TERMINATE_QUEUE } from '../../queues/terminate.js';
import { QueueNames } from '../../queues/names.js';
import { VmDescriptorNotFound, VmError, VmStates, type VmState } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

let kit: PoolKit;
let queue: Queue;
beforeAll(async () => {
  kit = await createPoolKit('pool-lifecycle');
  queue = new Queue(TERMINATE_QUEUE, { connection: kit.redis, prefix: kit.prefix });
});
afterAll(async () => {
  await queue.close();
  await kit.close();
});
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

async function terminateJobs() {
  const jobs = await queue.getJobs(['waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed']);
  return jobs.map((j) => ({ id: j.id, data: j.data as { vmName: string; reason: string } })).sort((a, b) => String(a.id).localeCompare(String(b.id)));
}

/** Brings a new VM named `name` to `state` through the public API. */
async function vmIn(name: string, state: VmState, group = 0): Promise<void> {
  await kit.vmm.addVmToPool('10.1.0.1', name, group);
  if (state === VmStates.GOT_IP) return;
  if (state === VmStates.TERMINATING) {
    await kit.vmm.startVmTermination(name);
    return;
  }
  await kit.vmm.startVmCheck(name);
  if (state === VmStates.CHECK_HEALTH) return;
  if (state === VmStates.CHECK_HEALTH_FAILED) {
    await kit.vmm.recordHealthCheckResult(name, false);
    return;
  }
  await kit.vmm.recordHealthCheckResult(name, true);
  if (state === VmStates.READY) return;
  const vm = await kit.vmm.acquireVm({ groups: [group], owner: `o-${name}`, sandbox: 's', workerId: 'w', taskId: `task-${name}` });
  expect(vm.vmName).toBe(name);
}

const ALL: VmState[] = [VmStates.GOT_IP, VmStates.CHECK_HEALTH, VmStates.CHECK_HEALTH_FAILED, VmStates.READY, VmStates.IN_USE, VmStates.TERMINATING];

describe('vm-terminate queue name', () => {
  it('is vm-terminate', () => {
    expect(TERMINATE_QUEUE).toBe('vm-terminate');
    expect(QueueNames.TERMINATE).toBe('vm-terminate');
  });
});

describe('startVmTermination', () => {
  it.each(ALL.filter((s) => s !== VmStates.TERMINATING))('moves %s to terminating, records the time and enqueues one terminate job', async (state) => {
    await vmIn('v', state);
    kit.clock.now = T0 + 4000;
    expect(await kit.vmm.startVmTermination('v')).toBe(true);
    expect(await kit.vmm.getVmByName('v')).toMatchObject({ state: VmStates.TERMINATING, terminatingSince: T0 + 4000 });
    const jobs = await terminateJobs();
    expect(jobs).toHaveLength(1);
    expect(jobs[0]!.data.vmName).toBe('v');
    expect(String(jobs[0]!.id)).not.toContain(':');
    // Not acquirable any more.
    expect(await kit.vmm.getVmsByGroupAndStates('base', [VmStates.READY])).toEqual([]);
  });

  it('leaves a terminating VM alone without allowedPreState, and enqueues nothing', async () => {
    await vmIn('v', VmStates.READY);
    kit.clock.now = T0 + 2000;
    expect(await kit.vmm.startVmTermination('v')).toBe(true);
    kit.clock.now = T0 + 3000;
    expect(await kit.vmm.startVmTermination('v')).toBe(false);
    expect((await kit.vmm.getVmByName('v')).terminatingSince).toBe(T0 + 2000);
    expect(await terminateJobs()).toHaveLength(1);
  });

  it('with allowedPreState acts only from that state', async () => {
    await vmIn('u', VmStates.IN_USE);
    await vmIn('r', VmStates.READY);
    expect(await kit.vmm.startVmTermination('u', VmStates.READY)).toBe(false);
    expect((await kit.vmm.getVmByName('u')).state).toBe(VmStates.IN_USE);
    expect(await terminateJobs()).toEqual([]);
    expect(await kit.vmm.startVmTermination('r', VmStates.READY)).toBe(true);
    expect((await kit.vmm.getVmByName('r')).state).toBe(VmStates.TERMINATING);
    expect((await terminateJobs()).map((j) => j.data.vmName)).toEqual(['r']);
  });

  it('with allowedPreState terminating, requests termination again with a new job', async () => {
    await vmIn('v', VmStates.GOT_IP);
    await kit.vmm.startVmTermination('v');
    kit.clock.now = T0 + 600_000;
    expect(await kit.vmm.startVmTermination('v', VmStates.TERMINATING)).toBe(true);
    expect((await kit.vmm.getVmByName('v')).terminatingSince).toBe(T0 + 600_000);
    const jobs = await terminateJobs();
    expect(jobs).toHaveLength(2);
    expect(jobs.every((j) => j.data.vmName === 'v')).toBe(true);
  });

  it('throws VmDescriptorNotFound for an unknown VM and rejects an unknown pre-state', async () => {
    await expect(kit.vmm.startVmTermination('ghost')).rejects.toThrow(VmDescriptorNotFound);
    await vmIn('v', VmStates.READY);
    await expect(kit.vmm.startVmTermination('v', 'bogus' as VmState)).rejects.toThrow(VmError);
    expect((await kit.vmm.getVmByName('v')).state).toBe(VmStates.READY);
    expect(await terminateJobs()).toEqual([]);
  });
});

describe('removeVmFromPool', () => {
  it('removes a terminating VM from every lookup, index and counter', async () => {
    await vmIn('v', VmStates.IN_USE);
    await vmIn('w', VmStates.READY);
    const owner = 'o-v';
    expect(await kit.vmm.countOwnerVms(owner, 'base')).toBe(1);
    await kit.vmm.startVmTermination('v');
    await kit.vmm.removeVmFromPool('v');
    await expect(kit.vmm.getVmByName('v')).rejects.toThrow(VmDescriptorNotFound);
    expect((await kit.vmm.getAllVms()).map((x) => x.vmName)).toEqual(['w']);
    expect((await kit.vmm.getAllVmsInGroup('base')).map((x) => x.vmName)).toEqual(['w']);
    expect(await kit.vmm.getVmsByGroupAndStates(null, ALL)).toHaveLength(1);
    expect((await kit.vmm.lookupVmsByIp('10.1.0.1')).map((x) => x.vmName)).toEqual(['w']);
    expect(await kit.vmm.getVmByTaskId('task-v')).toBeNull();
    expect(await kit.vmm.countOwnerVms(owner, 'base')).toBe(0);
    expect(await kit.redis.exists(kit.keys.vm('v'), kit.keys.ownerTask(owner, 'task-v'))).toBe(0);
    expect(await kit.redis.hexists(kit.keys.ownerVms('base'), owner)).toBe(0);
    // The name is free again.
    expect((await kit.vmm.addVmToPool('10.1.0.9', 'v', 'arm')).state).toBe(VmStates.GOT_IP);
  });

  it.each(ALL.filter((s) => s !== VmStates.TERMINATING))('refuses to remove a VM in %s with VmError and keeps it', async (state) => {
    await vmIn('v', state);
    const before = await kit.vmm.getVmByName('v');
    const error = await kit.vmm.removeVmFromPool('v').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VmError);
    expect(error).not.toBeInstanceOf(VmDescriptorNotFound);
    expect(await kit.vmm.getVmByName('v')).toEqual(before);
  });

  it('throws VmDescriptorNotFound (a VmError) for an unknown VM', async () => {
    await expect(kit.vmm.removeVmFromPool('ghost')).rejects.toThrow(VmDescriptorNotFound);
  });
});

describe('startVmCheck', () => {
  it.each([
    [VmStates.GOT_IP, VmStates.CHECK_HEALTH],
    [VmStates.READY, VmStates.CHECK_HEALTH],
    [VmStates.CHECK_HEALTH_FAILED, VmStates.CHECK_HEALTH],
    [VmStates.IN_USE, VmStates.IN_USE],
  ])('from %s: moves to %s and records lastHealthCheck', async (from, to) => {
    await vmIn('v', from);
    kit.clock.now = T0 + 50_000;
    expect(await kit.vmm.startVmCheck('v')).toBe(true);
    expect(await kit.vmm.getVmByName('v')).toMatchObject({ state: to, lastHealthCheck: T0 + 50_000 });
  });

  it.each([VmStates.CHECK_HEALTH, VmStates.TERMINATING])('from %s: refuses and changes nothing', async (from) => {
    await vmIn('v', from);
    const before = await kit.vmm.getVmByName('v');
    kit.clock.now = T0 + 50_000;
    expect(await kit.vmm.startVmCheck('v')).toBe(false);
    expect(await kit.vmm.getVmByName('v')).toEqual(before);
  });

  it('a ready VM under check is not handed out', async () => {
    await vmIn('v', VmStates.READY);
    await kit.vmm.startVmCheck('v');
    await expect(kit.vmm.acquireVm({ groups: [0], owner: 'a', sandbox: 's', workerId: 'w' })).rejects.toThrow(/no VM available/);
  });

  it('throws VmDescriptorNotFound for an unknown VM', async () => {
    await expect(kit.vmm.startVmCheck('ghost')).rejects.toThrow(VmDescriptorNotFound);
  });
});

describe('recordHealthCheckResult', () => {
  it('ok from check_health: checkFails 0 and ready', async () => {
    await vmIn('v', VmStates.CHECK_HEALTH_FAILED);
    await kit.vmm.startVmCheck('v');
    expect((await kit.vmm.getVmByName('v')).checkFails).toBe(1);
    const { outcome, vm } = await kit.vmm.recordHealthCheckResult('v', true);
    expect(outcome).toBe('ok');
    expect(vm).toMatchObject({ state: VmStates.READY, checkFails: 0 });
    expect(await kit.vmm.getVmByName('v')).toEqual(vm);
  });

  it('ok from in_use: checkFails 0 and stays in_use', async () => {
    await vmIn('v', VmStates.IN_USE);
    await kit.vmm.recordHealthCheckResult('v', false);
    expect((await kit.vmm.getVmByName('v')).checkFails).toBe(1);
    await kit.vmm.recordHealthCheckResult('v', true);
    expect(await kit.vmm.getVmByName('v')).toMatchObject({ state: VmStates.IN_USE, checkFails: 0 });
    // Released healthy: back to ready.
    await kit.vmm.releaseVm('v');
    expect((await kit.vmm.getVmByName('v')).state).toBe(VmStates.READY);
  });

  it.each([VmStates.GOT_IP, VmStates.READY, VmStates.CHECK_HEALTH_FAILED, VmStates.TERMINATING])('ok from %s is ignored', async (from) => {
    await vmIn('v', from);
    const before = await kit.vmm.getVmByName('v');
    expect((await kit.vmm.recordHealthCheckResult('v', true)).outcome).toBe('ignored');
    expect(await kit.vmm.getVmByName('v')).toEqual(before);
  });

  it('failure from check_health: checkFails + 1 and check_health_failed', async () => {
    await vmIn('v', VmStates.CHECK_HEALTH);
    const { outcome, vm } = await kit.vmm.recordHealthCheckResult('v', false);
    expect(outcome).toBe('failed');
    expect(vm).toMatchObject({ state: VmStates.CHECK_HEALTH_FAILED, checkFails: 1 });
  });

  it('failure from in_use: checkFails + 1, stays in_use', async () => {
    await vmIn('v', VmStates.IN_USE);
    expect((await kit.vmm.recordHealthCheckResult('v', false)).vm).toMatchObject({ state: VmStates.IN_USE, checkFails: 1 });
  });

  it('failure from check_health_failed: checkFails + 1, stays check_health_failed', async () => {
    await vmIn('v', VmStates.CHECK_HEALTH_FAILED);
    expect((await kit.vmm.recordHealthCheckResult('v', false)).vm).toMatchObject({ state: VmStates.CHECK_HEALTH_FAILED, checkFails: 2 });
  });

  it.each([VmStates.GOT_IP, VmStates.READY, VmStates.TERMINATING])('failure from %s is ignored', async (from) => {
    await vmIn('v', from);
    const before = await kit.vmm.getVmByName('v');
    expect((await kit.vmm.recordHealthCheckResult('v', false)).outcome).toBe('ignored');
    expect(await kit.vmm.getVmByName('v')).toEqual(before);
  });

  it('terminates once checkFails exceeds vm_max_check_fails (2 in group 0) and enqueues a terminate job', async () => {
    await vmIn('v', VmStates.GOT_IP);
    for (let i = 1; i <= 2; i++) {
      await kit.vmm.startVmCheck('v');
      const r = await kit.vmm.recordHealthCheckResult('v', false);
      expect(r).toMatchObject({ outcome: 'failed', vm: { state: VmStates.CHECK_HEALTH_FAILED, checkFails: i } });
    }
    expect(await terminateJobs()).toEqual([]);
    await kit.vmm.startVmCheck('v');
    kit.clock.now = T0 + 77_000;
    const r = await kit.vmm.recordHealthCheckResult('v', false);
    expect(r).toMatchObject({ outcome: 'terminating', vm: { state: VmStates.TERMINATING, checkFails: 3, terminatingSince: T0 + 77_000 } });
    const jobs = await terminateJobs();
    expect(jobs).toHaveLength(1);
    expect(jobs[0]!.data).toEqual({ vmName: 'v', reason: 'health_check_failed' });
  });

  it('with vm_max_check_fails 0 (group 1), the first failure terminates, also from in_use', async () => {
    await vmIn('u', VmStates.IN_USE, 1);
    const r = await kit.vmm.recordHealthCheckResult('u', false);
    expect(r.outcome).toBe('terminating');
    expect(await kit.vmm.getVmByName('u')).toMatchObject({ state: VmStates.TERMINATING, checkFails: 1 });
    expect((await terminateJobs()).map((j) => j.data.vmName)).toEqual(['u']);
    expect(await kit.vmm.releaseVm('u')).toBe(false);
  });

  it('throws VmDescriptorNotFound for an unknown VM', async () => {
    await expect(kit.vmm.recordHealthCheckResult('ghost', true)).rejects.toThrow(VmDescriptorNotFound);
  });
});

describe('markVmCheckFailed', () => {
  it('moves check_health to check_health_failed without counting a failure', async () => {
    await vmIn('v', VmStates.CHECK_HEALTH);
    expect(await kit.vmm.markVmCheckFailed('v')).toBe(true);
    expect(await kit.vmm.getVmByName('v')).toMatchObject({ state: VmStates.CHECK_HEALTH_FAILED, checkFails: 0 });
  });

  it.each(ALL.filter((s) => s !== VmStates.CHECK_HEALTH))('refuses from %s and changes nothing', async (from) => {
    await vmIn('v', from);
    const before = await kit.vmm.getVmByName('v');
    expect(await kit.vmm.markVmCheckFailed('v')).toBe(false);
    expect(await kit.vmm.getVmByName('v')).toEqual(before);
  });

  it('throws VmDescriptorNotFound for an unknown VM', async () => {
    await expect(kit.vmm.markVmCheckFailed('ghost')).rejects.toThrow(VmDescriptorNotFound);
  });
});

describe('markServerStart', () => {
  it('records the clock time', async () => {
    kit.clock.now = T0 + 123_456;
    await kit.vmm.markServerStart();
    expect(await kit.vmm.getServerStart()).toBe(T0 + 123_456);
  });
});
