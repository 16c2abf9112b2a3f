import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmDescriptorNotFound, VmError, VmStates } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-registry');
});
beforeEach(async () => kit.reset());
afterAll(async () => kit.close());

async function keyCount(): Promise<number> {
  const [, keys] = await kit.redis.scan('0', 'MATCH', `${kit.prefix}:*`, 'COUNT', 10_000);
  return keys.length;
}

describe('vmGroups', () => {
  it('lists the group ids, one per configured group', () => {
    expect(kit.vmm.vmGroups).toEqual(['base', 'arm']);
  });
});

describe('addVmToPool', () => {
  it('stores a VM in got_ip with every unset field null', async () => {
    const vm = await kit.vmm.addVmToPool('10.0.0.1', 'vm-a', 1);
    expect(vm).toEqual({
      vmName: 'vm-a',
      vmIp: '10.0.0.1',
      group: 'arm',
      state: VmStates.GOT_IP,
      owner: null,
      boundToUser: null,
      sandbox: null,
      usedByWorker: null,
      taskId: null,
      buildId: null,
      chroot: null,
      inUseSince: null,
      lastHealthCheck: null,
      checkFails: 0,
      lastRelease: null,
      buildsCount: 0,
      terminatingSince: null,
    });
    expect(await kit.vmm.getVmByName('vm-a')).toEqual(vm);
  });

  it('accepts IPv6 addresses', async () => {
    const vm = await kit.vmm.addVmToPool('fd00::5', 'vm6', 0);
    expect(vm.vmIp).toBe('fd00::5');
    expect((await kit.vmm.lookupVmsByIp('fd00::5')).map((v) => v.vmName)).toEqual(['vm6']);
  });

  it('refuses a name already in the pool with VmError and keeps the first VM', async () => {
    await kit.vmm.addVmToPool('10.0.0.1', 'vm-a', 0);
    await expect(kit.vmm.addVmToPool('10.0.0.2', 'vm-a', 1)).rejects.toThrow(VmError);
    const vm = await kit.vmm.getVmByName('vm-a');
    expect(vm.vmIp).toBe('10.0.0.1');
    expect(vm.group).toBe('base');
    expect(await kit.vmm.lookupVmsByIp('10.0.0.2')).toEqual([]);
  });

  const bad: [string, string, string, number][] = [
    ['invalid IP', '10.0.0.300', 'vm-x', 0],
    ['IP with text', 'not-an-ip', 'vm-x', 0],
    ['empty IP', '', 'vm-x', 0],
    ['name with a colon', '10.0.0.9', 'vm:x', 0],
    ['name with a space', '10.0.0.9', 'vm x', 0],
    ['name with shell characters', '10.0.0.9', 'vm;rm', 0],
    ['empty name', '10.0.0.9', '', 0],
    ['name starting with a dash', '10.0.0.9', '-vm', 0],
    ['name too long', '10.0.0.9', 'v'.repeat(64), 0],
    ['unknown group', '10.0.0.9', 'vm-x', 2],
    ['negative group', '10.0.0.9', 'vm-x', -1],
    ['fractional group', '10.0.0.9', 'vm-x', 0.5],
  ];
  it.each(bad)('rejects %s with VmError and stores nothing', async (_label, ip, name, group) => {
    const error = await kit.vmm.addVmToPool(ip, name, group).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VmError);
    expect(error).not.toBeInstanceOf(NoVmAvailable);
    expect(await keyCount()).toBe(0);
    expect(await kit.vmm.getAllVms()).toEqual([]);
  });
});

describe('lookups', () => {
  beforeEach(async () => {
    await kit.vmm.markServerStart();
    kit.clock.now += 1000;
    await kit.addReady('a1', '10.0.0.1', 0);
    await kit.addReady('a2', '10.0.0.2', 0);
    await kit.vmm.addVmToPool('10.0.0.1', 'b1', 1); // same IP as a1 (the provider reused it)
    await kit.vmm.addVmToPool('10.0.0.3', 'b2', 1);
  });

  it('lookupVmsByIp returns every VM with that IP, and nothing for an unknown IP', async () => {
    expect((await kit.vmm.lookupVmsByIp('10.0.0.1')).map((v) => v.vmName).sort()).toEqual(['a1', 'b1']);
    expect((await kit.vmm.lookupVmsByIp('10.0.0.2')).map((v) => v.vmName)).toEqual(['a2']);
    expect(await kit.vmm.lookupVmsByIp('10.9.9.9')).toEqual([]);
  });

  it('getVmByName throws VmDescriptorNotFound for an unknown name', async () => {
    await expect(kit.vmm.getVmByName('nope')).rejects.toThrow(VmDescriptorNotFound);
    await expect(kit.vmm.getVmByName('')).rejects.toThrow(VmDescriptorNotFound);
    expect((await kit.vmm.getVmByName('b2')).vmIp).toBe('10.0.0.3');
  });

  it('getVmByTaskId finds the VM holding a task, and null otherwise', async () => {
    expect(await kit.vmm.getVmByTaskId('task-1')).toBeNull();
    const vm = await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 's', workerId: 'w', taskId: 'task-1' });
    expect((await kit.vmm.getVmByTaskId('task-1'))?.vmName).toBe(vm.vmName);
    expect(await kit.vmm.getVmByTaskId('task-2')).toBeNull();
    await kit.vmm.releaseVm(vm.vmName);
    expect(await kit.vmm.getVmByTaskId('task-1')).toBeNull();
  });

  it('getVmsByGroupAndStates filters by group and states; a null group means every group', async () => {
    const names = (vms: { vmName: string }[]) => vms.map((v) => v.vmName).sort();
    expect(names(await kit.vmm.getVmsByGroupAndStates(0, [VmStates.READY]))).toEqual(['a1', 'a2']);
    expect(names(await kit.vmm.getVmsByGroupAndStates(1, [VmStates.READY]))).toEqual([]);
    expect(names(await kit.vmm.getVmsByGroupAndStates(1, [VmStates.GOT_IP]))).toEqual(['b1', 'b2']);
    expect(names(await kit.vmm.getVmsByGroupAndStates(null, [VmStates.GOT_IP, VmStates.READY]))).toEqual(['a1', 'a2', 'b1', 'b2']);
    expect(names(await kit.vmm.getVmsByGroupAndStates(null, [VmStates.IN_USE]))).toEqual([]);
    expect(await kit.vmm.getVmsByGroupAndStates(0, [])).toEqual([]);
    await expect(kit.vmm.getVmsByGroupAndStates(7, [VmStates.READY])).rejects.toThrow(VmError);
    await expect(kit.vmm.getVmsByGroupAndStates(0, ['bogus' as never])).rejects.toThrow(VmError);
  });

  it('getAllVms and getAllVmsInGroup return full descriptors', async () => {
    const all = await kit.vmm.getAllVms();
    expect(all.map((v) => v.vmName).sort()).toEqual(['a1', 'a2', 'b1', 'b2']);
    const a1 = all.find((v) => v.vmName === 'a1')!;
    expect(a1).toMatchObject({ state: VmStates.READY, group: 'base', lastHealthCheck: T0 + 1000, checkFails: 0 });
    expect((await kit.vmm.getAllVmsInGroup(1)).map((v) => v.vmName).sort()).toEqual(['b1', 'b2']);
    expect((await kit.vmm.getAllVmsInGroup(0)).map((v) => v.vmName).sort()).toEqual(['a1', 'a2']);
  });
});

describe('canUserAcquireMoreVm', () => {
  it('is true below max_vm_per_user and false at it, per group', async () => {
    await kit.vmm.markServerStart();
    kit.clock.now += 1000;
    for (const n of ['a1', 'a2', 'a3']) await kit.addReady(n, '10.0.1.1', 0);
    await kit.addReady('b1', '10.0.1.2', 1);
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 0)).toBe(true);
    await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 's1', workerId: 'w' });
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 0)).toBe(true);
    const second = await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 's2', workerId: 'w' });
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 0)).toBe(false);
    // Released VMs stay bound: the limit still holds.
    await kit.vmm.releaseVm(second.vmName);
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 0)).toBe(false);
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 1)).toBe(true);
    expect(await kit.vmm.canUserAcquireMoreVm('bob', 0)).toBe(true);
    // Removing a bound VM frees a slot.
    await kit.vmm.startVmTermination(second.vmName);
    await kit.vmm.removeVmFromPool(second.vmName);
    expect(await kit.vmm.canUserAcquireMoreVm('alice', 0)).toBe(true);
    await expect(kit.vmm.canUserAcquireMoreVm('alice', 5)).rejects.toThrow(VmError);
  });
});

describe('construction', () => {
  it('accepts a Redis URL (and closes that connection), defaults the prefix to config.redis.prefix and the clock to Date.now', async () => {
    const { REDIS_URL, uniquePrefix, deleteKeysWithPrefix } = await import('../helpers/redis.js');
    const { VmManager } = await import('../../src/pool/vmManager.js');
    const { parseConfig } = await import('../../src/config/index.js');
    const prefix = uniquePrefix('pool-ctor');
    const config = parseConfig({ redis: { prefix }, groups: [{ name: 'g' }] }, {});
    const vmm = new VmManager(config, { redis: REDIS_URL });
    // The manager's own connection (its cycle lock uses it).
    const connection = vmm.cycleLock(1_000).redis;
    try {
      expect(vmm.prefix).toBe(prefix);
      const before = Date.now();
      await vmm.markServerStart();
      await vmm.addVmToPool('10.9.0.1', 'c1', 0);
      await vmm.startVmCheck('c1');
      const after = Date.now();
      const vm = await vmm.getVmByName('c1');
      expect(vm.lastHealthCheck).toBeGreaterThanOrEqual(before);
      expect(vm.lastHealthCheck).toBeLessThanOrEqual(after);
      // Stored under the config's prefix, not the test kit's.
      expect(await kit.redis.exists(`${prefix}:{vmpool}:vm:c1`)).toBe(1);
      expect(await kit.redis.exists(kit.keys.vm('c1'))).toBe(0);
    } finally {
      await deleteKeysWithPrefix(kit.redis, prefix);
      await vmm.close();
    }
    // The socket closes just after QUIT's reply.
    for (let i = 0; i < 100 && connection.status !== 'end'; i++) await new Promise((r) => setTimeout(r, 10));
    expect(connection.status).toBe('end');
  });

  it('leaves an injected connection open on close', async () => {
    const { VmManager } = await import('../../src/pool/vmManager.js');
    const vmm = new VmManager({ groups: [{ name: 'g' }] }, { redis: kit.redis, prefix: kit.prefix });
    await vmm.close();
    expect(await kit.redis.ping()).toBe('PONG');
  });

  it('takes a parsed Config as it is, and parses a ConfigInput', async () => {
    const { VmManager } = await import('../../src/pool/vmManager.js');
    const { parseConfig } = await import('../../src/config/index.js');
    const config = parseConfig({ groups: [{ name: 'g' }] }, {});
    const parsed = new VmManager(config, { redis: kit.redis, prefix: kit.prefix });
    expect(parsed.config).toBe(config);
    const input = { groups: [{ name: 'g' }] };
    const fromInput = new VmManager(input, { redis: kit.redis, prefix: kit.prefix });
    expect(fromInput.config).not.toBe(input);
    expect(fromInput.config).toEqual(config);
    await parsed.close();
    await fromInput.close();
  });

  it('adds jobs through the queue handles it is given, and leaves them open on close', async () => {
    const { VmManager } = await import('../../src/pool/vmManager.js');
    const { QueueSet } = await import('../../queues/queueSet.js');
    const { QueueNames } = await import('../../queues/names.js');
    const queues = new QueueSet(kit.redis, kit.prefix);
    const vmm = new VmManager({ groups: [{ name: 'g' }] }, { redis: kit.redis, prefix: kit.prefix, queues });
    try {
      expect(vmm.queue(QueueNames.HEALTH)).toBe(queues.get(QueueNames.HEALTH));
      expect(vmm.getTerminateQueue()).toBe(queues.get(QueueNames.TERMINATE));
      await vmm.close();
      // Still open: the owner of the set closes it.
      await vmm.enqueueHealthCheck('vm-q');
      expect(await queues.get(QueueNames.HEALTH).getJobCounts('waiting')).toEqual({ waiting: 1 });
    } finally {
      await queues.close();
    }
  });

  it('rejects a bad config', async () => {
    const { VmManager } = await import('../../src/pool/vmManager.js');
    expect(() => new VmManager({ groups: [{ name: 'g', max_vm_total: -1 }] } as never, { redis: kit.redis })).toThrow(/max_vm_total/);
  });
});
