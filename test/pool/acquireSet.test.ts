import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { InvalidVmRequest, LeaseLost, NoVmAvailable, VmStates } from '../../src/pool/types.js';
import { createPoolKit, setRequest as set, T0, testConfig, type PoolKit } from './fixtures/kit.js';

let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit(
    'pool-acquire-set',
    testConfig({
      accounts: { east: {}, west: {} },
      groups: [
        { name: 'base', max_vm_per_user: 3 },
        { name: 'arm', max_vm_per_user: 3 },
        { name: 'east-x86', account: 'east', max_vm_per_user: 3 },
        { name: 'west-x86', account: 'west', max_vm_per_user: 3 },
        { name: 'west-arm', account: 'west', max_vm_per_user: 3 },
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

const states = (names: string[]) => kit.states(names);

describe('tryAcquireVmSet: all or nothing (real Redis)', () => {
  it('3 VMs asked, 2 available: none taken; the third arrives: all three taken at once', async () => {
    await kit.addReady('b1', '10.0.0.1', 'base');
    await kit.addReady('b2', '10.0.0.2', 'base');
    const request = set('alice', [['base'], ['base'], ['arm']]);
    expect(await kit.vmm.tryAcquireVmSet(request)).toMatchObject({ status: 'none' });
    expect(await states(['b1', 'b2'])).toEqual([VmStates.READY, VmStates.READY]);
    expect(await kit.redis.zcard(kit.keys.leases)).toBe(0);

    await kit.addReady('a1', '10.0.0.3', 'arm');
    const attempt = await kit.vmm.tryAcquireVmSet(request);
    if (attempt.status !== 'acquired' && attempt.status !== 'reattached') throw new Error('the set was not served');
    expect(attempt.status).toBe('acquired');
    expect(attempt.vms.map((v) => v.vm.vmName)).toEqual(['b1', 'b2', 'a1']);
    expect(await states(['b1', 'b2', 'a1'])).toEqual([VmStates.IN_USE, VmStates.IN_USE, VmStates.IN_USE]);
    // Each VM its own lease, each in the leases set.
    expect(new Set(attempt.vms.map((v) => v.leaseId)).size).toBe(3);
    expect(await kit.redis.zcard(kit.keys.leases)).toBe(3);
    for (const v of attempt.vms) expect(v.vm).toMatchObject({ owner: 'alice', sandbox: 'alice/sb', usedByWorker: 'w-alice' });

    // One call renews all of them.
    kit.clock.now += 10_000;
    const expiry = await kit.vmm.renewLeases(attempt.vms.map((v) => ({ vmName: v.vm.vmName, leaseId: v.leaseId })));
    expect(expiry).toBeGreaterThan(attempt.vms[0]!.leaseExpiresAt);
  });

  it('two sets that each need 2 of 3 VMs never deadlock: one is served whole, then the other', async () => {
    for (const n of ['v1', 'v2', 'v3']) await kit.addReady(n, `10.0.1.${n.slice(1)}`, 'base');
    // Two multi-node jobs of one project (one owner and sandbox), racing for the same three VMs.
    const [a, b] = await Promise.all([
      kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'job-a')),
      kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'job-b')),
    ]);
    const served = [a, b].filter((x) => x.status === 'acquired');
    expect(served).toHaveLength(1);
    // The one not served holds nothing: the third VM is still ready.
    expect((await states(['v1', 'v2', 'v3'])).filter((s) => s === VmStates.READY)).toHaveLength(1);
    const first = served[0]!;
    if (first.status !== 'acquired' && first.status !== 'reattached') throw new Error('unreachable');
    const waitingJob = a === first ? 'job-b' : 'job-a';

    // The first set releases; its VMs come back (bound to the sandbox) after their check; the
    // other set is served whole.
    for (const v of first.vms) {
      expect(await kit.vmm.releaseVm(v.vm.vmName, v.leaseId)).toBe(true);
      await kit.vmm.startVmCheck(v.vm.vmName);
      await kit.vmm.recordHealthCheckResult(v.vm.vmName, true);
    }
    const second = await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], waitingJob));
    if (second.status !== 'acquired' && second.status !== 'reattached') throw new Error('the second set was not served');
    expect(second.status).toBe('acquired');
    expect(second.vms).toHaveLength(2);
  });

  it("another owner's set waits holding nothing, and is served whole when a second clean VM arrives", async () => {
    for (const n of ['v1', 'v2', 'v3']) await kit.addReady(n, `10.0.1.${n.slice(1)}`, 'base');
    const first = await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']]));
    expect(first.status).toBe('acquired');
    expect(await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base']]))).toMatchObject({ status: 'none' });
    expect(await states(['v3'])).toEqual([VmStates.READY]);
    await kit.addReady('v4', '10.0.1.4', 'base');
    const second = await kit.vmm.tryAcquireVmSet(set('bob', [['base'], ['base']]));
    if (second.status !== 'acquired' && second.status !== 'reattached') throw new Error('not served');
    expect(second.vms.map((v) => v.vm.vmName).sort()).toEqual(['v3', 'v4']);
  });

  it('a re-run of the same job gets the same VMs and leases; a renewal of a lost lease says so', async () => {
    await kit.addReady('b1', '10.0.0.1', 'base');
    await kit.addReady('b2', '10.0.0.2', 'base');
    await kit.addReady('b3', '10.0.0.3', 'base');
    const first = await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'job-1'));
    const again = await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'job-1'));
    if (!('vms' in first) || !('vms' in again)) throw new Error('not served');
    expect(again.status).toBe('reattached');
    expect(again.vms.map((v) => [v.vm.vmName, v.leaseId])).toEqual(first.vms.map((v) => [v.vm.vmName, v.leaseId]));
    expect(await states(['b3'])).toEqual([VmStates.READY]);

    await kit.vmm.releaseVm(first.vms[0]!.vm.vmName, first.vms[0]!.leaseId);
    await expect(kit.vmm.renewLeases(first.vms.map((v) => ({ vmName: v.vm.vmName, leaseId: v.leaseId })))).rejects.toThrow(LeaseLost);
  });

  it('a re-run that finds one of its VMs gone gives back the others it still holds and picks the set afresh', async () => {
    await kit.addReady('b1', '10.0.0.1', 'base');
    await kit.addReady('b2', '10.0.0.2', 'base');
    await kit.addReady('b3', '10.0.0.3', 'base');
    const first = await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'job-gone'));
    if (!('vms' in first)) throw new Error('not served');
    // An operator terminates one of the set's VMs before its job completed.
    const [gone, kept] = first.vms;
    expect(await kit.vmm.startVmTermination(gone!.vm.vmName)).toBe(true);
    const again = await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']], 'job-gone'));
    if (!('vms' in again)) throw new Error('not served');
    expect(again.status).toBe('acquired');
    // The VM it still held went back (bound to the sandbox: the new set takes it first), under a new lease.
    expect(again.vms.map((v) => v.vm.vmName).sort()).toEqual([kept!.vm.vmName, 'b3'].sort());
    expect(again.vms.map((v) => v.leaseId)).not.toContain(kept!.leaseId);
    const released = (await kit.vmm.reader.auditEvents({ limit: 100 })).events.filter((e) => e.event === 'released');
    expect(released.map((e) => [e.vm, e.reason])).toEqual([[kept!.vm.vmName, 'abandoned']]);
  });

  it('prefers one account for all items when their groups span several', async () => {
    await kit.addReady('e1', '10.0.2.1', 'east-x86');
    await kit.addReady('w1', '10.0.2.2', 'west-x86');
    await kit.addReady('w2', '10.0.2.3', 'west-arm');
    // Item 1 would take east first; but only west can serve both items.
    const attempt = await kit.vmm.tryAcquireVmSet(set('alice', [['east-x86', 'west-x86'], ['west-arm']]));
    if (attempt.status !== 'acquired' && attempt.status !== 'reattached') throw new Error('not served');
    expect(attempt.vms.map((v) => v.vm.vmName)).toEqual(['w1', 'w2']);
    expect(await states(['e1'])).toEqual([VmStates.READY]);
  });

  it('falls back to mixed accounts when no single account can serve the set', async () => {
    await kit.addReady('e1', '10.0.2.1', 'east-x86');
    await kit.addReady('w2', '10.0.2.3', 'west-arm');
    const attempt = await kit.vmm.tryAcquireVmSet(set('alice', [['east-x86'], ['west-arm']]));
    if (attempt.status !== 'acquired' && attempt.status !== 'reattached') throw new Error('not served');
    expect(attempt.vms.map((v) => v.vm.vmName)).toEqual(['e1', 'w2']);
  });

  it('counts the VMs it picks toward max_vm_per_user', async () => {
    for (const n of ['v1', 'v2', 'v3', 'v4']) await kit.addReady(n, `10.0.1.${n.slice(1)}`, 'base');
    // More than the owner may ever have there: refused, as it could never be served.
    await expect(kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base'], ['base'], ['base']]))).rejects.toThrow(/at most 3 there/);
    expect(await kit.redis.zcard(kit.keys.leases)).toBe(0);
    // Within the limit, but with the owner's VMs bound already: waits, taking nothing.
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']]))).status).toBe('acquired');
    expect(await kit.vmm.tryAcquireVmSet(set('alice', [['base'], ['base']]))).toMatchObject({ status: 'none' });
    expect(await kit.redis.zcard(kit.keys.leases)).toBe(2);
  });

  it('counts toward max_resources_per_owner (the owner limit in VMs it gives)', async () => {
    for (const n of ['g1', 'g2', 'g3']) await kit.addReady(n, `10.0.3.${n.slice(1)}`, 'big');
    // 8 cores per owner at 4 cores a VM: 2 VMs, though max_vm_per_user is 3.
    await expect(kit.vmm.tryAcquireVmSet(set('alice', [['big'], ['big'], ['big']]))).rejects.toThrow(/at most 2 there/);
    expect((await kit.vmm.tryAcquireVmSet(set('alice', [['big'], ['big']]))).status).toBe('acquired');
  });

  it('refuses bad input and changes nothing', async () => {
    await kit.addReady('b1', '10.0.0.1', 'base');
    await expect(kit.vmm.tryAcquireVmSet(set('alice', []))).rejects.toThrow(InvalidVmRequest);
    await expect(kit.vmm.tryAcquireVmSet(set('alice', [['base'], []]))).rejects.toThrow(InvalidVmRequest);
    await expect(kit.vmm.tryAcquireVmSet(set('', [['base']]))).rejects.toThrow(InvalidVmRequest);
    await expect(kit.vmm.tryAcquireVmSet(set('alice', [['nosuch']]))).rejects.toThrow();
    expect(await states(['b1'])).toEqual([VmStates.READY]);
  });
});

describe('acquireVmSet: waiting for the whole set (real Redis)', () => {
  it('waits holding nothing, and takes the set once its last VM is ready', async () => {
    await kit.addReady('b1', '10.0.0.1', 'base');
    const waiting = kit.vmm.acquireVmSet(set('alice', [['base'], ['arm']], 'job-wait'), { timeoutMs: 10_000 });
    // While it waits, b1 stays ready: nothing is held for a half-served set.
    await new Promise((r) => setTimeout(r, 600));
    expect(await states(['b1'])).toEqual([VmStates.READY]);
    // It counts as demand of each item's first group (reconcile spawns for it) while it waits.
    expect([await kit.vmm.countDemand('base'), await kit.vmm.countDemand('arm')]).toEqual([1, 1]);
    await kit.addReady('a1', '10.0.0.2', 'arm');
    const vms = await waiting;
    expect(vms.map((v) => v.vm.vmName)).toEqual(['b1', 'a1']);
    expect([await kit.vmm.countDemand('base'), await kit.vmm.countDemand('arm')]).toEqual([0, 0]);
  });

  it('gives up with NoVmAvailable after its timeout, having taken nothing', async () => {
    await kit.addReady('b1', '10.0.0.1', 'base');
    const failed = kit.vmm.acquireVmSet(set('alice', [['base'], ['arm']]), { timeoutMs: 500 });
    await expect(failed).rejects.toThrow(NoVmAvailable);
    // It says which VM of the set its last try could not have: the arm one.
    await expect(failed).rejects.toThrow(/within 500 ms \(the last try could not have VM 2 of 2\)$/);
    expect(await states(['b1'])).toEqual([VmStates.READY]);
    // Its demand lapses on its own soon after it stopped waiting.
    kit.clock.now += 2_000;
    expect(await kit.vmm.countDemand('arm')).toBe(0);
  });

  it('stops when its signal is aborted', async () => {
    const gone = new AbortController();
    const waiting = kit.vmm.acquireVmSet(set('alice', [['base']]), { timeoutMs: 10_000, signal: gone.signal });
    gone.abort(new Error('builder went away'));
    await expect(waiting).rejects.toThrow('builder went away');
  });
});
