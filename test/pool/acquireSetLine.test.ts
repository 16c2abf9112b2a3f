import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/pool/vmManager.js';
import type { AcquireSetAttempt } from '../../src/pool/poolScripts.js';
import { acquireWaiterMember, VmStates, type AcquireWaiter } from '../../src/pool/types.js';
import { createPoolKit, setRequest as set, T0, testConfig, type PoolKit } from './fixtures/kit.js';

// A set waiting in the fair line (acquire-set jobs), driven by hand: the dispatcher is run
// directly (no acquire process listens here), so every step is deterministic.
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit(
    'pool-acquire-set-line',
    testConfig({
      groups: [
        { name: 'base', max_vm_per_user: 2 },
        { name: 'arm', max_vm_per_user: 2 },
        { name: 'big', max_vm_per_user: 3, resources: { cores: 4 }, max_resources_per_owner: { cores: 8 } },
      ],
    }),
  );
});
afterAll(async () => kit.close());

beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

const waiterFor = (jobId: string, n = 0): AcquireWaiter => ({
  member: acquireWaiterMember(T0 + n, jobId),
  jobId,
  priority: 0,
  deadline: T0 + 600_000,
});

const states = (names: string[]) => kit.states(names);

describe('a waiting set keeps only the ready VMs it could take (real Redis)', () => {
  it("a set its owner's max_vm_per_user keeps from being served does not hold back the VMs another owner behind it can take", async () => {
    // alice has one VM of base (limit 2) for another sandbox: her set of two base VMs cannot be
    // served until that VM goes (it is possible: refuseImpossibleSet lets it wait).
    await kit.addReady('v1', '10.70.0.1', 'base');
    const first = await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'alice', sandbox: 'alice/other', workerId: 'w' });
    expect(first.status).toBe('acquired');
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' }, waiterFor('acquire-bob', 2))).status).toBe('none');

    await kit.addReady('v2', '10.70.0.2', 'base');
    await kit.addReady('v3', '10.70.0.3', 'base');
    // The set can take at most one more clean VM of base (and needs two): bob gets one.
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual(['acquire-bob']);
    expect((await states(['v2', 'v3'])).sort()).toEqual([VmStates.IN_USE, VmStates.READY]);
    // The set still waits, holding nothing.
    expect(await kit.redis.hexists(kit.keys.waiterInfo, waiterFor('set-alice', 1).member)).toBe(1);
  });

  it("a set its owner's limits across groups keep from being served does not hold back the VMs another owner behind it can take", async () => {
    // big: 4 cores a VM, 8 cores per owner. alice uses 4 already: her set of two cannot be served now.
    await kit.addReady('g1', '10.71.0.1', 'big');
    expect((await kit.vmm.tryAcquireVm({ groups: ['big'], owner: 'alice', sandbox: 'alice/other', workerId: 'w' })).status).toBe('acquired');
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['big'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['big'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' }, waiterFor('acquire-bob', 2))).status).toBe('none');
    await kit.addReady('g2', '10.71.0.2', 'big');
    await kit.addReady('g3', '10.71.0.3', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['acquire-bob']);
  });

  it('a set that could be served once a VM is ready still keeps the ready VMs it can use', async () => {
    // Unchanged: alice's set (no VM bound yet) keeps both ready VMs of base while its arm VM is on its way.
    expect(await kit.vmm.registerSpawn('arm', 'spawn-arm-1')).toBeNull();
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['arm']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' }, waiterFor('acquire-bob', 2))).status).toBe('none');
    await kit.addReady('v1', '10.72.0.1', 'base');
    await kit.addReady('v2', '10.72.0.2', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    await kit.addReady('v3', '10.72.0.3', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual(['acquire-bob']);
    await kit.addReady('a1', '10.72.0.4', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual(['set-alice']);
  });
});

describe("a waiting set's kept VMs are not taken by a set behind it (real Redis)", () => {
  const ready = (names: string[]) => names.map(() => VmStates.READY);

  it("a set behind it in base's line but first in arm's does not take the base VMs it keeps, when an arm VM comes", async () => {
    // alice's set, first in base's line, keeps both ready base VMs while it waits for its big VM.
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    // bob's set waits behind hers in base's line, and first in arm's (alice asks for no arm VM).
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base'], ['arm']], 'set-bob'), { waiter: waiterFor('set-bob', 2) })).status).toBe('none');
    await kit.addReady('b1', '10.80.0.1', 'base');
    await kit.addReady('b2', '10.80.0.2', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    // An arm VM comes: bob's set is not served with the base VMs alice keeps.
    await kit.addReady('a1', '10.80.0.3', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual([]);
    expect(await states(['b1', 'b2', 'a1'])).toEqual(ready(['b1', 'b2', 'a1']));
    // Her big VM comes: she takes base's two.
    await kit.addReady('g1', '10.80.0.4', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
    expect(await states(['b1', 'b2', 'g1'])).toEqual([VmStates.IN_USE, VmStates.IN_USE, VmStates.IN_USE]);
    // bob's set, which kept the arm VM meanwhile, is served once base has two VMs for it.
    await kit.addReady('b3', '10.80.0.5', 'base');
    await kit.addReady('b4', '10.80.0.6', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual(['set-bob']);
    expect(await states(['b3', 'b4', 'a1'])).toEqual([VmStates.IN_USE, VmStates.IN_USE, VmStates.IN_USE]);
  });

  it('nor after a dispatch for one ready VM served an owner ahead of it before reaching it', async () => {
    // carol holds base's limit (2); her third request (priority 1, ahead of the sets' 5) waits, blocked.
    await kit.addReady('v1', '10.85.0.1', 'base');
    await kit.addReady('v2', '10.85.0.2', 'base');
    for (let i = 0; i < 2; i++) expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'carol', sandbox: 'carol/p', workerId: 'w' })).status).toBe('acquired');
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    const late = (jobId: string, n: number): AcquireWaiter => ({ ...waiterFor(jobId, n), priority: 5 });
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['big']], 'set-alice'), { waiter: late('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base'], ['arm']], 'set-bob'), { waiter: late('set-bob', 2) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'carol', sandbox: 'carol/p', workerId: 'w' }, { ...waiterFor('acquire-carol', 3), priority: 1 })).status).toBe('none');
    await kit.addReady('b1', '10.85.0.3', 'base');
    await kit.addReady('b2', '10.85.0.4', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    // One of carol's VMs goes: she is back in base's round-robin, ahead of alice. A new clean VM's
    // ready message is handled first (one VM to give): carol takes it, and the dispatch stops there.
    expect(await kit.vmm.startVmTermination('v1')).toBe(true);
    await kit.vmm.removeVmFromPool('v1');
    await kit.addReady('b3', '10.85.0.5', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base', 'b3')).toEqual(['acquire-carol']);
    // An arm VM comes: bob's set, behind alice's, does not take the two base VMs she keeps.
    await kit.addReady('a1', '10.85.0.6', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual([]);
    expect((await states(['b1', 'b2', 'b3', 'a1'])).filter((s) => s === VmStates.READY)).toHaveLength(3);
    await kit.addReady('g1', '10.85.0.7', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
  });

  it("nor when a VM bound to the sandbox of the set behind it comes (its sandbox's line)", async () => {
    await kit.addReady('a1', '10.84.0.1', 'arm');
    const taken = await kit.vmm.tryAcquireVm({ groups: ['arm'], owner: 'bob', sandbox: 'bob/sb', workerId: 'w' });
    if (taken.status !== 'acquired') throw new Error(taken.status);
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base'], ['arm']], 'set-bob'), { waiter: waiterFor('set-bob', 2) })).status).toBe('none');
    await kit.addReady('b1', '10.84.0.2', 'base');
    await kit.addReady('b2', '10.84.0.3', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    // bob's arm VM comes back, bound to his set's sandbox: the set does not take alice's base VMs with it.
    expect(await kit.vmm.releaseVm('a1', taken.leaseId)).toBe(true);
    expect(await kit.vmm.dispatchAcquireLine('arm', 'a1')).toEqual([]);
    expect(await states(['b1', 'b2', 'a1'])).toEqual(ready(['b1', 'b2', 'a1']));
    await kit.addReady('g1', '10.84.0.4', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
  });

  it('a set behind it in the same line takes only the VMs beyond those it keeps', async () => {
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base']], 'set-bob'), { waiter: waiterFor('set-bob', 2) })).status).toBe('none');
    // Three base VMs: alice keeps two; bob's set needs two, and only one is beyond hers.
    for (const [name, ip] of [['b1', '10.81.0.1'], ['b2', '10.81.0.2'], ['b3', '10.81.0.3']] as const) await kit.addReady(name, ip, 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    expect(await states(['b1', 'b2', 'b3'])).toEqual(ready(['b1', 'b2', 'b3']));
    await kit.addReady('g1', '10.81.0.4', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
  });

  it("a set that came first is not held back by what a set that came after it keeps", async () => {
    // alice's set keeps two of three base VMs (waiting for big); bob's, behind, keeps what it can
    // (waiting for arm). When alice's big VM comes, bob's keep does not stop her.
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    expect(await kit.vmm.registerSpawn('arm', 'spawn-arm-1')).toBeNull();
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base'], ['arm']], 'set-bob'), { waiter: waiterFor('set-bob', 2) })).status).toBe('none');
    for (const [name, ip] of [['b1', '10.82.0.1'], ['b2', '10.82.0.2'], ['b3', '10.82.0.3']] as const) await kit.addReady(name, ip, 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    await kit.addReady('g1', '10.82.0.4', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
  });

  it('two sets in opposite orders in two groups: the one that came first is served at once, neither keeps what the other waits for', async () => {
    // alice's single arm request, ahead of her set in her own line, is served first: in arm's line
    // bob's set then comes before alice's, while in base's line alice's comes first (she asked first).
    expect(await kit.vmm.registerSpawn('arm', 'spawn-arm-1')).toBeNull();
    expect((await kit.vmm.tryAcquireVm({ groups: ['arm'], owner: 'alice', sandbox: 'alice/p', workerId: 'w' }, waiterFor('acquire-alice', 0))).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['arm']], 'set-alice'), { waiter: waiterFor('set-alice', 2) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['arm']], 'set-bob'), { waiter: waiterFor('set-bob', 3) })).status).toBe('none');
    await kit.addReady('a1', '10.83.0.1', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual(['acquire-alice']);
    // Now arm's line: bob, then alice; base's: alice, then bob. One base VM: alice keeps it.
    expect(await kit.vmm.registerSpawn('arm', 'spawn-arm-2')).toBeNull();
    await kit.addReady('b1', '10.83.0.3', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    // One arm VM: bob, first in arm's line, may not take the base VM alice keeps, and keeps the arm
    // VM; alice, who came first, is tried at once and takes both (what bob keeps does not hold her back).
    await kit.addReady('a2', '10.83.0.4', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual(['set-alice']);
    expect(await states(['b1', 'a2'])).toEqual([VmStates.IN_USE, VmStates.IN_USE]);
    // bob's set waits on; arm's next dispatch (its line was told when alice's set left it) finds it
    // keeping nothing, no VM being ready.
    expect(await kit.redis.hexists(kit.keys.waiterInfo, waiterFor('set-bob', 3).member)).toBe(1);
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual([]);
    expect(await kit.redis.exists(kit.keys.setKeeps('base'), kit.keys.setKeeps('arm'))).toBe(0);
  });

  it("a sweep of a group tries the sets that came before a keeper only once every set down its line recorded what it keeps", async () => {
    // base's round-robin: bob (his single request, withdrawn, gave him the oldest turn), carol, alice;
    // the order they came in: carol's set, alice's, bob's.
    expect(await kit.vmm.registerSpawn('arm', 'spawn-arm-1')).toBeNull();
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    const single = waiterFor('acquire-bob', 0);
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' }, single)).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('carol', [['base'], ['base'], ['big']], 'set-carol'), { waiter: waiterFor('set-carol', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['arm']], 'set-alice'), { waiter: waiterFor('set-alice', 2) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['arm'], ['big']], 'set-bob'), { waiter: waiterFor('set-bob', 3) })).status).toBe('none');
    await kit.vmm.leaveAcquireLine(single, ['base']);
    expect(await kit.redis.zrange(kit.keys.lineOwners('base'), '0', '-1')).toEqual(['bob', 'carol', 'alice']);
    // Three base VMs: bob's set keeps one, carol's the other two.
    for (const [name, ip] of [['b1', '10.85.0.1'], ['b2', '10.85.0.2'], ['b3', '10.85.0.3']] as const) await kit.addReady(name, ip, 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    // An arm VM: alice's set, first in arm's line, leaves alone the two base VMs carol's keeps.
    await kit.addReady('a1', '10.85.0.4', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm', 'a1')).toEqual([]);
    // base's next sweep: bob's set keeps its VM again, and alice's (before his, after carol's) is
    // tried: it still leaves carol's two alone, though the sweep has not come to carol yet.
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    expect(await states(['b1', 'b2', 'b3', 'a1'])).toEqual(ready(['b1', 'b2', 'b3', 'a1']));
    // carol's big VM comes: she takes two of base's.
    await kit.addReady('g1', '10.85.0.5', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-carol']);
  });
});

describe('a waiting set after a server start, beside ready VMs not checked since (real Redis)', () => {
  // b3 was ready before the server start: it is not handed out until checked again, and leaves
  // alice's set, which keeps b1 and b2, short if either goes to someone else.
  async function aliceKeepsTwoBesideAnUncheckedOne(ip: string): Promise<void> {
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    await kit.addReady('b3', `${ip}.3`, 'base');
    kit.clock.now += 1000;
    await kit.vmm.markServerStart();
    kit.clock.now += 1000;
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
  }

  it('a set that came after it, served through another group, does not count that VM as room beyond hers', async () => {
    await aliceKeepsTwoBesideAnUncheckedOne('10.86.0');
    expect((await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['arm']], 'set-bob'), { waiter: waiterFor('set-bob', 2) })).status).toBe('none');
    await kit.addReady('b1', '10.86.0.1', 'base');
    await kit.addReady('b2', '10.86.0.2', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    await kit.addReady('a1', '10.86.0.4', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm', 'a1')).toEqual([]);
    expect(await states(['b1', 'b2'])).toEqual([VmStates.READY, VmStates.READY]);
    await kit.addReady('g1', '10.86.0.5', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
  });

  it('nor does a single request behind her in the same line', async () => {
    await aliceKeepsTwoBesideAnUncheckedOne('10.87.0');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' }, waiterFor('acquire-bob', 2))).status).toBe('none');
    await kit.addReady('b1', '10.87.0.1', 'base');
    await kit.addReady('b2', '10.87.0.2', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    expect(await states(['b1', 'b2'])).toEqual([VmStates.READY, VmStates.READY]);
    await kit.addReady('g1', '10.87.0.5', 'big');
    expect(await kit.vmm.dispatchAcquireLine('big')).toEqual(['set-alice']);
  });
});

describe('a waiting set keeps nothing for a group with no VM on its way (real Redis)', () => {
  it('keeps no VM of base while arm has nothing ready, coming or spawning; keeps them once an arm spawn starts', async () => {
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['arm']], 'set-alice'), { waiter: waiterFor('set-alice', 1) })).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' }, waiterFor('acquire-bob', 2))).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'carol', sandbox: 'carol/p', workerId: 'w' }, waiterFor('acquire-carol', 3))).status).toBe('none');
    // arm has no VM and none on its way (its breaker open, say): the base VM goes on to bob.
    await kit.addReady('v1', '10.74.0.1', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual(['acquire-bob']);
    // An arm spawn starts: the set can count on it, and keeps the next base VM from carol.
    expect(await kit.vmm.registerSpawn('arm', 'spawn-arm-2')).toBeNull();
    await kit.addReady('v2', '10.74.0.2', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual([]);
    expect(await states(['v2'])).toEqual([VmStates.READY]);
    await kit.addReady('a1', '10.74.0.3', 'arm');
    expect(await kit.vmm.dispatchAcquireLine('arm')).toEqual(['set-alice']);
  });
});

describe('a set that leaves the line (real Redis)', () => {
  it('gives back the VMs the line gave it when it leaves before its job collected them', async () => {
    const waiter = waiterFor('set-gone', 1);
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'set-gone'), { waiter })).status).toBe('none');
    await kit.addReady('v1', '10.73.0.1', 'base');
    await kit.addReady('v2', '10.73.0.2', 'base');
    // The line serves it while its job is parked; then the job gives up (its deadline passed
    // between its last attempt and the line's dispatch, or it failed for good): it leaves the line.
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual(['set-gone']);
    await kit.vmm.leaveAcquireLine(waiter, ['base']);
    // Nobody collects them: they go back at once, not at the end of their leases.
    expect(await states(['v1', 'v2'])).toEqual([VmStates.READY, VmStates.READY]);
    expect(await kit.redis.zscore(kit.keys.acquireAssigned, 'set-gone')).toBeNull();
    expect(await kit.redis.zcard(kit.keys.leases)).toBe(0);
  });

  it('tells its groups when it leaves, so that the VMs it kept go down the line at once', async () => {
    const sub = kit.redis.duplicate();
    const messages: string[] = [];
    sub.on('message', (channel: string) => messages.push(channel));
    try {
      const channels = ['base', 'arm'].map((g) => `${kit.keys.base}ready:${g}`);
      const waiter = waiterFor('set-leaves', 1);
      expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['arm']], 'set-leaves'), { waiter })).status).toBe('none');
      await sub.subscribe(...channels);
      await kit.vmm.leaveAcquireLine(waiter, ['base', 'arm']);
      await new Promise((r) => setTimeout(r, 100));
      expect([...new Set(messages)].sort()).toEqual(channels.sort());
    } finally {
      sub.disconnect();
    }
  });
});

describe('a waiting set when its group is renamed (real Redis)', () => {
  it('is served under the new name', async () => {
    await kit.vmm.registerConfigGroups();
    const waiter = waiterFor('set-renamed', 1);
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'set-renamed'), { waiter })).status).toBe('none');
    expect(await kit.vmm.renameGroup('base', 'gamma')).toMatchObject({ from: 'base', to: 'gamma' });
    const info = JSON.parse((await kit.redis.hget(kit.keys.waiterInfo, waiter.member))!) as { groups: string[]; set: { groups: { group: string }[] }[] };
    expect(info.groups).toEqual(['gamma']);
    expect(info.set.map((item) => item.groups.map((g) => g.group))).toEqual([['gamma'], ['gamma']]);

    // The pool runs on under the new name: the set is served there.
    const renamed = new VmManager(
      testConfig({
        groups: [
          { name: 'gamma', max_vm_per_user: 2 },
          { name: 'arm', max_vm_per_user: 2 },
          { name: 'big', max_vm_per_user: 3, resources: { cores: 4 }, max_resources_per_owner: { cores: 8 } },
        ],
      }),
      { redis: kit.redis, prefix: kit.prefix, clock: () => kit.clock.now },
    );
    try {
      for (const [name, ip] of [
        ['r1', '10.74.0.1'],
        ['r2', '10.74.0.2'],
      ] as const) {
        await renamed.addVmToPool(ip, name, 'gamma');
        await renamed.startVmCheck(name);
        await renamed.recordHealthCheckResult(name, true);
      }
      expect(await renamed.dispatchAcquireLine('gamma')).toEqual(['set-renamed']);
      expect(await renamed.reader.countDemand('gamma', kit.clock.now)).toBe(0);
    } finally {
      await renamed.close();
    }
  });
});

describe('a waiting set whose groups change between runs (fallback_groups) (real Redis)', () => {
  it("does not block its owner's other requests in a group it no longer waits in", async () => {
    // First run: base is blocked, so its item may spill over to arm (a fallback): it joins both lines.
    const waiter = waiterFor('set-spill', 1);
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base', 'arm']], 'set-spill'), { waiter })).status).toBe('none');
    // Its next run: base is no longer blocked; it asks for base only.
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base']], 'set-spill'), { waiter })).status).toBe('none');
    // An arm VM is ready, and a single request of alice's asks for it: it is hers (she has no VM at all).
    await kit.addReady('a1', '10.75.0.1', 'arm');
    expect((await kit.vmm.tryAcquireVm({ groups: ['arm'], owner: 'alice', sandbox: 'alice/p', workerId: 'w' }, waiterFor('acquire-alice', 2))).status).toBe('acquired');
  });

  it('nor does a single request (the same step joins both)', async () => {
    const waiter = waiterFor('acquire-spill', 1);
    expect((await kit.vmm.tryAcquireVm({ groups: ['base', 'arm'], owner: 'alice', sandbox: 'alice/p', workerId: 'w' }, waiter)).status).toBe('none');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'alice', sandbox: 'alice/p', workerId: 'w' }, waiter)).status).toBe('none');
    await kit.addReady('a1', '10.76.0.1', 'arm');
    expect((await kit.vmm.tryAcquireVm({ groups: ['arm'], owner: 'alice', sandbox: 'alice/q', workerId: 'w' }, waiterFor('acquire-alice', 2))).status).toBe('acquired');
    expect(await kit.redis.zcard(kit.keys.waiters('arm'))).toBe(0);
  });
});

describe('a set beside an acquire process of an older release (real Redis)', () => {
  it('gives back the one VM an older dispatcher, which knows no sets, gave it as a single request, and waits again', async () => {
    const waiter = waiterFor('set-mixed', 1);
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'set-mixed'), { waiter })).status).toBe('none');
    // What an older dispatcher leaves: one VM in use under a lease, recorded as a single's
    // assignment of the set's job, the set out of the lines, its job to be woken.
    await kit.addReady('m1', '10.75.0.1', 'base');
    const taken = await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'alice', sandbox: 'alice/sb', workerId: 'old', leaseId: 'old-lease' });
    expect(taken.status).toBe('acquired');
    await kit.vmm.leaveAcquireLine(waiter, ['base']);
    await kit.redis.hset(kit.keys.acquireAssignment('set-mixed'), 'vm', 'm1', 'lease', 'old-lease');
    await kit.redis.zadd(kit.keys.acquireAssigned, kit.clock.now, 'set-mixed');
    // The set's job runs: m1 goes back, the set waits in the line again, holding nothing.
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'set-mixed'), { waiter })).status).toBe('none');
    expect(await states(['m1'])).toEqual([VmStates.READY]);
    expect(await kit.redis.exists(kit.keys.acquireAssignment('set-mixed'))).toBe(0);
    expect(await kit.redis.zscore(kit.keys.acquireAssigned, 'set-mixed')).toBeNull();
    expect(await kit.redis.hexists(kit.keys.waiterInfo, waiter.member)).toBe(1);
    const released = (await kit.vmm.reader.auditEvents({ limit: 100 })).events.filter((e) => e.event === 'released');
    expect(released.map((e) => [e.vm, e.reason])).toEqual([['m1', 'abandoned']]);
    // A second VM: the set takes both (m1 is bound to its sandbox now).
    await kit.addReady('m2', '10.75.0.2', 'base');
    expect(await kit.vmm.dispatchAcquireLine('base')).toEqual(['set-mixed']);
  });
});

describe('a set not served names the VMs it cannot have now (real Redis)', () => {
  // The items, 1-based, that cannot have a VM now; or what the attempt was instead.
  const missingOf = (attempt: AcquireSetAttempt) => (attempt.status === 'none' ? attempt.missing : attempt.status);
  const threeVms = [['base'], ['base'], ['arm']];

  it('[base, base, arm] with no arm VM: VM 3, in the line and outside it; the other items still pick', async () => {
    await kit.addReady('b1', '10.77.0.1', 'base');
    await kit.addReady('b2', '10.77.0.2', 'base');
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('alice', threeVms, 'set-outside')))).toEqual([3]);
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('bob', threeVms, 'set-bob'), { waiter: waiterFor('set-bob', 1) }))).toEqual([3]);
    expect(await states(['b1', 'b2'])).toEqual([VmStates.READY, VmStates.READY]);
  });

  it('[base, base, arm] with nothing anywhere: all three', async () => {
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('alice', threeVms, 'set-alice'), { waiter: waiterFor('set-alice', 1) }))).toEqual([1, 2, 3]);
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('bob', threeVms, 'set-bob')))).toEqual([1, 2, 3]);
  });

  it("a VM its owner's limit keeps it from is named too, and the VMs after it still pick theirs", async () => {
    // alice has one VM of base (max_vm_per_user 2) for another sandbox: her set can have one more there.
    await kit.addReady('v0', '10.78.0.1', 'base');
    expect((await kit.vmm.tryAcquireVm({ groups: ['base'], owner: 'alice', sandbox: 'alice/other', workerId: 'w' })).status).toBe('acquired');
    await kit.addReady('b1', '10.78.0.2', 'base');
    await kit.addReady('b2', '10.78.0.3', 'base');
    await kit.addReady('a1', '10.78.0.4', 'arm');
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('alice', threeVms, 'set-alice'), { waiter: waiterFor('set-alice', 1) }))).toEqual([2]);
  });

  it('none when every VM could be had but the set waits for its turn behind another set', async () => {
    // alice's set, first in line, waits for a big VM (one is spawning): it keeps the ready base and
    // arm VMs it will take, so bob's set behind it is not served though each of its VMs is ready.
    expect(await kit.vmm.registerSpawn('big', 'spawn-big-1')).toBeNull();
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['arm'], ['big']], 'set-alice'), { waiter: waiterFor('set-alice', 1) }))).toEqual([1, 2, 3, 4]);
    await kit.addReady('b1', '10.79.0.1', 'base');
    await kit.addReady('b2', '10.79.0.2', 'base');
    await kit.addReady('a1', '10.79.0.3', 'arm');
    expect(missingOf(await kit.vmm.tryAcquireVmSet(set('bob', threeVms, 'set-bob'), { waiter: waiterFor('set-bob', 2) }))).toEqual([]);
    expect(await states(['b1', 'b2', 'a1'])).toEqual([VmStates.READY, VmStates.READY, VmStates.READY]);
    expect(await kit.redis.hexists(kit.keys.waiterInfo, waiterFor('set-bob', 2).member)).toBe(1);
  });
});
