import { Job } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { acquireJobError, acquireSetRequestId, addAcquireSetJob, type AcquireSetRequestData, type VmSetAssignment } from '../../queues/acquire.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { describeWait, type WaitStatus } from '../../src/acquire/why.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from './fixtures.js';

// VM sets as acquire-set jobs: a set waits in the fair line as ONE request and takes all its VMs in
// one step when its turn comes and all can be had; nothing is assigned to it before. The safety
// sweep is 60 s (fixtures): every set served here after waiting was served by the line's dispatch.
let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

function config(maxPerUser = 3, extra: Record<string, unknown> = {}) {
  return acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: maxPerUser, ...extra }, { name: 'arm', archs: ['aarch64'], max_vm_per_user: maxPerUser }] });
}

async function enqueueSet(k: AcquireKit, data: AcquireSetRequestData): Promise<Job> {
  const jobId = acquireSetRequestId(data.owner, data.requestId);
  return addAcquireSetJob(k.queue, data, { jobId, timestamp: Date.now() });
}

/** The set job's outcome once it finished: its assignment, or the error it stands for. */
async function outcome(k: AcquireKit, job: Job, limitMs = 15_000): Promise<{ value: VmSetAssignment } | { error: Error }> {
  await until(async () => ['completed', 'failed'].includes(await job.getState()), `set job ${job.id} to finish`, limitMs);
  const stored = (await Job.fromId(k.queue, String(job.id)))!;
  return stored.returnvalue ? { value: stored.returnvalue as VmSetAssignment } : { error: acquireJobError(stored) };
}

async function served(k: AcquireKit, job: Job): Promise<VmSetAssignment> {
  const o = await outcome(k, job);
  if ('error' in o) throw o.error;
  return o.value;
}

async function inUse(k: AcquireKit): Promise<string[]> {
  return (await k.ctx.vmm.getAllVmRecords()).filter((v) => v.state === 'in_use').map((v) => v.vmName).sort();
}

const twoBase = (owner: string, requestId: string, sandbox = `${owner}/multi`): AcquireSetRequestData => ({
  owner,
  sandbox,
  requestId,
  vms: [{ groups: ['base'] }, { groups: ['base'] }],
  timeoutMs: 20_000,
});

describe('VM sets in the acquire line (acquire-set jobs, real Redis)', () => {
  it('waits as one request holding nothing, counts each VM as demand, and takes all at once', async () => {
    kit = await createAcquireKit('set-line-wait', config());
    await kit.addReady('b1', '10.60.0.1');
    const job = await enqueueSet(kit, { owner: 'alice', sandbox: 'a/1', requestId: 'r1', vms: [{ groups: ['base'] }, { arch: 'x86_64' }, { groups: ['arm'] }], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 1);
    await kit.untilWaiting('arm', 1);
    await until(async () => (await job.getState()) === 'delayed', 'the set to park');
    // One request in each of its groups' lines, demand per item (2 in base, 1 in arm); nothing assigned.
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(1);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(2);
    expect(await kit.ctx.vmm.countDemand('arm')).toBe(1);
    expect(await inUse(kit)).toEqual([]);
    await kit.addReady('b2', '10.60.0.2');
    expect(await inUse(kit)).toEqual([]);
    await kit.addReady('a1', '10.60.0.3', 'arm');
    const set = await served(kit, job);
    expect(set.vms.map((v) => v.vmName).sort()).toEqual(['a1', 'b1', 'b2']);
    expect(set.vms[2]!.vmName).toBe('a1');
    expect(new Set(set.vms.map((v) => v.leaseId)).size).toBe(3);
    expect(set.requestedAt).toBe(job.timestamp);
    expect(await inUse(kit)).toEqual(['a1', 'b1', 'b2']);
    // Out of every line, no demand left.
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(0);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
    expect(await kit.ctx.vmm.countDemand('arm')).toBe(0);
    expect(await kit.redis.hlen(kit.keys.waiterInfo)).toBe(0);
    // Asking again with the same request id joins the finished job: the same VMs.
    const again = await enqueueSet(kit, { owner: 'alice', sandbox: 'a/1', requestId: 'r1', vms: [{ groups: ['base'] }, { arch: 'x86_64' }, { groups: ['arm'] }] });
    expect((await served(kit, again)).vms.map((v) => v.leaseId)).toEqual(set.vms.map((v) => v.leaseId));
  }, 30_000);

  it('names the VMs it cannot have now in its progress (WaitStatus.unavailableVms), and in its failure when it times out', async () => {
    kit = await createAcquireKit('set-line-unavailable', config());
    // Two base VMs ready, no arm VM (as while arm's spawn breaker is open): the set's third VM is missing.
    await kit.addReady('u1', '10.68.0.1');
    await kit.addReady('u2', '10.68.0.2');
    const job = await enqueueSet(kit, { owner: 'alice', sandbox: 'a/u', requestId: 'unavailable', vms: [{ groups: ['base'] }, { arch: 'x86_64' }, { groups: ['arm'] }], timeoutMs: 2_000 });
    await until(async () => (await job.getState()) === 'delayed', 'the set to park');
    const waiting = ((await Job.fromId(kit.queue, String(job.id)))!.progress as { waiting: WaitStatus }).waiting;
    expect(waiting).toMatchObject({ set: 3, unavailableVms: [{ index: 3, groups: ['arm'] }] });
    expect(describeWait(waiting)).toMatch(/^no_ready_vm in base\(0\).*; no_ready_vm in arm\(1\).*; VM 3 of 3 \(arm\) cannot be had now$/);
    const o = await outcome(kit, job);
    expect('error' in o && o.error.message).toMatch(/last blocking constraint: .*VM 3 of 3 \(arm\) cannot be had now/);
    expect(await inUse(kit)).toEqual([]);
  }, 30_000);

  it('a set whose turn it is keeps the ready VMs it can use; only VMs beyond them go to the requests behind it', async () => {
    kit = await createAcquireKit('set-line-keep', config());
    const set = await enqueueSet(kit, twoBase('alice', 'keep'));
    await kit.untilWaiting('base', 1);
    const bob = kit.client.acquire({ owner: 'bob', sandbox: 'b', groups: ['base'], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 2);
    // One VM: alice's set is first in line and needs two; bob, behind it, does not take it.
    await kit.addReady('k1', '10.61.0.1');
    await new Promise((r) => setTimeout(r, 300));
    expect(await inUse(kit)).toEqual([]);
    expect(await set.getState()).toBe('delayed');
    // The second: the set takes both at once; bob still waits.
    await kit.addReady('k2', '10.61.0.2');
    expect((await served(kit, set)).vms.map((v) => v.vmName).sort()).toEqual(['k1', 'k2']);
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(1);
    await kit.addReady('k3', '10.61.0.3');
    expect((await bob).vmName).toBe('k3');
  }, 30_000);

  it('VMs beyond what the set at the front can use go on down the line at once', async () => {
    kit = await createAcquireKit('set-line-surplus', config());
    const set = await enqueueSet(kit, { ...twoBase('alice', 'surplus'), vms: [{ groups: ['base'] }, { groups: ['arm'] }] });
    await kit.untilWaiting('base', 1);
    const bob = kit.client.acquire({ owner: 'bob', sandbox: 'b', groups: ['base'], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 2);
    await kit.addReady('s1', '10.62.0.1');
    await kit.addReady('s2', '10.62.0.2');
    // Two base VMs ready, the set can use one of them (its other item is arm): bob gets the other.
    const b = await bob;
    expect(['s1', 's2']).toContain(b.vmName);
    expect(await set.getState()).toBe('delayed');
    await kit.addReady('r1', '10.62.0.3', 'arm');
    const vms = (await served(kit, set)).vms.map((v) => v.vmName);
    expect(vms).toEqual([['s1', 's2'].find((n) => n !== b.vmName), 'r1']);
  }, 30_000);

  it('two sets that each need 2 of 3 VMs never deadlock: served in turn, neither ever holding part of the other', async () => {
    kit = await createAcquireKit('set-line-two', config());
    // Same owner and sandbox: the first set's VMs, released, serve the second (dirty reuse).
    const a = await enqueueSet(kit, twoBase('alice', 'two-a', 'alice/mn'));
    await kit.untilWaiting('base', 1);
    const b = await enqueueSet(kit, twoBase('alice', 'two-b', 'alice/mn'));
    await kit.untilWaiting('base', 2);
    // VMs come one at a time; never a VM in use while both sets wait.
    await kit.addReady('t1', '10.63.0.1');
    await new Promise((r) => setTimeout(r, 200));
    expect(await inUse(kit)).toEqual([]);
    await kit.addReady('t2', '10.63.0.2');
    const first = await served(kit, a);
    await kit.addReady('t3', '10.63.0.3');
    await new Promise((r) => setTimeout(r, 200));
    // The first holds two, the third VM alone does not serve the second set: nothing else in use.
    expect(await inUse(kit)).toEqual(first.vms.map((v) => v.vmName).sort());
    expect(await b.getState()).toBe('delayed');
    // The first set ends: its VMs (bound to the sandbox) and the third serve the second.
    for (const v of first.vms) expect(await kit.ctx.vmm.releaseVm(v.vmName, v.leaseId)).toBe(true);
    const second = await served(kit, b);
    expect(second.vms).toHaveLength(2);
    expect(await inUse(kit)).toEqual(second.vms.map((v) => v.vmName).sort());
  }, 30_000);

  it('a set the line served but whose job did not collect it yet gives back every VM when withdrawn', async () => {
    kit = await createAcquireKit('set-line-cancel', config());
    const vmm = kit.ctx.vmm;
    const now = Date.now();
    const waiter = { member: acquireWaiterMember(now, 'set-by-hand'), jobId: 'set-by-hand', priority: 0, deadline: now + 20_000 };
    // The set waits in the line (no job: nobody collects what the line gives it).
    const attempt = await vmm.tryAcquireVmSet({ owner: 'alice', sandbox: 's', workerId: 'w', items: [{ groups: ['base'] }, { groups: ['base'] }] }, { waiter });
    expect(attempt.status).toBe('none');
    await kit.addReady('c1', '10.64.0.1');
    await kit.addReady('c2', '10.64.0.2');
    // No acquire job ran in this process: its line runtime does not listen; the dispatch by hand.
    expect(await vmm.dispatchAcquireLine('base')).toEqual(['set-by-hand']);
    expect(await inUse(kit)).toEqual(['c1', 'c2']);
    expect(await kit.redis.zscore(kit.keys.acquireAssigned, 'set-by-hand')).not.toBeNull();
    await vmm.cancelAcquire(waiter, 'builder gone', 60_000);
    expect(await inUse(kit)).toEqual([]);
    const events = (await vmm.reader.auditEvents({ limit: 100 })).events.filter((e) => e.event === 'released');
    expect(events.map((e) => [e.vm, e.reason]).sort()).toEqual([
      ['c1', 'withdrawn'],
      ['c2', 'withdrawn'],
    ]);
    // Its next attempt ends as cancelled, with nothing.
    expect(await vmm.tryAcquireVmSet({ owner: 'alice', sandbox: 's', workerId: 'w', items: [{ groups: ['base'] }, { groups: ['base'] }] }, { waiter })).toEqual({
      status: 'cancelled',
      reason: 'builder gone',
    });
  }, 30_000);

  it('a withdrawn waiting set fails as cancelled and leaves the line', async () => {
    kit = await createAcquireKit('set-line-withdraw', config());
    const job = await enqueueSet(kit, twoBase('alice', 'withdraw'));
    await until(async () => (await job.getState()) === 'delayed', 'the set to park');
    await kit.ctx.vmm.cancelAcquire({ member: acquireWaiterMember(job.timestamp, String(job.id)), jobId: String(job.id) }, 'test over', 60_000);
    await job.promote();
    const o = await outcome(kit, job);
    expect('error' in o && o.error.message).toMatch(/cancelled: test over/);
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(0);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
  }, 30_000);

  it('times out as no_vm_available having taken nothing, and leaves the line', async () => {
    kit = await createAcquireKit('set-line-timeout', config());
    await kit.addReady('o1', '10.65.0.1');
    const job = await enqueueSet(kit, { ...twoBase('alice', 'timeout'), timeoutMs: 400 });
    const o = await outcome(kit, job);
    expect('error' in o && o.error.name).toBe('NoVmAvailable');
    expect('error' in o && o.error.message).toMatch(/no set of 2 VMs for owner alice/);
    expect(await inUse(kit)).toEqual([]);
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(0);
    expect(await kit.redis.hlen(kit.keys.waiterInfo)).toBe(0);
  }, 30_000);

  it('refuses, changing nothing: max_waiting_per_owner, a set no owner could ever have, an unknown group, a bad payload', async () => {
    kit = await createAcquireKit('set-line-refuse', config(3, { max_waiting_per_owner: 1 }));
    const single = kit.client.acquire({ owner: 'alice', sandbox: 'a', groups: ['base'], timeoutMs: 20_000 }).catch((e: Error) => e);
    await kit.untilWaiting('base', 1);
    const capped = await outcome(kit, await enqueueSet(kit, twoBase('alice', 'capped')));
    expect('error' in capped && capped.error.name).toBe('TooManyWaiting');
    const tooBig = await outcome(kit, await enqueueSet(kit, { ...twoBase('bob', 'big'), vms: [{ groups: ['base'] }, { groups: ['base'] }, { groups: ['base'] }, { groups: ['base'] }] }));
    expect('error' in tooBig && tooBig.error.message).toMatch(/asks for 4 VMs of group base, but one owner may have at most 3 there/);
    const unknown = await outcome(kit, await enqueueSet(kit, { ...twoBase('bob', 'unknown'), vms: [{ groups: ['nosuch'] }] }));
    expect('error' in unknown && unknown.error.name).toBe('InvalidVmRequest');
    const bad = await kit.queue.add('acquire-set', { owner: 'bob', sandbox: 's', vms: [] }, { jobId: 'set-bad' });
    const badOutcome = await outcome(kit, bad);
    expect('error' in badOutcome && badOutcome.error.message).toMatch(/vms/);
    // Only alice's single request waits; no demand from the refused sets.
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(1);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(1);
    await kit.addReady('f1', '10.66.0.1');
    expect(((await single) as { vmName: string }).vmName).toBe('f1');
  }, 30_000);

  it("spills over to fallback_groups while a group is full (all its VMs from the fallback), and keeps to its groups with strictGroup", async () => {
    kit = await createAcquireKit(
      'set-line-spill',
      acquireConfig({
        groups: [
          { name: 'base', archs: ['x86_64'], max_vm_per_user: 3, max_vm_total: 1, fallback_groups: ['spare'] },
          { name: 'spare', archs: ['x86_64'], max_vm_per_user: 3 },
        ],
      }),
    );
    // base is full (max_vm_total 1, its VM in use): blocked.
    await kit.addReady('full1', '10.67.0.1', 'base');
    await kit.client.acquire({ owner: 'carol', sandbox: 'c', groups: ['base'] });
    await kit.addReady('sp1', '10.67.0.2', 'spare');
    await kit.addReady('sp2', '10.67.0.3', 'spare');
    // Two VMs of base, more than base could ever give: possible only through its fallback.
    const strict = await outcome(kit, await enqueueSet(kit, { ...twoBase('alice', 'strict'), timeoutMs: 500, strictGroup: true }));
    expect('error' in strict && strict.error.message).toMatch(/asks for 2 VMs of group base, but one owner may have at most 1 there/);
    const set = await served(kit, await enqueueSet(kit, twoBase('alice', 'spill')));
    expect(set.vms.map((v) => [v.vmName, v.group]).sort()).toEqual([
      ['sp1', 'spare'],
      ['sp2', 'spare'],
    ]);
  }, 30_000);
});
