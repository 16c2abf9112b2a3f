import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { InvalidVmRequest } from '../../src/pool/types.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// Autohold rules against the real release script: a failed build's VM that a rule matches is held,
// the rule's count runs down atomically (two releases at once never both take its last count), a
// successful or unsaid release returns the VM to the pool as before.
const T0 = 1_750_000_000_000;
const input: ConfigInput = { redis: { url: REDIS_URL }, max_hold_age: 7200, groups: [{ name: 'fedora-x86', max_vm_per_user: 10 }, { name: 'other', max_vm_per_user: 10 }] };

describe('autohold (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('autohold');
  const clock = { now: T0 };
  let redis: Redis;
  let vmm: VmManager;
  let n = 0;

  /** A ready VM of the group, acquired by the owner; returns its name and lease. */
  async function build(group: string, owner: string) {
    n += 1;
    const sandbox = `${owner}/p${n}`;
    const name = `ah${n}`;
    await vmm.addVmToPool(`10.7.0.${n}`, name, group);
    await vmm.startVmCheck(name);
    await vmm.recordHealthCheckResult(name, true);
    clock.now += 1;
    const vm = await vmm.acquireVm({ groups: [group], owner, sandbox, workerId: 'w', taskId: `t${n}` });
    expect(vm.vmName).toBe(name);
    return { name, sandbox, lease: (await vmm.getVmRecord(name)).leaseId! };
  }

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
    await vmm.markServerStart();
    clock.now += 1;
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it("holds a matching failed build's VM, runs the count down, and leaves successful builds alone", async () => {
    const rule = await vmm.autoholds.add({ owner: 'copr-*', group: 'fedora-*', count: 2, for: 3600, reason: 'kernel oops hunt' }, 'ops');
    expect(rule).toMatchObject({ owner: 'copr-*', sandbox: '*', group: 'fedora-*', count: 2, for: 3600, by: 'ops' });

    const ok = await build('fedora-x86', 'copr-alice');
    expect(await vmm.releaseVm(ok.name, ok.lease, { outcome: 'success' })).toBe(true);
    expect((await vmm.getVmRecord(ok.name)).heldBy).toBeNull();
    const unsaid = await build('fedora-x86', 'copr-alice');
    expect(await vmm.releaseVm(unsaid.name, unsaid.lease)).toBe(true);
    expect((await vmm.getVmRecord(unsaid.name)).heldBy).toBeNull();
    // Not matching: another owner, another group.
    const bob = await build('fedora-x86', 'bob');
    expect(await vmm.releaseVm(bob.name, bob.lease, { outcome: 'failed' })).toBe(true);
    const other = await build('other', 'copr-alice');
    expect(await vmm.releaseVm(other.name, other.lease, { outcome: 'failed' })).toBe(true);
    expect([(await vmm.getVmRecord(bob.name)).heldBy, (await vmm.getVmRecord(other.name)).heldBy]).toEqual([null, null]);
    expect((await vmm.autoholds.list())[0]!.count).toBe(2);

    const failed = await build('fedora-x86', 'copr-alice');
    expect(await vmm.releaseVm(failed.name, failed.lease, { outcome: 'failed' })).toBe(true);
    const held = await vmm.getVmRecord(failed.name);
    expect([held.state, held.heldBy, held.holdReason, held.heldUntil]).toEqual(['ready', `autohold:${rule.id}`, 'kernel oops hunt', clock.now + 3600_000]);
    expect((await vmm.autoholds.list()).map((r) => [r.id, r.count])).toEqual([[rule.id, 1]]);
    // Held: acquire does not hand it out to its owner again.
    const again = await vmm.tryAcquireVm({ groups: ['fedora-x86'], owner: 'copr-alice', sandbox: failed.sandbox, workerId: 'w' });
    expect(again.status === 'acquired' ? again.vm.vmName : null).not.toBe(failed.name);

    const events = (await vmm.reader.auditEvents({ limit: 50 })).events.filter((e) => e.vm === failed.name).map((e) => e.event);
    expect(events).toEqual(expect.arrayContaining(['released', 'held']));
    const heldEvent = (await vmm.reader.auditEvents({ limit: 50 })).events.find((e) => e.vm === failed.name && e.event === 'held')!;
    expect(heldEvent).toMatchObject({ reason: 'kernel oops hunt' });
    expect(JSON.stringify(heldEvent)).toContain(`autohold:${rule.id}`);

    // Its hold ends as holds do.
    clock.now += 3600_001;
    expect(await vmm.expireHolds()).toContain(failed.name);
    expect((await vmm.getVmRecord(failed.name)).heldBy).toBeNull();
  });

  it('two failed releases at once take the last count once: one VM is held, the other returns to the pool', async () => {
    for (const r of await vmm.autoholds.list()) await vmm.autoholds.delete(r.id);
    const rule = await vmm.autoholds.add({ count: 1, reason: 'one only' }, 'ops');
    const a = await build('other', 'carol');
    const b = await build('other', 'dave');
    await Promise.all([vmm.releaseVm(a.name, a.lease, { outcome: 'failed' }), vmm.releaseVm(b.name, b.lease, { outcome: 'failed' })]);
    const heldBy = [(await vmm.getVmRecord(a.name)).heldBy, (await vmm.getVmRecord(b.name)).heldBy];
    expect(heldBy.filter((h) => h === `autohold:${rule.id}`)).toHaveLength(1);
    expect(heldBy.filter((h) => h === null)).toHaveLength(1);
    // Its count ran out: the rule is gone. Without `for`, max_hold_age (7200 s) ends the hold.
    expect(await vmm.autoholds.list()).toEqual([]);
    const heldName = heldBy[0] ? a.name : b.name;
    expect((await vmm.getVmRecord(heldName)).heldUntil).toBe(clock.now + 7200_000);
  });

  it('refuses a bad rule or outcome, changing nothing', async () => {
    await expect(vmm.autoholds.add({ count: 0, reason: 'x' }, 'ops')).rejects.toThrow(InvalidVmRequest);
    await expect(vmm.autoholds.add({ count: 1 }, 'ops')).rejects.toThrow(/reason/);
    await expect(vmm.autoholds.add({ count: 1, reason: 'x', owner: 'a b' }, 'ops')).rejects.toThrow(/owner/);
    expect(await vmm.autoholds.list()).toEqual([]);
    const c = await build('other', 'erin');
    await expect(vmm.releaseVm(c.name, c.lease, { outcome: 'broken' as never })).rejects.toThrow(/outcome/);
    expect((await vmm.getVmRecord(c.name)).state).toBe('in_use');
    expect(await vmm.autoholds.delete(999)).toBe(false);
  });
});
