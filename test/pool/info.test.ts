import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { VmError } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-info');
});
afterAll(async () => kit.close());
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

describe('info', () => {
  it('prints one table per group with names, IPs, states, checks, owners, builds and tasks, times relative', async () => {
    await kit.addReady('vm-ready', '10.3.0.1', 0);
    await kit.addReady('vm-busy', '10.3.0.2', 0);
    await kit.vmm.addVmToPool('10.3.0.3', 'vm-new', 'arm');
    await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/proj', workerId: 'w1', taskId: '1234-fedora', buildId: '1234', chroot: 'fedora-40' });
    const busy = await kit.vmm.getVmsByGroupAndStates('base', ['in_use']);
    kit.clock.now = T0 + 1000 + 2 * 60_000 + 5_000;
    const text = await kit.vmm.info();
    expect(text).toContain('base');
    expect(text).toContain('arm');
    for (const s of ['vm-ready', 'vm-busy', 'vm-new', '10.3.0.1', '10.3.0.3', 'ready', 'in_use', 'got_ip', 'alice', 'alice/proj', '1234-fedora']) {
      expect(text).toContain(s);
    }
    expect(text).toContain('2 minutes ago');
    // vm-new (group 1) is listed after the group 0 VMs, in its own block.
    expect(text.indexOf('vm-new')).toBeGreaterThan(text.indexOf('arm'));
    expect(text.indexOf(busy[0]!.vmName)).toBeLessThan(text.indexOf('arm'));
    // The line of the never-checked VM has no relative check time.
    const newLine = text.split('\n').find((l) => l.includes('vm-new'))!;
    expect(newLine).not.toMatch(/ago/);
  });

  it('prints the groups even when the pool is empty', async () => {
    const text = await kit.vmm.info();
    expect(text).toContain('base');
    expect(text).toContain('arm');
    expect(text).not.toContain('10.');
  });
});

describe('writeVmPoolInfo / readVmPoolInfo', () => {
  it('stores values per group and key', async () => {
    expect(await kit.vmm.readVmPoolInfo('base', 'last_vm_spawn_start')).toBeNull();
    await kit.vmm.writeVmPoolInfo('base', 'last_vm_spawn_start', T0);
    await kit.vmm.writeVmPoolInfo('arm', 'last_vm_spawn_start', 'x');
    expect(await kit.vmm.readVmPoolInfo('base', 'last_vm_spawn_start')).toBe(String(T0));
    expect(await kit.vmm.readVmPoolInfo('arm', 'last_vm_spawn_start')).toBe('x');
    await kit.vmm.writeVmPoolInfo('base', 'last_vm_spawn_start', 5);
    expect(await kit.vmm.readVmPoolInfo('base', 'last_vm_spawn_start')).toBe('5');
    expect(await kit.vmm.readVmPoolInfo('arm', 'other')).toBeNull();
  });

  it('rejects an unknown group with VmError', async () => {
    await expect(kit.vmm.writeVmPoolInfo(3, 'k', 'v')).rejects.toThrow(VmError);
    await expect(kit.vmm.readVmPoolInfo(3, 'k')).rejects.toThrow(VmError);
  });
});
