import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';
import { Job, Queue } from 'bullmq';
import { ACQUIRE_QUEUE, acquireSetRequestId, addAcquireSetJob, type AcquireSetRequestData, type VmSetAssignment } from '../../queues/acquire.js';

// Several VMs at once with real processes (spawn, health, terminate, reconcile) and real hook
// machines: a set of 3 VMs with 1 ready waits holding nothing, counts as demand, so reconcile
// spawns for it, and takes all three in one step once they are ready; two sets racing for the same
// VMs never deadlock, they are served in turn.
const prefix = uniquePrefix('acquire-set-scenario');
const stateDir = hookStateDir('acquire-set');
const trioDir = hookStateDir('acquire-set-trio');
const PORT = 2341;
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [
    { name: 'fedora', ...hookGroup({ stateDir, port: PORT }), vm_health_check_period: 3600, min_ready: 1, max_vm_total: 4, max_vm_per_user: 4 },
    // Room for 3 VMs: two sets of 2 can only be served in turn; a released VM of another owner is
    // terminated after 1 s, making room for a clean one.
    { name: 'trio', ...hookGroup({ stateDir: trioDir, port: PORT }), vm_health_check_period: 3600, min_ready: 0, max_vm_total: 3, max_vm_per_user: 3, vm_dirty_terminating_timeout: 1 },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let queue: Queue;
const workers: WorkerProcess[] = [];
const configFile = writeConfigFile(config);

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  const env = { VMPOOL_CONFIG: configFile, VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
  queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await queue?.close();
  removeHookMachines(stateDir);
  removeHookMachines(trioDir);
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

  it('two acquire-set jobs of different owners that each need 2 of 3 VMs never deadlock: served in turn through the line', async () => {
    const pair = (owner: string): AcquireSetRequestData => ({ owner, sandbox: `${owner}/mn`, requestId: 'pair', vms: [{ groups: ['trio'] }, { groups: ['trio'] }], timeoutMs: 90_000 });
    const enqueue = (data: AcquireSetRequestData) => addAcquireSetJob(queue, data, { jobId: acquireSetRequestId(data.owner, data.requestId), timestamp: Date.now() });
    const a = await enqueue(pair('carol'));
    const b = await enqueue(pair('dave'));
    // Watch the pool: until its set is served, an owner never holds just one VM of its pair (a
    // half-served set). Once served, its builder releases the VMs one by one.
    const halves: string[] = [];
    const served = new Set<string>();
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const used = (await vmm.getAllVmRecords()).filter((v) => v.group === 'trio' && v.state === 'in_use');
        for (const owner of ['carol', 'dave'].filter((o) => !served.has(o))) {
          const n = used.filter((v) => v.owner === owner).length;
          if (n !== 0 && n !== 2) halves.push(`${owner} held ${n}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const finished = async (job: Job) => {
      await waitForWithLogs(workers, async () => ['completed', 'failed'].includes(await job.getState()), 90_000, `set job ${job.id}`);
      const stored = (await Job.fromId(queue, String(job.id)))!;
      if (!stored.returnvalue) throw new Error(`set job ${job.id} failed: ${stored.failedReason}`);
      return stored.returnvalue as VmSetAssignment;
    };
    const first = await finished(a);
    served.add('carol');
    expect(first.vms).toHaveLength(2);
    expect(new Set(first.vms.map((v) => v.leaseId)).size).toBe(2);
    // The second waits, in line, holding nothing, while the first holds two of the three.
    expect(await b.getState()).toBe('delayed');
    expect((await vmm.getAllVmRecords()).filter((v) => v.owner === 'dave' && v.state === 'in_use')).toEqual([]);
    for (const v of first.vms) expect(await vmm.releaseVm(v.vmName, v.leaseId)).toBe(true);
    const second = await finished(b);
    served.add('dave');
    watching = false;
    await watcher;
    expect(second.vms).toHaveLength(2);
    expect(second.vms.every((v) => !first.vms.some((f) => f.vmName === v.vmName))).toBe(true);
    expect(halves).toEqual([]);
    for (const v of second.vms) expect(await vmm.releaseVm(v.vmName, v.leaseId)).toBe(true);
  }, 180_000);
});
