import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { decideStartSpawnIfRequired } from '../../src/reconcile/decisions.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// max_vm_total: 0 drains a group: no spawns, whatever min_ready and demand ask, while the VMs it
// has are still handed out and retired by their usual timeouts.
describe('max_vm_total: 0', () => {
  const input = { groups: [{ name: 'drained', max_vm_total: 0, min_ready: 3, vm_spawn_min_interval: 0, vm_dirty_terminating_timeout: 60 }] };
  const prefix = uniquePrefix('drain');
  const clock = { now: 1_750_000_000_000 };
  let redis: Redis;
  let vmm: VmManager;
  let master: VmMaster;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
    master = new VmMaster(vmm);
    await vmm.markServerStart();
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('is a valid config, and spawns nothing for min_ready or demand', () => {
    const config = parseConfig(input, {});
    expect(config.groups[0]!.max_vm_total).toBe(0);
    const snapshot = { vms: [], groups: [{ group: 'drained', spawnsInFlight: [], demand: 5, lastSpawnStart: null }], serverStart: 0 };
    expect(decideStartSpawnIfRequired(snapshot, config, clock.now)).toEqual([]);
    expect(() => parseConfig({ groups: [{ name: 'g', max_vm_total: -1 }] }, {})).toThrow(/max_vm_total/);
  });

  it('serves a hand-added machine, and retires it by the dirty timeout, spawning none', async () => {
    clock.now += 1;
    await vmm.addVmToPool('10.5.0.1', 'hand-1', 0);
    await vmm.startVmCheck('hand-1');
    await vmm.recordHealthCheckResult('hand-1', true);
    const vm = await vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/p', workerId: 'w' });
    expect(vm.vmName).toBe('hand-1');
    expect(await vmm.releaseVm('hand-1')).toBe(true);
    clock.now += 61_000;
    const report = await master.doCycle();
    expect(report.counts.startSpawnIfRequired).toBe(0);
    expect(report.counts.removeOldDirtyVms).toBe(1);
    expect((await vmm.getVmByName('hand-1')).state).toBe('terminating');
  });
});
