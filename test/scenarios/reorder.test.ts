import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, VmStates, type VmDescriptor } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { Queue } from 'bullmq';
import { QueueNames } from '../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// Groups are identified by name: an operator reorders the config's group list and restarts every
// process. Each arch must still get its own group's machine (issue 19, point 1), and nothing is
// spawned or terminated because of the new order.
const prefix = uniquePrefix('reorder');
const stateDir = hookStateDir('reorder');
const common = { ...hookGroup({ stateDir, port: 2297 }), vm_max_check_fails: 0, min_ready: 1, max_vm_total: 2, lease_timeout: 60 };
const alpha = { name: 'alpha', archs: ['x86_64'], ...common };
const beta = { name: 'beta', archs: ['aarch64'], ...common };
const configOf = (groups: (typeof alpha)[]) => ({ redis: { url: REDIS_URL, prefix }, vm_cycle_timeout: 0.5, groups }) satisfies ConfigInput;
const TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'];

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let reconcileQueue: Queue;
let workers: WorkerProcess[] = [];

async function start(groups: (typeof alpha)[]): Promise<void> {
  const env = { VMPOOL_CONFIG: writeConfigFile(configOf(groups)), VMPOOL_PREFIX: prefix };
  workers = await Promise.all(TYPES.map((t) => startWorkerProcess(t, env)));
}

async function stop(): Promise<void> {
  await Promise.all(workers.map((w) => w.stop()));
  workers = [];
}

async function readyClean(group: string): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates(group, [VmStates.READY]);
  return vms.find((v) => v.owner === null) ?? null;
}

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(configOf([alpha, beta]), { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
}, 60_000);

afterAll(async () => {
  await stop();
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [client, vmm], reconcileQueue);
}, 60_000);

describe('reordering the groups in the config', { timeout: 120_000 }, () => {
  it('changes nothing: after a restart with the list reversed, each arch gets its own group machine', async () => {
    await start([alpha, beta]);
    const alphaVm = await waitForWithLogs(workers, () => readyClean('alpha'), 40_000, "alpha's warm VM");
    const betaVm = await waitForWithLogs(workers, () => readyClean('beta'), 40_000, "beta's warm VM");
    await stop();

    await start([beta, alpha]);
    const x86 = await client.acquire({ owner: 'alice', sandbox: 'alice/p', arch: 'x86_64', taskId: 'reorder-x86', timeoutMs: 20_000 });
    const arm = await client.acquire({ owner: 'bob', sandbox: 'bob/p', arch: 'aarch64', taskId: 'reorder-arm', timeoutMs: 20_000 });
    expect(x86).toMatchObject({ vmName: alphaVm.vmName, group: 'alpha' });
    expect(arm).toMatchObject({ vmName: betaVm.vmName, group: 'beta' });
    // An index (Copr's group integer) is resolved by the config in force: 1 is alpha now (a new warm VM).
    const byIndex = await client.acquire({ owner: 'carol', sandbox: 'carol/p', groups: [1], taskId: 'reorder-index', timeoutMs: 40_000 });
    expect(byIndex.group).toBe('alpha');
    expect(byIndex.vmName).not.toBe(alphaVm.vmName);
    // Nothing was terminated for the reorder: both first VMs are still in use.
    expect((await vmm.getVmByName(alphaVm.vmName)).state).toBe(VmStates.IN_USE);
    expect((await vmm.getVmByName(betaVm.vmName)).state).toBe(VmStates.IN_USE);
    await client.release(x86);
    await client.release(arm);
    await client.release(byIndex);
  });
});
