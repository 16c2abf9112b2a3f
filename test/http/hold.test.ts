import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmDescriptorNotFound, VmError } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from '../pool/fixtures/kit.js';

// holdVm / unholdVm: a held VM keeps its state but acquire never hands it out.
describe('hold and unhold', () => {
  let kit: PoolKit;
  const acquire = (owner = 'alice', sandbox = 'sb1') => kit.vmm.acquireVm({ groups: [0], owner, sandbox, workerId: 'w1' });

  beforeEach(async () => {
    kit ??= await createPoolKit('hold');
    await kit.reset();
    await kit.vmm.markServerStart();
  });
  afterAll(async () => kit?.close());

  it('keeps a held ready VM out of acquisition, and unhold brings it back', async () => {
    await kit.addReady('vm1', '10.0.0.1');
    expect(await kit.vmm.holdVm('vm1', 'ops')).toBe(true);
    const rec = await kit.vmm.getVmRecord('vm1');
    expect(rec).toMatchObject({ state: 'ready', heldBy: 'ops', heldSince: T0 });
    expect(await kit.redis.hget(kit.keys.vm('vm1'), 'held_by')).toBe('ops');
    expect(await kit.redis.zscore(kit.keys.readyClean('base'), 'vm1')).toBeNull();
    await expect(acquire()).rejects.toBeInstanceOf(NoVmAvailable);

    expect(await kit.vmm.unholdVm('vm1')).toBe(true);
    expect((await kit.vmm.getVmRecord('vm1')).heldBy).toBeNull();
    expect((await acquire()).vmName).toBe('vm1');
  });

  it('keeps a dirty held VM away from its own owner and sandbox', async () => {
    await kit.addReady('vm1', '10.0.0.1');
    await acquire();
    expect(await kit.vmm.releaseVm('vm1')).toBe(true);
    await kit.vmm.holdVm('vm1', 'ops');
    await expect(acquire()).rejects.toBeInstanceOf(NoVmAvailable);
    await kit.vmm.unholdVm('vm1');
    const again = await acquire();
    expect(again).toMatchObject({ vmName: 'vm1', owner: 'alice', sandbox: 'sb1' });
  });

  it('does not put a held VM back into the ready index when it becomes ready', async () => {
    await kit.addReady('vm1', '10.0.0.1');
    await acquire();
    await kit.vmm.holdVm('vm1', 'ops'); // held while in use
    expect(await kit.vmm.releaseVm('vm1')).toBe(true);
    expect((await kit.vmm.getVmRecord('vm1')).state).toBe('ready');
    await expect(acquire()).rejects.toBeInstanceOf(NoVmAvailable);
    // A health check cycle (ready -> check_health -> ready) keeps it out too.
    kit.clock.now += 1000;
    expect(await kit.vmm.startVmCheck('vm1')).toBe(true);
    expect((await kit.vmm.recordHealthCheckResult('vm1', true)).outcome).toBe('ok');
    await expect(acquire()).rejects.toBeInstanceOf(NoVmAvailable);
    await kit.vmm.unholdVm('vm1');
    expect((await acquire()).vmName).toBe('vm1');
  });

  it('holding a VM that is not ready changes only the hold fields', async () => {
    await kit.vmm.addVmToPool('10.0.0.2', 'vm2', 'base');
    expect(await kit.vmm.holdVm('vm2', 'ops')).toBe(true);
    expect(await kit.vmm.unholdVm('vm2')).toBe(true);
    expect((await kit.vmm.getVmRecord('vm2')).state).toBe('got_ip');
    expect(await kit.redis.zcard(kit.keys.readyClean('base'))).toBe(0);
  });

  it('refuses: already held, not held, terminating, unknown VM, empty holder', async () => {
    await kit.addReady('vm1', '10.0.0.1');
    expect(await kit.vmm.holdVm('vm1', 'ops')).toBe(true);
    expect(await kit.vmm.holdVm('vm1', 'someone-else')).toBe(false);
    expect((await kit.vmm.getVmRecord('vm1')).heldBy).toBe('ops');
    expect(await kit.vmm.unholdVm('vm1')).toBe(true);
    expect(await kit.vmm.unholdVm('vm1')).toBe(false);

    await kit.vmm.startVmTermination('vm1');
    await expect(kit.vmm.holdVm('vm1', 'ops')).rejects.toBeInstanceOf(VmError);
    expect((await kit.vmm.getVmRecord('vm1')).heldBy).toBeNull();

    await expect(kit.vmm.holdVm('nope', 'ops')).rejects.toBeInstanceOf(VmDescriptorNotFound);
    await expect(kit.vmm.unholdVm('nope')).rejects.toBeInstanceOf(VmDescriptorNotFound);
    await kit.addReady('vm3', '10.0.0.3');
    await expect(kit.vmm.holdVm('vm3', '')).rejects.toThrow(/who holds/);
  });
});
