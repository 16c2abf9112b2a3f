import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { acquireWaiterMember, type AcquireWaiter } from '../../src/pool/types.js';
import { groupSummaries } from '../../src/poolView.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

// max_resources_per_owner: VMs of 4 cores, an owner may have 8 cores (2 VMs) although
// max_vm_per_user allows 5. Enforced by the acquire script and the line, as max_vm_per_user is.
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-owner-resources', {
    groups: [{ name: 'base', max_vm_per_user: 5, resources: { cores: 4 }, max_resources_per_owner: { cores: 8 } }],
  });
});
afterAll(async () => kit.close());
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

let seq = 0;
function waiter(): AcquireWaiter {
  seq += 1;
  const jobId = `job-${seq}`;
  return { member: acquireWaiterMember(T0, jobId), jobId, priority: 0, deadline: T0 + 60_000 };
}
const req = (owner: string) => ({ groups: [0], owner, sandbox: `${owner}/s`, workerId: 'w' });

describe('max_resources_per_owner (real Redis)', () => {
  it('an owner at its cores waits while a clean VM is ready; the line serves the next owner; a VM gone lets it in', async () => {
    await kit.addReady('v1', '10.9.0.1');
    await kit.addReady('v2', '10.9.0.2');
    await kit.addReady('v3', '10.9.0.3');
    const first = await kit.vmm.tryAcquireVm(req('alice'), waiter());
    expect(first.status).toBe('acquired');
    expect((await kit.vmm.tryAcquireVm(req('alice'), waiter())).status).toBe('acquired');
    // 8 cores bound: a clean VM is ready, but alice's third request waits.
    const third = waiter();
    expect((await kit.vmm.tryAcquireVm(req('alice'), third)).status).toBe('none');
    expect(await kit.redis.zcard(kit.keys.readyClean('base'))).toBe(1);
    expect(await kit.redis.hget(kit.keys.ownerVms('base'), 'alice')).toBe('2');
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 'base')).toBe(false);
    expect(await kit.vmm.canUserAcquireMoreVm('bob', 'base')).toBe(true);
    // A sweep skips alice (blocked) and leaves the VM to whoever comes next.
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    expect((await kit.vmm.tryAcquireVm(req('bob'), waiter())).status).toBe('acquired');
    // One of alice's VMs goes: she is under her cores again, and the next clean VM is hers.
    if (first.status !== 'acquired') throw new Error('unreachable');
    expect(await kit.vmm.startVmTermination(first.vm.vmName)).toBe(true);
    await kit.vmm.removeVmFromPool(first.vm.vmName);
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 'base')).toBe(true);
    await kit.addReady('v4', '10.9.0.4');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([third.jobId]);
    expect(await kit.redis.hget(kit.keys.ownerVms('base'), 'alice')).toBe('2');
  });

  it('GET /groups (groupSummaries) shows the owner limit in force beside max_vm_per_user', async () => {
    const [base] = await groupSummaries(kit.vmm);
    expect(base!.limits).toMatchObject({ max_vm_per_user: 5, owner_vm_limit: 2 });
  });
});
