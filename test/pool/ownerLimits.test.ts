import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LineRequests } from '../../src/pool/acquireLine.js';
import { PoolAccess } from '../../src/pool/context.js';
import { TooManyWaiting, acquireWaiterMember, type AcquireWaiter } from '../../src/pool/types.js';
import { createPoolKit, T0, testConfig, type PoolKit } from './fixtures/kit.js';

// Groups 0 and 1: max_vm_per_user 2, max_waiting_per_owner 3.
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-owner-limits', testConfig({ groups: [{ name: 'base', max_vm_per_user: 2, max_waiting_per_owner: 3 }, { name: 'spare', max_vm_per_user: 2, max_waiting_per_owner: 3 }] }));
});
afterAll(async () => kit.close());
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

let seq = 0;
function waiter(deadline = T0 + 60_000): AcquireWaiter {
  seq += 1;
  const jobId = `job-${seq}`;
  return { member: acquireWaiterMember(T0, jobId), jobId, priority: 0, deadline };
}
const req = (owner: string) => ({ groups: [0], owner, sandbox: 's', workerId: 'w' });

async function arrivals(): Promise<number> {
  return [...(await kit.vmm.reader.arrivals('base')).values()].reduce((a, b) => a + b, 0);
}

describe('max_waiting_per_owner in the acquire script', () => {
  it('refuses a request that would wait beyond the cap, changing nothing; another owner still joins', async () => {
    for (let i = 0; i < 3; i++) expect((await kit.vmm.tryAcquireVm(req('flood'), waiter())).status).toBe('none');
    const refused = kit.vmm.tryAcquireVm(req('flood'), waiter());
    await expect(refused).rejects.toThrow(TooManyWaiting);
    await expect(refused).rejects.toMatchObject({ owner: 'flood', group: 'base', limit: 3, retryAfterSeconds: 10 });
    expect(await kit.redis.zcard(kit.keys.ownerLine('base', 'flood'))).toBe(3);
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(3);
    expect((await kit.vmm.tryAcquireVm(req('other'), waiter())).status).toBe('none');
  });

  it('lets a request already in the line run again (a parked job woken)', async () => {
    const first = waiter();
    await kit.vmm.tryAcquireVm(req('flood'), first);
    for (let i = 0; i < 2; i++) await kit.vmm.tryAcquireVm(req('flood'), waiter());
    expect((await kit.vmm.tryAcquireVm(req('flood'), first)).status).toBe('none');
    // Also when it now asks for another group too (a fallback) where its owner is at the cap: it
    // keeps waiting where it waits, but does not join that group's line beyond its cap.
    for (let i = 0; i < 3; i++) await kit.vmm.tryAcquireVm({ ...req('flood'), groups: [1] }, waiter());
    expect((await kit.vmm.tryAcquireVm({ ...req('flood'), groups: [0, 1] }, first)).status).toBe('none');
    expect(await kit.redis.zscore(kit.keys.ownerLine('base', 'flood'), first.member)).not.toBeNull();
    expect(await kit.redis.zcard(kit.keys.ownerLine('spare', 'flood'))).toBe(3);
    expect(await kit.redis.zscore(kit.keys.waiters('spare'), first.member)).toBeNull();
  });

  it('a waiting set that now may use another group too joins no line there beyond its owner\'s cap', async () => {
    const set = (groups: number[]) => ({ owner: 'flood', sandbox: 's', workerId: 'w', items: [{ groups }, { groups }], jobId: 'set-flood' });
    const first: AcquireWaiter = { member: acquireWaiterMember(T0, 'set-flood'), jobId: 'set-flood', priority: 0, deadline: T0 + 60_000 };
    expect((await kit.vmm.tryAcquireVmSet(set([0]), { waiter: first })).status).toBe('none');
    const inSpare = [waiter(), waiter(), waiter()];
    for (const w of inSpare) await kit.vmm.tryAcquireVm({ ...req('flood'), groups: [1] }, w);
    // Its next run may spill over to spare, where flood has 3 requests waiting (the cap).
    expect((await kit.vmm.tryAcquireVmSet(set([0, 1]), { waiter: first })).status).toBe('none');
    expect(await kit.redis.zscore(kit.keys.ownerLine('base', 'flood'), first.member)).not.toBeNull();
    expect(await kit.redis.zcard(kit.keys.ownerLine('spare', 'flood'))).toBe(3);
    expect(await kit.redis.zscore(kit.keys.waiters('spare'), first.member)).toBeNull();
    // Under the cap (one of the three gave up) it joins spare as well.
    await kit.vmm.leaveAcquireLine(inSpare[0]!, ['spare']);
    expect((await kit.vmm.tryAcquireVmSet(set([0, 1]), { waiter: first })).status).toBe('none');
    expect(await kit.redis.zscore(kit.keys.waiters('spare'), first.member)).not.toBeNull();
  });

  it('a waiting request that spills over to a fallback group joins it while its owner is under that cap', async () => {
    const first = waiter();
    await kit.vmm.tryAcquireVm(req('flood'), first);
    expect((await kit.vmm.tryAcquireVm({ ...req('flood'), groups: [0, 1] }, first)).status).toBe('none');
    expect(await kit.redis.zscore(kit.keys.waiters('spare'), first.member)).not.toBeNull();
  });

  it('does not count requests whose time is up: they leave the line when the cap is reached', async () => {
    for (let i = 0; i < 3; i++) await kit.vmm.tryAcquireVm(req('flood'), waiter(T0 + 5000));
    kit.clock.now = T0 + 5000;
    expect((await kit.vmm.tryAcquireVm(req('flood'), waiter())).status).toBe('none');
    expect(await kit.redis.zcard(kit.keys.ownerLine('base', 'flood'))).toBe(1);
  });
});

describe('LineRequests.refuseBeyondWaitingCap (before enqueueing)', () => {
  it('refuses at the cap, not counting expired requests or the caller’s own job', async () => {
    const line = new LineRequests(new PoolAccess(kit.redis, kit.prefix), () => kit.clock.now);
    const groups = [{ group: 'base', maxWaitingPerOwner: 3 }];
    const own = waiter();
    await kit.vmm.tryAcquireVm(req('flood'), own);
    await kit.vmm.tryAcquireVm(req('flood'), waiter());
    await kit.vmm.tryAcquireVm(req('flood'), waiter(T0 + 5000));
    await expect(line.refuseBeyondWaitingCap('flood', groups, 'new')).rejects.toThrow(TooManyWaiting);
    await expect(line.refuseBeyondWaitingCap('flood', groups, own.jobId)).resolves.toBeUndefined();
    await expect(line.refuseBeyondWaitingCap('other', groups, 'new')).resolves.toBeUndefined();
    kit.clock.now = T0 + 5000;
    await expect(line.refuseBeyondWaitingCap('flood', groups, 'new')).resolves.toBeUndefined();
  });
});

describe('target_wait arrivals', () => {
  it('counts an arrival only while the owner could still use a VM (max_vm_per_user less its VMs and waiting requests)', async () => {
    await kit.addReady('v1', '10.0.0.1');
    // Served at once: an arrival; the owner now holds one VM of its 2.
    expect((await kit.vmm.tryAcquireVm(req('flood'), waiter())).status).toBe('acquired');
    expect(await arrivals()).toBe(1);
    // One more may wait usefully; the next ones are beyond what it may use.
    for (let i = 0; i < 3; i++) await kit.vmm.tryAcquireVm(req('flood'), waiter());
    expect(await arrivals()).toBe(2);
    // Another owner's request counts.
    await kit.vmm.tryAcquireVm(req('other'), waiter());
    expect(await arrivals()).toBe(3);
  });
});
