import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// Several VMs at once with real processes (spawn, health, terminate, reconcile) and real hook
// machines: a set of 3 VMs with 1 ready waits holding nothing, counts as demand, so reconcile
// spawns for it, and takes all three in one step once they are ready; two sets racing for the same
// VMs never deadlock, they are served in turn.
const prefix = uniquePrefix('acquire-set-scenario');
const stateDir = hookStateDir('acquire-set');
const PORT = 2341;
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [{ name: 'fedora', ...hookGroup({ stateDir, port: PORT }), vm_health_check_period: 3600, min_ready: 1, max_vm_total: 4, max_vm_per_user: 4 }],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
const workers: WorkerProcess[] = [];
const configFile = writeConfigFile(config);

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  const env = { VMPOOL_CONFIG: configFile, VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [vmm]);
}, 60_000);

const three = { owner: 'alice', sandbox: 'alice/multinode', workerId: 'w', items: [{ groups: ['fedora'] }, { groups: ['fedora'] }, { groups: ['fedora'] }] };

describe('several VMs at once (real processes)', () => {
  it('a set of 3 waits holding nothing, its demand makes reconcile spawn, and it takes all three at once', async () => {
    await waitForWithLogs(workers, async () => (await vmm.getAllVmRecords()).some((v) => v.state === 'ready'), 30_000, 'the first ready VM');
    let sawPartial = false;
    let done = false;
    const waiting = vmm.acquireVmSet({ ...three, jobId: 'set-1' }, { timeoutMs: 60_000 }).finally(() => {
      done = true;
    });
    // Until the set is served, no VM is in use: it never holds part of the set.
    while (!done) {
      if ((await vmm.getAllVmRecords()).some((v) => v.state === 'in_use')) sawPartial = !done;
      await new Promise((r) => setTimeout(r, 100));
    }
    const vms = await waiting;
    expect(sawPartial).toBe(false);
    expect(new Set(vms.map((v) => v.vm.vmName)).size).toBe(3);
    expect(new Set(vms.map((v) => v.leaseId)).size).toBe(3);
    for (const v of vms) expect((await vmm.getVmRecord(v.vm.vmName)).state).toBe('in_use');
    // One renew for all of them.
    expect(await vmm.renewLeases(vms.map((v) => ({ vmName: v.vm.vmName, leaseId: v.leaseId })))).toBeGreaterThan(Date.now());
    for (const v of vms) expect(await vmm.releaseVm(v.vm.vmName, v.leaseId)).toBe(true);
  }, 120_000);

  it('two sets that each need 3 of 4 VMs are served in turn, never half each', async () => {
    const a = vmm.acquireVmSet({ ...three, jobId: 'race-a' }, { timeoutMs: 60_000 });
    const b = vmm.acquireVmSet({ ...three, jobId: 'race-b' }, { timeoutMs: 60_000 });
    const first = await Promise.race([a.then((vms) => ({ vms, other: b })), b.then((vms) => ({ vms, other: a }))]);
    expect(first.vms).toHaveLength(3);
    // The other is not served while the first holds three of the four VMs.
    const inUse = (await vmm.getAllVmRecords()).filter((v) => v.state === 'in_use');
    expect(inUse).toHaveLength(3);
    for (const v of first.vms) expect(await vmm.releaseVm(v.vm.vmName, v.leaseId)).toBe(true);
    const second = await first.other;
    expect(second).toHaveLength(3);
    for (const v of second) expect(await vmm.releaseVm(v.vm.vmName, v.leaseId)).toBe(true);
  }, 120_000);
});
