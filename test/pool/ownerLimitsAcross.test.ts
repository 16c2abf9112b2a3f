import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { explainWait, type WaitingRequest } from '../../src/acquire/why.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { acquireWaiterMember, type AcquireAttempt, type AcquireWaiter } from '../../src/pool/types.js';
import { connect } from '../helpers/redis.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

// An owner's limits across groups (the top-level and an account's max_resources_per_owner): VMs of
// 4 cores in two groups, an owner may have 8 cores in all of them together, although each group
// would let it have 5 VMs. Counted in Redis per owner and scope, enforced by the acquire script and
// the line; a bound VM counts until it is removed (released, it stays bound to its owner).
let seq = 0;
function waiter(): AcquireWaiter {
  seq += 1;
  const jobId = `job-${seq}`;
  return { member: acquireWaiterMember(T0, jobId), jobId, priority: 0, deadline: T0 + 60_000 };
}
const req = (owner: string, group: string, sandbox = `${owner}/s`) => ({ groups: [group], owner, sandbox, workerId: 'w' });

function acquired(attempt: AcquireAttempt) {
  if (attempt.status !== 'acquired') throw new Error(`expected acquired, got ${attempt.status}`);
  return attempt;
}

async function usage(kit: PoolKit, scope: string, owner: string): Promise<Record<string, string>> {
  return kit.redis.hgetall(kit.keys.ownerUsage(scope, owner));
}

async function remove(kit: PoolKit, vmName: string): Promise<void> {
  expect(await kit.vmm.startVmTermination(vmName)).toBe(true);
  await kit.vmm.removeVmFromPool(vmName);
}

async function why(kit: PoolKit, w: AcquireWaiter, owner: string, group: string, sandbox: string) {
  const request: WaitingRequest = { owner, sandbox, priority: 0, member: w.member, groups: [group] };
  return explainWait(kit.vmm, kit.vmm.config, request, kit.clock.now);
}

const cores4 = { resources: { cores: 4 }, max_vm_per_user: 5 };

describe('max_resources_per_owner over all groups (real Redis)', () => {
  let kit: PoolKit;
  beforeAll(async () => {
    kit = await createPoolKit('pool-owner-across', { max_resources_per_owner: { cores: 8 }, groups: [{ name: 'a', ...cores4 }, { name: 'b', ...cores4 }] });
  });
  afterAll(async () => kit.close());
  beforeEach(async () => {
    await kit.reset();
    await kit.vmm.markServerStart();
    kit.clock.now = T0 + 1000;
  });

  it("a third clean VM in either group waits as owner_resources while another owner is served; released is not enough, removed is", async () => {
    for (const [name, group] of [['a1', 'a'], ['a2', 'a'], ['a3', 'a'], ['b1', 'b'], ['b2', 'b']] as const) {
      await kit.addReady(name, `10.9.1.${seq++ % 200}`, group);
    }
    const inA = acquired(await kit.vmm.tryAcquireVm(req('alice', 'a'), waiter()));
    acquired(await kit.vmm.tryAcquireVm(req('alice', 'b'), waiter()));
    expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '2', cores: '8' });
    // The VM records what it added, for its removal to subtract.
    expect(JSON.parse((await kit.redis.hget(kit.keys.vm(inA.vm.vmName), 'owner_usage'))!)).toEqual({ s: ['all'], r: { instances: 1, cores: 4 } });

    // 8 cores bound over a and b: clean VMs are ready in both, but her next requests wait, in either group.
    const waitA = waiter();
    const waitB = waiter();
    expect((await kit.vmm.tryAcquireVm(req('alice', 'a', 'alice/t'), waitA)).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm(req('alice', 'b', 'alice/t'), waitB)).status).toBe('none');
    // Without waiting (a call that takes a VM at once or not at all) she gets none either.
    expect((await kit.vmm.tryAcquireVm(req('alice', 'a'))).status).toBe('none');
    expect(await kit.redis.zcard(kit.keys.readyClean('a'))).toBe(2);
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 'a')).toBe(false);
    expect(await kit.vmm.canUserAcquireMoreVm('bob', 'a')).toBe(true);
    expect(await kit.redis.zcard(kit.keys.readyClean('b'))).toBe(1);
    // The dispatcher blocked her in both lines, and noted where.
    expect(await kit.redis.zscore(kit.keys.lineBlocked('a'), 'alice')).not.toBeNull();
    expect((await kit.redis.smembers(kit.keys.ownerBlockedGroups('alice'))).sort()).toEqual(['a', 'b']);
    const status = await why(kit, waitB, 'alice', 'b', 'alice/t');
    expect(status.reason).toBe('owner_resources');
    expect(status.groups[0]).toMatchObject({ group: 'b', reason: 'owner_resources', ownerVms: 1, maxVmPerUser: 5, ownerLimit: { scope: 'all', units: ['cores'] } });

    // Another owner is served meanwhile, in both groups.
    acquired(await kit.vmm.tryAcquireVm(req('bob', 'a'), waiter()));
    acquired(await kit.vmm.tryAcquireVm(req('bob', 'b'), waiter()));
    await kit.addReady('b3', '10.9.1.250', 'b');

    // Released, her VM stays bound to her (dirty): still 8 cores, she still waits.
    expect(await kit.vmm.releaseVm(inA.vm.vmName, inA.leaseId)).toBe(true);
    expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '2', cores: '8' });
    expect(await kit.vmm.dispatchAcquireLine('b')).toEqual([]);

    // Removed (in group a), it no longer counts: she is unblocked in b too, b's channel is told,
    // and b's dispatcher serves her waiting request there.
    const sub = connect();
    const told: string[] = [];
    sub.on('message', (channel: string, message: string) => told.push(`${channel}=${message}`));
    await sub.subscribe(kit.keys.readyChannel('b'));
    try {
      await remove(kit, inA.vm.vmName);
      expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '1', cores: '4' });
      expect(await kit.redis.zscore(kit.keys.lineBlocked('b'), 'alice')).toBeNull();
      expect(await kit.redis.exists(kit.keys.ownerBlockedGroups('alice'))).toBe(0);
      await expect.poll(() => told).toEqual([`${kit.keys.readyChannel('b')}=${inA.vm.vmName}`]);
    } finally {
      await sub.quit();
    }
    expect(await kit.vmm.dispatchAcquireLine('b')).toEqual([waitB.jobId]);
    expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '2', cores: '8' });
    // At 8 cores again: her request in a stays blocked although a clean VM is ready there.
    expect(await kit.vmm.dispatchAcquireLine('a')).toEqual([]);
    expect((await why(kit, waitA, 'alice', 'a', 'alice/t')).reason).toBe('owner_resources');
  });

  it('a removed VM subtracts what it added at bind, whatever the config says by then; VMs bound before are counted once at reconcile start', async () => {
    await kit.addReady('a1', '10.9.2.1', 'a');
    await kit.addReady('a2', '10.9.2.2', 'a');
    const first = acquired(await kit.vmm.tryAcquireVm(req('carol', 'a'), waiter()));
    const second = acquired(await kit.vmm.tryAcquireVm(req('carol', 'a'), waiter()));
    // A VM bound before this release: no record, not counted.
    await kit.redis.hdel(kit.keys.vm(second.vm.vmName), 'owner_usage');
    await kit.redis.hincrbyfloat(kit.keys.ownerUsage('all', 'carol'), 'cores', -4);
    await kit.redis.hincrbyfloat(kit.keys.ownerUsage('all', 'carol'), 'instances', -1);
    expect(await usage(kit, 'all', 'carol')).toEqual({ instances: '1', cores: '4' });
    expect(await kit.vmm.backfillOwnerUsage()).toBe(1);
    expect(await kit.vmm.backfillOwnerUsage()).toBe(0);
    expect(await usage(kit, 'all', 'carol')).toEqual({ instances: '2', cores: '8' });

    // Another replica with the group at 6 cores per VM and in an account removes both VMs: 4 each go.
    const edited: ConfigInput = { accounts: { acct: {} }, groups: [{ name: 'a', resources: { cores: 6 }, account: 'acct' }, { name: 'b' }] };
    const other = new VmManager(edited, { redis: kit.redis, prefix: kit.prefix, clock: () => kit.clock.now });
    try {
      await remove({ ...kit, vmm: other }, first.vm.vmName);
      await remove({ ...kit, vmm: other }, second.vm.vmName);
    } finally {
      await other.close();
    }
    expect(await kit.redis.exists(kit.keys.ownerUsage('all', 'carol'))).toBe(0);
    expect(await kit.redis.exists(kit.keys.ownerUsage('account:acct', 'carol'))).toBe(0);
  });
});

describe('max_resources_per_owner over all groups, for VM sets (real Redis)', () => {
  let kit: PoolKit;
  beforeAll(async () => {
    kit = await createPoolKit('pool-owner-across-set', { max_resources_per_owner: { cores: 8 }, groups: [{ name: 'a', ...cores4 }, { name: 'b', ...cores4 }] });
  });
  afterAll(async () => kit.close());
  beforeEach(async () => {
    await kit.reset();
    await kit.vmm.markServerStart();
    kit.clock.now = T0 + 1000;
  });

  const set = (owner: string, groups: string[]) => ({ owner, sandbox: `${owner}/mn`, workerId: 'w', items: groups.map((g) => ({ groups: [g] })) });

  it('a set takes only what the owner may still bind across groups, counted with the VMs it picks; it waits (in line) holding nothing', async () => {
    for (const [name, group] of [['sa1', 'a'], ['sa2', 'a'], ['sb1', 'b'], ['sb2', 'b']] as const) {
      await kit.addReady(name, `10.9.2.${seq++ % 200}`, group);
    }
    // 3 VMs of 4 cores: 12 cores, over 8 in all groups together, though each group allows 5 VMs.
    expect((await kit.vmm.tryAcquireVmSet(set('alice', ['a', 'b', 'a']))).status).toBe('none');
    expect(await usage(kit, 'all', 'alice')).toEqual({});
    // Two fit: counted across groups, as single acquires are.
    const two = await kit.vmm.tryAcquireVmSet(set('alice', ['a', 'b']));
    expect(two.status).toBe('acquired');
    expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '2', cores: '8' });
    // At the limit: a waiting set of one joins the line and is not served, though VMs are ready.
    const w = waiter();
    expect((await kit.vmm.tryAcquireVmSet(set('alice', ['b']), { waiter: w })).status).toBe('none');
    expect(await kit.vmm.dispatchAcquireLine('b')).toEqual([]);
    // Another owner's set is served meanwhile (from group a: b keeps one ready VM).
    expect((await kit.vmm.tryAcquireVmSet(set('bob', ['a']))).status).toBe('acquired');
    // One of alice's VMs removed: her waiting set is served by the line.
    if (two.status !== 'acquired') throw new Error('unreachable');
    await remove(kit, two.vms[0]!.vm.vmName);
    expect(await kit.vmm.dispatchAcquireLine('b')).toEqual([w.jobId]);
    expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '2', cores: '8' });
  });
});

describe("an account's max_resources_per_owner (real Redis)", () => {
  let kit: PoolKit;
  beforeAll(async () => {
    kit = await createPoolKit('pool-owner-account', {
      accounts: { cloud: { max_resources_per_owner: { cores: 8 } } },
      groups: [{ name: 'c', account: 'cloud', ...cores4 }, { name: 'd', account: 'cloud', ...cores4 }, { name: 'own', ...cores4 }],
    });
  });
  afterAll(async () => kit.close());
  beforeEach(async () => {
    await kit.reset();
    await kit.vmm.markServerStart();
    kit.clock.now = T0 + 1000;
  });

  it("holds an owner's VMs in the account's groups together; a group outside the account is not counted there", async () => {
    for (const [name, group] of [['c1', 'c'], ['c2', 'c'], ['d1', 'd'], ['d2', 'd'], ['o1', 'own']] as const) {
      await kit.addReady(name, `10.9.3.${seq++ % 200}`, group);
    }
    const inC = acquired(await kit.vmm.tryAcquireVm(req('alice', 'c'), waiter()));
    acquired(await kit.vmm.tryAcquireVm(req('alice', 'd'), waiter()));
    expect(await usage(kit, 'account:cloud', 'alice')).toEqual({ instances: '2', cores: '8' });
    const waitC = waiter();
    expect((await kit.vmm.tryAcquireVm(req('alice', 'c', 'alice/t'), waitC)).status).toBe('none');
    const status = await why(kit, waitC, 'alice', 'c', 'alice/t');
    expect(status.groups[0]).toMatchObject({ reason: 'owner_resources', ownerLimit: { scope: 'account', account: 'cloud', units: ['cores'] } });
    // Outside the account she is served (and counted in 'all' only), as is another owner inside it.
    acquired(await kit.vmm.tryAcquireVm(req('alice', 'own'), waiter()));
    expect(await usage(kit, 'all', 'alice')).toEqual({ instances: '3', cores: '12' });
    expect(await usage(kit, 'account:cloud', 'alice')).toEqual({ instances: '2', cores: '8' });
    acquired(await kit.vmm.tryAcquireVm(req('bob', 'd'), waiter()));

    // Released is not enough; removed (in c), her request in c takes the clean VM there.
    expect(await kit.vmm.releaseVm(inC.vm.vmName, inC.leaseId)).toBe(true);
    expect(await kit.vmm.dispatchAcquireLine('c')).toEqual([]);
    await remove(kit, inC.vm.vmName);
    expect(await kit.vmm.dispatchAcquireLine('c')).toEqual([waitC.jobId]);
    expect(await usage(kit, 'account:cloud', 'alice')).toEqual({ instances: '2', cores: '8' });
  });
});
