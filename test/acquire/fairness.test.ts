import { Job } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { acquireJobId } from '../../src/client/vmPoolClient.js';
import type { VmAssignment } from '../../queues/acquire.js';
import { PoolScripts } from '../../src/pool/poolScripts.js';
import { poolKeyBase } from '../../src/pool/keys.js';
import { ReplyCodes } from '../../src/pool/replyCodes.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from './fixtures.js';

// The fair acquire line: waiting requests are parked (they hold no worker), owners take turns,
// an owner at max_vm_per_user never holds back another, and the order holds past any number of
// waiters. The safety sweep is 60 s (fixtures): every request served here was woken by the line.
let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

const settled = <T>(p: Promise<T>) => p.then((value) => ({ value }), (error: Error) => ({ error }));

function limits(maxPerUser: number) {
  return acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: maxPerUser }] });
}

describe('the fair acquire line', () => {
  it('an owner at max_vm_per_user with more waiting requests than worker slots does not starve another owner (head-of-line)', async () => {
    // 5 worker slots, as in the issue. On main the 10 waiting requests of `heavy` held every slot and
    // bob's job never left BullMQ's wait list: NoVmAvailable while 2 clean VMs were free.
    kit = await createAcquireKit('fair-hol', limits(2), 5);
    await kit.addReady('h1', '10.40.0.1');
    await kit.addReady('h2', '10.40.0.2');
    await kit.client.acquire({ owner: 'heavy', sandbox: 's', groups: [0] });
    await kit.client.acquire({ owner: 'heavy', sandbox: 's', groups: [0] });
    await kit.addReady('free1', '10.40.0.3');
    await kit.addReady('free2', '10.40.0.4');
    const heavy = Array.from({ length: 10 }, (_, i) => settled(kit!.client.acquire({ owner: 'heavy', sandbox: 's', groups: [0], taskId: `hol-heavy-${i}`, timeoutMs: 30_000 })));
    // All 10 are in the line (on main only the 5 that held a worker slot were).
    await kit.untilWaiting(0, 10);
    const bob = await kit.client.acquire({ owner: 'bob', sandbox: 'b', groups: [0], timeoutMs: 5_000 });
    expect(['free1', 'free2']).toContain(bob.vmName);
    // The heavy owner's requests are parked in the line: none holds a worker.
    const states = await Promise.all(Array.from({ length: 10 }, async (_, i) => (await Job.fromId(kit!.queue, acquireJobId(`hol-heavy-${i}`, 'heavy')))!.getState()));
    expect(states.filter((s) => s === 'active')).toEqual([]);
    expect(await kit.redis.hget(kit.keys.ownerVms('base'), 'heavy')).toBe('2');
    // Withdraw the heavy requests (they would wait until their timeout).
    for (let i = 0; i < 10; i++) {
      const job = await Job.fromId(kit.queue, acquireJobId(`hol-heavy-${i}`, 'heavy'));
      await kit.ctx.vmm.cancelAcquire({ member: `${String(job!.timestamp).padStart(15, '0')}|${job!.id}`, jobId: job!.id! }, 'test over', 60_000);
      await job!.promote().catch(() => undefined);
    }
    const outcomes = await Promise.all(heavy);
    expect(outcomes.every((o) => 'error' in o && /cancelled/.test(o.error.message))).toBe(true);
  }, 60_000);

  it('keeps first come, first served past 200 ineligible waiters ahead (no scan window)', async () => {
    // On main the acquire script looked at most 200 requests ahead: with 210 requests of an owner at
    // max_vm_per_user ahead, carol (later) took a VM that became ready ahead of alice (earlier). Here
    // the VM becomes ready and carol's attempt runs in one MULTI, before alice's wake could.
    // 211 requests of one owner wait: above the default max_waiting_per_owner (100).
    kit = await createAcquireKit('fair-200', acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 1, max_waiting_per_owner: 1000 }] }), 300);
    await kit.addReady('held', '10.41.0.1');
    await kit.client.acquire({ owner: 'heavy', sandbox: 's', groups: [0] });
    const heavy = Array.from({ length: 210 }, (_, i) => settled(kit!.client.acquire({ owner: 'heavy', sandbox: 's', groups: [0], taskId: `w200-${i}`, timeoutMs: 40_000 })));
    await kit.untilWaiting(0, 210);
    const alice = settled(kit.client.acquire({ owner: 'alice', sandbox: 'a', groups: [0], timeoutMs: 20_000 }));
    await kit.untilWaiting(0, 211);
    await kit.ctx.vmm.addVmToPool('10.41.0.2', 'next1', 'base');
    await kit.ctx.vmm.startVmCheck('next1');
    new PoolScripts(kit.redis, kit.prefix); // defines the pool's commands on kit.redis
    const base = poolKeyBase(kit.prefix);
    const now = Date.now();
    const carolWaiter = acquireWaiterMember(now, 'acquire-carol');
    // acquireVm's ARGV as VmManager.tryAcquireVm builds it for a waiting request.
    const carolArgs = [now, 'carol', 'c', 'test', '', '', '', 'carol-lease', carolWaiter, 0, now + 20_000, 'acquire-carol', 1, 0, 1, 300_000, 100];
    const multi = kit.redis.multi() as unknown as Record<string, (...a: unknown[]) => unknown> & { exec(): Promise<[Error | null, unknown][]> };
    multi.vmpoolRecordHealthCheckResult!(base, 'next1', '1', now, 3);
    multi.vmpoolAcquireVm!(base, ...carolArgs);
    const [, [, carolReply]] = (await multi.exec()) as [unknown, [null, unknown[]]];
    expect(carolReply[0], 'carol must not take the VM ahead of alice').toBe(ReplyCodes.NO_VM);
    const a = await alice;
    if ('error' in a) throw a.error;
    expect(a.value.vmName).toBe('next1');
    await kit.ctx.vmm.leaveAcquireLine({ member: carolWaiter, jobId: 'acquire-carol', priority: 0, deadline: 0 }, ['base']);
    // The heavy owner is still at its limit: none of its 210 requests was served.
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(210);
    void heavy;
  }, 120_000);

  it('serves owners round-robin within a priority, each owner first come first served, priority first', async () => {
    kit = await createAcquireKit('fair-rr', limits(10), 5);
    const served: string[] = [];
    const ask = (owner: string, i: number, priority?: number) =>
      kit!.client.acquire({ owner, sandbox: 's', groups: [0], taskId: `rr-${owner}-${i}`, timeoutMs: 40_000 }, priority ? { priority } : {}).then((a: VmAssignment) => {
        served.push(`${owner}${i}`);
        return a;
      });
    const pending: Promise<VmAssignment>[] = [];
    // heavy asks 4 times first, then light twice, then a high-priority (1) and a low-priority (5) request.
    for (let i = 1; i <= 4; i++) {
      pending.push(ask('heavy', i));
      await kit.untilWaiting(0, i);
    }
    pending.push(ask('light', 1));
    await kit.untilWaiting(0, 5);
    pending.push(ask('light', 2));
    await kit.untilWaiting(0, 6);
    pending.push(ask('low', 1, 5));
    await kit.untilWaiting(0, 7);
    pending.push(ask('urgent', 1, 1));
    await kit.untilWaiting(0, 8);
    for (let n = 1; n <= 8; n++) {
      await kit.addReady(`rr${n}`, `10.42.0.${n}`);
      await until(async () => served.length === n, `request ${n} served`);
    }
    // Priority 0 (none) comes first in BullMQ: then heavy and light alternate, each in its own
    // order; then priority 1, then 5.
    expect(served).toEqual(['heavy1', 'light1', 'heavy2', 'light2', 'heavy3', 'heavy4', 'urgent1', 'low1']);
    await Promise.all(pending);
  }, 90_000);

  it('a waiting request says why it waits in its job progress, and the final NoVmAvailable names the constraint', async () => {
    kit = await createAcquireKit('fair-why', limits(1), 5);
    await kit.addReady('w1', '10.43.0.1');
    await kit.client.acquire({ owner: 'dora', sandbox: 's', groups: [0] });
    await kit.addReady('w2', '10.43.0.2');
    const pending = settled(kit.client.acquire({ owner: 'dora', sandbox: 's', groups: [0], taskId: 'why-dora', timeoutMs: 1_500 }));
    const job = await until(async () => {
      const j = await Job.fromId(kit!.queue, acquireJobId('why-dora', 'dora'));
      return (j?.progress as { waiting?: unknown } | undefined)?.waiting !== undefined;
    }, 'the progress').then(() => Job.fromId(kit!.queue, acquireJobId('why-dora', 'dora')));
    expect((job!.progress as { waiting: unknown }).waiting).toMatchObject({
      reason: 'owner_limit',
      groups: [{ group: 'base', groupName: 'base', reason: 'owner_limit', ownerVms: 1, maxVmPerUser: 1, ownerPosition: 1 }],
    });
    const outcome = await pending;
    expect('error' in outcome && outcome.error.message).toMatch(/last blocking constraint: owner_limit in base\(0\)/);
    // The free VM was never given to a request that could not take it.
    expect((await kit.ctx.vmm.getVmByName('w2')).state).toBe('ready');
  }, 30_000);
});
