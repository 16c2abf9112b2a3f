import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmDescriptorNotFound, VmError, VmStates } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-acquire');
});
afterAll(async () => kit.close());

const req = (owner: string, sandbox: string, groups = [0], extra: Record<string, string> = {}) => ({
  groups,
  owner,
  sandbox,
  workerId: `worker-${owner}`,
  ...extra,
});

/** Server started at T0; VMs are checked one second later. */
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

describe('acquireVm: which VMs qualify', () => {
  it('hands out a ready VM and sets every assignment field', async () => {
    await kit.addReady('a1', '10.0.0.1');
    kit.clock.now = T0 + 5000;
    const vm = await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/proj--x', workerId: 'w-7', taskId: 't-1', buildId: 'b-1', chroot: 'fedora-40-x86_64' });
    expect(vm).toMatchObject({
      vmName: 'a1',
      state: VmStates.IN_USE,
      owner: 'alice',
      sandbox: 'alice/proj--x',
      usedByWorker: 'w-7',
      taskId: 't-1',
      buildId: 'b-1',
      chroot: 'fedora-40-x86_64',
      inUseSince: T0 + 5000,
    });
    expect(await kit.vmm.getVmByName('a1')).toEqual(vm);
    await expect(kit.vmm.acquireVm(req('bob', 's'))).rejects.toThrow(NoVmAvailable);
  });

  it('takes numeric worker, task and build ids (a pid, Copr build ids) and stores them as text', async () => {
    await kit.addReady('n1', '10.0.0.9');
    const vm = await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 's', workerId: 4242, taskId: 777, buildId: 31337 });
    expect(vm).toMatchObject({ usedByWorker: '4242', taskId: '777', buildId: '31337' });
    expect((await kit.vmm.getVmByTaskId(777))?.vmName).toBe('n1');
    await expect(kit.vmm.acquireVm({ groups: [0], owner: 'bob', sandbox: 's', workerId: 'w', taskId: { id: 1 } as never })).rejects.toThrow(VmError);
  });

  it('leaves task fields null when not given', async () => {
    await kit.addReady('a1', '10.0.0.1');
    const vm = await kit.vmm.acquireVm(req('alice', 's'));
    expect(vm).toMatchObject({ taskId: null, buildId: null, chroot: null, usedByWorker: 'worker-alice' });
  });

  it('throws NoVmAvailable on an empty pool', async () => {
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
  });

  it.each([VmStates.GOT_IP, VmStates.CHECK_HEALTH, VmStates.CHECK_HEALTH_FAILED, VmStates.TERMINATING])(
    'never hands out a VM in %s',
    async (state) => {
      await kit.vmm.addVmToPool('10.0.0.1', 'v', 'base');
      if (state !== VmStates.GOT_IP) await kit.vmm.startVmCheck('v');
      if (state === VmStates.CHECK_HEALTH_FAILED) await kit.vmm.recordHealthCheckResult('v', false);
      if (state === VmStates.TERMINATING) await kit.vmm.startVmTermination('v');
      expect((await kit.vmm.getVmByName('v')).state).toBe(state);
      await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
      expect((await kit.vmm.getVmByName('v')).state).toBe(state);
    },
  );

  it('never hands out a VM that is in_use already', async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.vmm.acquireVm(req('alice', 's'));
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
  });

  it('never hands out a VM checked before the last server start, until checked again', async () => {
    await kit.addReady('a1', '10.0.0.1'); // checked at T0+1000
    kit.clock.now = T0 + 2000;
    await kit.vmm.markServerStart(); // restart after the check
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
    expect((await kit.vmm.getVmByName('a1')).state).toBe(VmStates.READY);
    kit.clock.now = T0 + 3000;
    await kit.vmm.startVmCheck('a1');
    await kit.vmm.recordHealthCheckResult('a1', true);
    expect((await kit.vmm.acquireVm(req('alice', 's'))).vmName).toBe('a1');
  });

  it('never hands out anything when the server start was never marked', async () => {
    await kit.reset(); // no server_start key
    await kit.addReady('a1', '10.0.0.1');
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
    kit.clock.now += 1;
    await kit.vmm.markServerStart();
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
  });

  it('within the same clock millisecond, a check counts only when it came after the server start', async () => {
    await kit.reset();
    // The clock does not move in this test: only the order of events tells them apart.
    await kit.addReady('before', '10.0.0.1');
    await kit.vmm.markServerStart();
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
    await kit.addReady('after', '10.0.0.2');
    expect((await kit.vmm.acquireVm(req('alice', 's'))).vmName).toBe('after');
    await expect(kit.vmm.acquireVm(req('bob', 's'))).rejects.toThrow(NoVmAvailable);
    // Many VMs checked in that millisecond before the start do not hide one checked after it.
    await kit.reset();
    for (let i = 0; i < 20; i++) await kit.addReady(`old${i}`, '10.0.0.3');
    await kit.vmm.markServerStart();
    await kit.addReady('new', '10.0.0.4');
    expect((await kit.vmm.acquireVm(req('alice', 's'))).vmName).toBe('new');
    await expect(kit.vmm.acquireVm(req('bob', 's'))).rejects.toThrow(NoVmAvailable);
    // Checked again after the start, an old VM qualifies.
    await kit.vmm.startVmCheck('old7');
    await kit.vmm.recordHealthCheckResult('old7', true);
    expect((await kit.vmm.acquireVm(req('carol', 's'))).vmName).toBe('old7');
  });

  it('never hands out a VM whose check failed, even while its state says ready', async () => {
    // A failed check during a build leaves checkFails > 0; release moves it out of ready.
    await kit.addReady('a1', '10.0.0.1');
    const vm = await kit.vmm.acquireVm(req('alice', 's'));
    await kit.vmm.recordHealthCheckResult(vm.vmName, false);
    expect(await kit.vmm.releaseVm(vm.vmName)).toBe(true);
    expect((await kit.vmm.getVmByName('a1')).state).toBe(VmStates.CHECK_HEALTH_FAILED);
    await expect(kit.vmm.acquireVm(req('alice', 's'))).rejects.toThrow(NoVmAvailable);
  });
});

describe('acquireVm: preference and ownership', () => {
  it('tries groups in the order given', async () => {
    await kit.addReady('a1', '10.0.0.1', 0);
    await kit.addReady('b1', '10.0.0.2', 1);
    expect((await kit.vmm.acquireVm(req('alice', 's', [1, 0]))).vmName).toBe('b1');
    expect((await kit.vmm.acquireVm(req('bob', 's', [1, 0]))).vmName).toBe('a1');
    await expect(kit.vmm.acquireVm(req('carol', 's', [1, 0]))).rejects.toThrow(NoVmAvailable);
  });

  it('only takes VMs from the groups asked for', async () => {
    await kit.addReady('b1', '10.0.0.2', 1);
    await expect(kit.vmm.acquireVm(req('alice', 's', [0]))).rejects.toThrow(NoVmAvailable);
    expect((await kit.vmm.getVmByName('b1')).state).toBe(VmStates.READY);
  });

  it('prefers a dirty VM of the same owner and sandbox over a clean one', async () => {
    await kit.addReady('a1', '10.0.0.1');
    const first = await kit.vmm.acquireVm(req('alice', 's'));
    await kit.vmm.releaseVm(first.vmName);
    // A clean VM checked later (a higher score) is available too.
    kit.clock.now = T0 + 9000;
    await kit.addReady('a0', '10.0.0.2');
    const again = await kit.vmm.acquireVm(req('alice', 's'));
    expect(again.vmName).toBe(first.vmName);
    expect(again.buildsCount).toBe(1);
  });

  it('prefers the dirty VM in an earlier group over a clean one in a later group, and a later group\'s dirty VM over nothing', async () => {
    await kit.addReady('b1', '10.0.0.2', 1);
    const b = await kit.vmm.acquireVm(req('alice', 's', [1]));
    await kit.vmm.releaseVm(b.vmName);
    await kit.addReady('a1', '10.0.0.1', 0);
    // Groups are tried in order: group 0 has a clean VM, which wins over group 1's dirty one.
    expect((await kit.vmm.acquireVm(req('alice', 's', [0, 1]))).vmName).toBe('a1');
    expect((await kit.vmm.acquireVm(req('alice', 's', [0, 1]))).vmName).toBe('b1');
  });

  it('never takes a VM bound to another owner, or to another sandbox of the same owner', async () => {
    await kit.addReady('a1', '10.0.0.1');
    const vm = await kit.vmm.acquireVm(req('alice', 's1'));
    await kit.vmm.releaseVm(vm.vmName);
    await expect(kit.vmm.acquireVm(req('bob', 's1'))).rejects.toThrow(NoVmAvailable);
    await expect(kit.vmm.acquireVm(req('alice', 's2'))).rejects.toThrow(NoVmAvailable);
    // Owner and sandbox that concatenate alike are still different.
    await expect(kit.vmm.acquireVm(req('alic', 'es1'))).rejects.toThrow(NoVmAvailable);
    expect((await kit.vmm.getVmByName('a1')).state).toBe(VmStates.READY);
    expect((await kit.vmm.acquireVm(req('alice', 's1'))).vmName).toBe('a1');
  });

  it('takes a clean VM only while the owner is under max_vm_per_user in that group', async () => {
    for (const n of ['a1', 'a2', 'a3']) await kit.addReady(n, '10.0.0.1', 0);
    await kit.addReady('b1', '10.0.0.2', 1);
    const one = await kit.vmm.acquireVm(req('alice', 's1'));
    await kit.vmm.acquireVm(req('alice', 's2'));
    // Limit 2 reached in group 0: the third clean VM is refused, even for a new sandbox.
    await expect(kit.vmm.acquireVm(req('alice', 's3'))).rejects.toThrow(NoVmAvailable);
    // Another group has its own count.
    expect((await kit.vmm.acquireVm(req('alice', 's3', [0, 1]))).vmName).toBe('b1');
    // A dirty VM of the owner is still handed out at the limit.
    await kit.vmm.releaseVm(one.vmName);
    expect((await kit.vmm.acquireVm(req('alice', 's1'))).vmName).toBe(one.vmName);
    // Another user is not affected.
    expect((await kit.vmm.acquireVm(req('bob', 's1'))).owner).toBe('bob');
  });

  it('reattaches: the same taskId returns the same VM and changes nothing', async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.addReady('a2', '10.0.0.2');
    const first = await kit.vmm.acquireVm(req('alice', 's', [0], { taskId: 't-9' }));
    kit.clock.now += 60_000;
    const again = await kit.vmm.acquireVm(req('alice', 's', [0], { taskId: 't-9' }));
    expect(again).toEqual(first);
    expect((await kit.vmm.getVmsByGroupAndStates('base', [VmStates.IN_USE])).length).toBe(1);
    // The same task asked by another sandbox of the owner is an error, not a second VM.
    await expect(kit.vmm.acquireVm(req('alice', 's2', [0], { taskId: 't-9' }))).rejects.toThrow(VmError);
    expect((await kit.vmm.getVmsByGroupAndStates('base', [VmStates.IN_USE])).length).toBe(1);
    // Task ids are per owner: another owner's t-9 is another task, with its own VM.
    expect((await kit.vmm.acquireVm(req('bob', 's', [0], { taskId: 't-9' }))).vmName).toBe('a2');
  });

  it('rejects malformed requests with VmError and changes nothing', async () => {
    await kit.addReady('a1', '10.0.0.1');
    const bad = [
      { ...req('alice', 's'), groups: [] },
      { ...req('alice', 's'), groups: [9] },
      { ...req('', 's') },
      { ...req('alice', 's'), sandbox: undefined },
      { ...req('alice', 's'), workerId: { pid: 5 } },
      { ...req('alice', 's'), taskId: true },
    ];
    for (const r of bad) {
      const error = await kit.vmm.acquireVm(r as never).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(VmError);
      expect(error).not.toBeInstanceOf(NoVmAvailable);
    }
    expect((await kit.vmm.getVmByName('a1')).state).toBe(VmStates.READY);
  });
});

describe('releaseVm', () => {
  it('moves in_use to ready, keeps it bound, records the release and clears the task', async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.vmm.acquireVm(req('alice', 's', [0], { taskId: 't-1', buildId: 'b-1', chroot: 'c' }));
    kit.clock.now = T0 + 7000;
    expect(await kit.vmm.releaseVm('a1')).toBe(true);
    const vm = await kit.vmm.getVmByName('a1');
    expect(vm).toMatchObject({
      state: VmStates.READY,
      owner: 'alice',
      sandbox: 's',
      usedByWorker: null,
      taskId: null,
      buildId: null,
      chroot: null,
      inUseSince: null,
      lastRelease: T0 + 7000,
      buildsCount: 1,
      checkFails: 0,
    });
    expect(await kit.vmm.getVmByTaskId('t-1')).toBeNull();
    // A second build counts again.
    await kit.vmm.acquireVm(req('alice', 's'));
    await kit.vmm.releaseVm('a1');
    expect((await kit.vmm.getVmByName('a1')).buildsCount).toBe(2);
  });

  it('sends a VM whose check failed during the build to check_health_failed', async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.vmm.acquireVm(req('alice', 's'));
    await kit.vmm.startVmCheck('a1');
    await kit.vmm.recordHealthCheckResult('a1', false);
    expect(await kit.vmm.releaseVm('a1')).toBe(true);
    expect(await kit.vmm.getVmByName('a1')).toMatchObject({ state: VmStates.CHECK_HEALTH_FAILED, checkFails: 1, buildsCount: 1, owner: 'alice' });
  });

  it('returns false and changes nothing in any state but in_use', async () => {
    await kit.vmm.addVmToPool('10.0.0.1', 'g', 'base');
    await kit.vmm.addVmToPool('10.0.0.2', 'c', 'base');
    await kit.vmm.startVmCheck('c');
    await kit.vmm.addVmToPool('10.0.0.3', 'f', 'base');
    await kit.vmm.startVmCheck('f');
    await kit.vmm.recordHealthCheckResult('f', false);
    await kit.addReady('r', '10.0.0.4');
    await kit.vmm.addVmToPool('10.0.0.5', 't', 'base');
    await kit.vmm.startVmTermination('t');
    for (const name of ['g', 'c', 'f', 'r', 't']) {
      const before = await kit.vmm.getVmByName(name);
      expect(await kit.vmm.releaseVm(name)).toBe(false);
      expect(await kit.vmm.getVmByName(name)).toEqual(before);
    }
  });

  it('throws VmDescriptorNotFound for an unknown VM', async () => {
    await expect(kit.vmm.releaseVm('ghost')).rejects.toThrow(VmDescriptorNotFound);
  });
});
