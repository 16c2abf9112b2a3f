import { Queue, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmManager, VmStates, type VmDescriptor } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { QueueNames } from '../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, listenerPid, removeHookMachines } from '../helpers/hookMachines.js';

// The whole job system as real processes: acquire, spawn, health, terminate and two reconcile
// replicas, against the real Redis. Machines come from the command provider's real hook processes
// (TCP listeners on loopback, test/fixtures/hooks) and are checked with the tcp check.
const prefix = uniquePrefix('system');
const stateDir = hookStateDir('system');
const PORT = 2298;
const common = { ...hookGroup({ stateDir, port: PORT }), vm_max_check_fails: 0 };
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [
    { name: 'warm', archs: ['x86_64'], min_ready: 1, max_vm_total: 3, max_vm_per_user: 2, vm_dirty_terminating_timeout: 3, lease_timeout: 60, ...common },
    { name: 'demand', archs: ['aarch64'], min_ready: 0, max_vm_total: 1, lease_timeout: 6, on_lease_expiry: 'terminate', ...common },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let terminateQueue: Queue;
let reconcileQueue: Queue;
const workers: WorkerProcess[] = [];

const pidOf = (vmName: string) => listenerPid(stateDir, vmName);

async function readyCleanVm(group: number, except: string[] = []): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates(group, [VmStates.READY]);
  return vms.find((v) => v.owner === null && !except.includes(v.vmName)) ?? null;
}

async function terminationOf(vmName: string): Promise<Job | undefined> {
  const jobs = await terminateQueue.getJobs(['completed', 'active', 'waiting', 'delayed', 'failed']);
  return jobs.find((j) => j.data.vmName === vmName);
}

async function gone(vmName: string): Promise<boolean> {
  return (await vmm.getAllVms()).every((v) => v.vmName !== vmName);
}

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
  const types = ['acquire', 'spawn', 'health', 'terminate', 'reconcile', 'reconcile'];
  workers.push(...(await Promise.all(types.map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [client, terminateQueue, vmm], reconcileQueue);
}, 60_000);

describe('the job system in worker processes', () => {
  let first: string;

  it('spawns the warm pool, checks it to ready and hands a VM to a builder', async () => {
    const warm = await waitFor(() => readyCleanVm(0), 30_000, 'a warm ready VM');
    const assignment = await client.acquire({ owner: 'alice', sandbox: 'alice/p1', groups: [0], taskId: 'build-1', timeoutMs: 20_000 });
    expect(assignment.group).toBe('warm');
    expect(assignment.vmName).toBe(warm.vmName);
    expect(assignment.leaseExpiresAt).toBeGreaterThan(Date.now());
    const vm = await vmm.getVmByName(assignment.vmName);
    expect(vm.state).toBe(VmStates.IN_USE);
    expect(vm.owner).toBe('alice');
    expect(vm.taskId).toBe('build-1');
    first = assignment.vmName;
  });

  it('refills the warm pool after its VM was taken', async () => {
    const refill = await waitFor(() => readyCleanVm(0, [first]), 30_000, 'a new warm VM');
    expect(refill.vmName).not.toBe(first);
  });

  it('reuses a released VM for the same owner and sandbox, then terminates it after the dirty timeout', async () => {
    const held = await vmm.getVmByTaskId('build-1');
    expect(await client.release({ vmName: first, vmIp: held!.vmIp, group: 'warm', leaseId: (await vmm.getVmRecord(first)).leaseId!, leaseExpiresAt: 0 })).toBe(true);
    const again = await client.acquire({ owner: 'alice', sandbox: 'alice/p1', groups: [0], taskId: 'build-2', timeoutMs: 20_000 });
    expect(again.vmName).toBe(first);
    expect((await vmm.getVmByName(first)).buildsCount).toBe(1);
    await client.release(again);
    const released = await vmm.getVmByName(first);
    expect(released.state).toBe(VmStates.READY);
    expect(released.owner).toBe('alice');
    await waitFor(() => gone(first), 30_000, 'the dirty VM terminated');
    expect((await terminationOf(first))?.data.reason).toBe('dirty_timeout');
    expect(pidOf(first)).toBeNull();
  });

  it('terminates a VM that fails its check and spawns a replacement', async () => {
    const victim = await waitFor(() => readyCleanVm(0), 30_000, 'a ready VM');
    process.kill(pidOf(victim.vmName)!, 'SIGKILL');
    await waitFor(() => gone(victim.vmName), 30_000, 'the broken VM terminated');
    expect((await terminationOf(victim.vmName))?.data.reason).toBe('health_check_failed');
    const replacement = await waitFor(() => readyCleanVm(0, [victim.vmName]), 30_000, 'a replacement');
    expect(replacement.vmName).not.toBe(victim.vmName);
  });

  let demandVm: string;
  it('spawns on demand for a waiting request in a group without a warm pool', async () => {
    expect(await vmm.getAllVmsInGroup('demand')).toEqual([]);
    const assignment = await client.acquire({ owner: 'bob', sandbox: 'bob/p', arch: 'aarch64', taskId: 'bob-1', timeoutMs: 30_000 });
    expect(assignment.group).toBe('demand');
    demandVm = assignment.vmName;
    expect((await vmm.getVmByName(demandVm)).owner).toBe('bob');
  });

  it('reattaches a restarted builder to the VM its task already holds', async () => {
    const restarted = new VmPoolClient({ redis: REDIS_URL, prefix, graceMs: 5_000 });
    try {
      const again = await restarted.acquire({ owner: 'bob', sandbox: 'bob/p', arch: 'aarch64', taskId: 'bob-1', timeoutMs: 5_000 });
      expect(again.vmName).toBe(demandVm);
      expect((await vmm.getVmsByGroupAndStates('demand', [VmStates.IN_USE])).map((v) => v.vmName)).toEqual([demandVm]);
    } finally {
      await restarted.close();
    }
  });

  it('fails an acquire with NoVmAvailable when nothing fits within its timeout', async () => {
    const err = await client.acquire({ owner: 'carol', sandbox: 'c', arch: 'aarch64', timeoutMs: 1_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoVmAvailable);
    expect((err as Error).message).toMatch(/NoVmAvailable|no VM/i);
    expect((await vmm.getVmByName(demandVm)).owner).toBe('bob');
  });

  it('reclaims the VM of a builder that vanished once its lease lapses', async () => {
    // bob never renews: the lease (6 s) lapses and on_lease_expiry terminates the VM.
    await waitFor(() => gone(demandVm), 30_000, 'the leased VM reclaimed');
    expect((await terminationOf(demandVm))?.data.reason).toBe('lease_expired');
  });

  it('never runs two reconcile cycles at once across the two replicas', async () => {
    const cycles = (await reconcileQueue.getJobs(['completed'], 0, 1000)).filter((j) => j.processedOn && j.finishedOn);
    expect(cycles.length).toBeGreaterThan(10);
    const byWorker = new Set(cycles.map((j) => j.processedBy));
    expect(byWorker.size).toBe(2);
    const spans = cycles.map((j) => [j.processedOn!, j.finishedOn!] as const).sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
  });
});
