import { afterEach, describe, expect, it } from 'vitest';
import { LeaseLost } from '../../src/pool/types.js';
import { acquireConfig, createAcquireKit, type AcquireKit } from '../acquire/fixtures.js';

let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

const config = acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 3, lease_timeout: 60 }] });

// A set taken by VmManager.acquireVmSet, its leases renewed by the builder's client in one call.
describe('VmPoolClient.renewAll', () => {
  it('renews every lease of a set; a lost one is reported after the others were renewed', async () => {
    kit = await createAcquireKit('client-renew-all', config);
    await kit.addReady('s1', '10.8.0.1', 0);
    await kit.addReady('s2', '10.8.0.2', 0);
    const vms = await kit.ctx.vmm.acquireVmSet({ owner: 'alice', sandbox: 's', workerId: 'w', items: [{ groups: ['base'] }, { groups: ['base'] }] }, { timeoutMs: 1_000 });
    const assignments = vms.map(({ vm, leaseId, leaseExpiresAt }) => ({ vmName: vm.vmName, vmIp: vm.vmIp, group: vm.group, leaseId, leaseExpiresAt }));
    // Backdate both leases, so that a renewal is seen in Redis.
    for (const a of assignments) await kit.redis.hset(kit.keys.vm(a.vmName), 'lease_expires_at', '1');
    const renewed = await kit.client.renewAll(assignments);
    expect(renewed.map((a) => a.vmName)).toEqual(['s1', 's2']);
    for (const a of renewed) expect(Number(await kit.redis.hget(kit.keys.vm(a.vmName), 'lease_expires_at'))).toBe(a.leaseExpiresAt);
    for (const a of renewed) expect(a.leaseExpiresAt).toBeGreaterThan(Date.now());

    expect(await kit.client.release(renewed[0]!)).toBe(true);
    await kit.redis.hset(kit.keys.vm('s2'), 'lease_expires_at', '1');
    await expect(kit.client.renewAll(renewed)).rejects.toThrow(LeaseLost);
    expect(Number(await kit.redis.hget(kit.keys.vm('s2'), 'lease_expires_at'))).toBeGreaterThan(Date.now());
  });
});
