import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, VmStates, type VmState } from '../../../src/index.js';
import type { ConfigInput } from '../../../src/config/index.js';
import { VmPoolClient } from '../../../src/client/index.js';
import { addAcquireJobs } from '../../../queues/acquire.js';
import { QueueNames } from '../../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';

// Issue 20, "one owner spends the budget": an owner whose max_vm_per_user is 2 opens 40 acquire
// requests. As real processes (acquire, spawn, health, terminate, reconcile) on the real Redis,
// the pool spawns at most 2 machines for it plus the warm pool, not its max_vm_total of 12, and
// another owner's request is served at once by the ready VM, ahead of the flood's waiting requests.
const prefix = uniquePrefix('owner-flood');
const stateDir = hookStateDir('owner-flood');
const PORT = 2321;
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [
    {
      ...hookGroup({ stateDir, port: PORT }),
      name: 'shared',
      archs: ['x86_64'],
      min_ready: 1,
      max_vm_total: 12,
      max_vm_per_user: 2,
      max_spawn_processes: 12,
      vm_spawn_min_interval: 0,
      lease_timeout: 120,
      vm_max_check_fails: 0,
    },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let acquireQueue: Queue;
let spawnQueue: Queue;
let reconcileQueue: Queue;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  acquireQueue = new Queue(QueueNames.ACQUIRE, { connection: redis, prefix });
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [client, acquireQueue, spawnQueue, vmm], reconcileQueue);
}, 60_000);

/** Spawns ever started in the group (each spawn job is one machine asked of the provider). */
async function spawnsStarted(): Promise<number> {
  const counts = await spawnQueue.getJobCounts('completed', 'failed', 'active', 'waiting', 'delayed', 'prioritized');
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

async function vmsOf(owner: string | null, state: VmState = VmStates.IN_USE) {
  return (await vmm.getVmsByGroupAndStates('shared', [state])).filter((v) => v.owner === owner);
}

describe('one owner floods the line', { timeout: 90_000 }, () => {
  it('spawns at most max_vm_per_user machines for it (plus min_ready), and another owner is served first', async () => {
    await waitForWithLogs(workers, async () => (await vmsOf(null, VmStates.READY)).length > 0 || null, 30_000, 'the warm VM');
    await addAcquireJobs(
      acquireQueue,
      Array.from({ length: 40 }, (_, i) => ({ jobId: `flood-${i}`, data: { owner: 'flood', sandbox: 'flood/p', groups: [0], timeoutMs: 80_000 } })),
    );
    // The flood gets the 2 VMs it may use (the warm one, and one spawned for it)...
    await waitForWithLogs(workers, async () => (await vmsOf('flood')).length === 2 || null, 40_000, 'the flood holding 2 VMs');
    // ...and a new warm VM is ready, that the flood may not take.
    await waitForWithLogs(workers, async () => (await vmsOf(null, VmStates.READY)).length > 0 || null, 30_000, 'a new warm VM');
    // Reconcile runs every 0.5 s: over 5 s (10 cycles) it must not spawn for the 38 requests that still wait.
    let most = 0;
    for (let i = 0; i < 25; i++) {
      most = Math.max(most, await spawnsStarted());
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(await acquireQueue.getDelayedCount()).toBe(38);
    expect(most).toBeLessThanOrEqual(3);
    expect((await vmm.getAllVmsInGroup('shared')).length).toBeLessThanOrEqual(3);

    // A second owner's request is served at once by the ready VM, ahead of the 38 in line.
    const second = await client.acquire({ owner: 'second', sandbox: 'second/p', groups: [0], timeoutMs: 10_000 });
    expect((await vmm.getVmByName(second.vmName)).owner).toBe('second');
    expect(await vmsOf('flood')).toHaveLength(2);
  });
});
