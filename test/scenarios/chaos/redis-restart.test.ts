import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, VmStates, type VmDescriptor } from '../../../src/index.js';
import { VmPoolClient } from '../../../src/client/index.js';
import { QueueNames } from '../../../queues/names.js';
import { uniquePrefix } from '../../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { startPrivateRedis, type PrivateRedis } from '../../helpers/redisServers.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';

// Worker processes survive a Redis restart: a PRIVATE redis-server (its own port and dir, with an
// append-only file so the data survives) is shut down under running workers and started again; the
// workers stay up and the system works again. The shared Redis is never touched.
const prefix = uniquePrefix('chaos-redis');
const stateDir = hookStateDir('chaos-redis-hooks');
const HOOK_PORT = 2296;

let url: string;
let server: PrivateRedis | undefined;
let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let terminateQueue: Queue;
let reconcileQueue: Queue;
const workers: WorkerProcess[] = [];

function running(): WorkerProcess[] {
  return workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
}

const until = <T>(fn: () => Promise<T> | T, timeoutMs: number, what: string) => waitForWithLogs(workers, fn, timeoutMs, what);

async function readyCleanVm(except: string[] = []): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates('base', [VmStates.READY]);
  return vms.find((v) => v.owner === null && !except.includes(v.vmName)) ?? null;
}

async function gone(vmName: string): Promise<boolean> {
  return (await vmm.getAllVms()).every((v) => v.vmName !== vmName);
}

beforeAll(async () => {
  // The same command each start: an append-only file synced on every write keeps the data.
  server = await startPrivateRedis(['--appendonly', 'yes', '--appendfsync', 'always'], 'chaos-redis');
  url = server.url;
  // Spawns 1 s apart (the default is 30 s): the warm pool is refilled within the test's waits (CI
  // once waited 30 s for it while the interval since the last spawn ran out).
  const common = { ...hookGroup({ stateDir, port: HOOK_PORT }), lease_timeout: 120, vm_spawn_min_interval: 1 };
  const config = {
    redis: { url, prefix },
    vm_cycle_timeout: 0.5,
    // A waiting request wakes on a ready message; this slow fallback retry must not be what serves it.
    acquire_safety_retry: 30,
    jobs: { lock_duration: 3, stalled_interval: 1, max_stalled_count: 1 },
    groups: [
      {
        name: 'base',
        min_ready: 1,
        max_vm_total: 3,
        vm_dirty_terminating_timeout: 2,
        ...common,
      },
      {
        // No warm pool and room for one VM: a second request waits until the first VM is released.
        name: 'solo',
        min_ready: 0,
        max_vm_total: 1,
        ...common,
      },
    ],
  };
  redis = new Redis(url, { maxRetriesPerRequest: 2 });
  redis.on('error', () => undefined);
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis: url, prefix, graceMs: 20_000 });
  client.redis.on('error', () => undefined);
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
  // REDIS_URL overrides the config's url: set it too, so that nothing reaches the shared Redis.
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix, REDIS_URL: url };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await client.close().catch(() => undefined);
  await terminateQueue.close().catch(() => undefined);
  await reconcileQueue.close().catch(() => undefined);
  await vmm.close().catch(() => undefined);
  redis.disconnect();
  await server?.stop();
}, 60_000);

describe('worker processes across a Redis restart', () => {
  let held: Awaited<ReturnType<VmPoolClient['acquire']>>;

  it('keeps running while Redis is away, and finds its data again', { timeout: 60_000 }, async () => {
    await until(() => readyCleanVm(), 30_000, 'a warm ready VM');
    held = await client.acquire({ owner: 'alice', sandbox: 'alice/p', groups: [0], taskId: 'before-restart', timeoutMs: 20_000 });

    await server!.shutdown();
    // Redis is away for a while: every worker retries instead of exiting.
    await new Promise((r) => setTimeout(r, 1_500));
    expect(running().map((w) => w.type)).toEqual(['acquire', 'spawn', 'health', 'terminate', 'reconcile']);
    await server!.restart();

    const vm = await vmm.getVmByName(held.vmName);
    expect(vm.state).toBe(VmStates.IN_USE);
    expect(vm.taskId).toBe('before-restart');
    expect(running()).toHaveLength(workers.length);
  });

  it('serves a new acquire after the restart, and terminates released VMs as configured', { timeout: 60_000 }, async () => {
    // A new request: served by the acquire worker from the warm pool (refilled by reconcile and spawn).
    const fresh = await client.acquire({ owner: 'bob', sandbox: 'bob/p', groups: [0], taskId: 'after-restart', timeoutMs: 30_000 });
    expect(fresh.vmName).not.toBe(held.vmName);
    expect((await vmm.getVmByName(fresh.vmName)).owner).toBe('bob');

    // Released VMs are dirty; vm_dirty_terminating_timeout (2 s) has reconcile and terminate end them.
    expect(await client.release(held)).toBe(true);
    expect(await client.release(fresh)).toBe(true);
    for (const name of [held.vmName, fresh.vmName]) {
      const job = await until(async () => (await terminateQueue.getJobs(['completed'])).find((j) => j.data.vmName === name), 30_000, `${name} terminated`);
      expect(job.data.reason).toBe('dirty_timeout');
      expect(job.returnvalue).toEqual({ vmName: name, removed: true });
      expect(await gone(name)).toBe(true);
    }
    // And the warm pool is kept after all this.
    await until(() => readyCleanVm([held.vmName, fresh.vmName]), 30_000, 'a warm ready VM again');
    expect(running()).toHaveLength(workers.length);
  });

  it('serves a request that waited across a Redis crash once a VM frees up', { timeout: 60_000 }, async () => {
    const first = await client.acquire({ owner: 'carol', sandbox: 'carol/p', groups: [1], taskId: 'solo-1', timeoutMs: 30_000 });
    const second = client.acquire({ owner: 'carol', sandbox: 'carol/p', groups: [1], taskId: 'solo-2', timeoutMs: 60_000 });
    const outcome = second.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    await until(async () => (await vmm.countDemand('solo')) === 1, 10_000, 'the second request waiting');

    // A crash this time (SIGKILL); appendfsync always keeps every write.
    await server!.crash();
    await new Promise((r) => setTimeout(r, 1_500));
    expect(running()).toHaveLength(workers.length);
    await server!.restart();
    expect(await vmm.countDemand('solo')).toBe(1);

    // The released VM is dirty for carol/carol/p: the waiting request is woken and takes it, well
    // before the 30 s safety retry.
    expect(await client.release(first)).toBe(true);
    const served = await until(() => Promise.race([outcome, new Promise<null>((r) => setTimeout(() => r(null), 200))]), 10_000, 'the waiting request served');
    if ('error' in served) throw served.error;
    expect(served.value.vmName).toBe(first.vmName);
    expect((await vmm.getVmByName(first.vmName)).taskId).toBe('solo-2');
    expect(await vmm.countDemand('solo')).toBe(0);
    expect(await client.release(served.value)).toBe(true);
    expect(running()).toHaveLength(workers.length);
  });

  it('stops every worker gracefully after the restart', async () => {
    const codes = await Promise.all(workers.map((w) => w.stop()));
    const logs = workers.map((w, i) => `--- ${w.type} exited ${codes[i]}:\n${w.lines.slice(-15).join('\n')}`).join('\n');
    expect(codes, logs).toEqual(workers.map(() => 0));
  });
});
