import type { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, VmStates, type VmDescriptor } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { groupSummaries } from '../../src/poolView.js';
import { poolKeys } from '../../src/pool/keys.js';
import { QueueNames } from '../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, listenerPid, removeHookMachines } from '../helpers/hookMachines.js';

// A group removed from the config drains (issue 19): it spawns nothing, its VMs are served to
// requests that name it until they retire, they are terminated with the config reconcile last
// published (whose provider `env` is not in Redis: the hooks take their settings from `pass_env`),
// and once it has no VM the group is forgotten. Real processes, hook machines, the tcp check.
const prefix = uniquePrefix('removed');
const keys = poolKeys(prefix);
const stateDir = hookStateDir('removed');
const PORT = 2296;

/** A hook group whose settings come from the processes' environment (pass_env), not from `env`. */
function group(name: string, arch: string) {
  const base = hookGroup({ stateDir, port: PORT });
  const { env: _env, ...provider } = base.provider;
  return {
    ...base,
    name,
    archs: [arch],
    provider: { ...provider, pass_env: ['HOOK_STATE_DIR', 'HOOK_PORT'] },
    vm_max_check_fails: 0,
    min_ready: 1,
    max_vm_total: 2,
    lease_timeout: 60,
    vm_dirty_terminating_timeout: 600,
  };
}
const alpha = group('alpha', 'x86_64');
const beta = group('beta', 'aarch64');
const configOf = (groups: ReturnType<typeof group>[]) => ({ redis: { url: REDIS_URL, prefix }, vm_cycle_timeout: 0.5, groups }) satisfies ConfigInput;
const TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'];

let redis: Redis;
let client: VmPoolClient;
let reconcileQueue: Queue;
let spawnQueue: Queue;
let workers: WorkerProcess[] = [];
const managers: VmManager[] = [];

async function start(groups: ReturnType<typeof group>[]): Promise<VmManager> {
  const env = { VMPOOL_CONFIG: writeConfigFile(configOf(groups)), VMPOOL_PREFIX: prefix, HOOK_STATE_DIR: stateDir, HOOK_PORT: String(PORT) };
  workers = await Promise.all(TYPES.map((t) => startWorkerProcess(t, env)));
  const vmm = new VmManager(configOf(groups), { redis, prefix });
  managers.push(vmm);
  return vmm;
}

async function stop(): Promise<void> {
  await Promise.all(workers.map((w) => w.stop()));
  workers = [];
}

async function readyClean(vmm: VmManager, group: string, except: string[] = []): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates(group, [VmStates.READY]);
  return vms.find((v) => v.owner === null && !except.includes(v.vmName)) ?? null;
}

beforeAll(() => {
  redis = connect();
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
});

afterAll(async () => {
  await stop();
  removeHookMachines(stateDir);
  await spawnQueue.close();
  await closePool(prefix, redis, [client, ...managers], reconcileQueue);
}, 60_000);

describe('a group removed from the config', { timeout: 180_000 }, () => {
  it('spawns nothing, serves its VMs by name until they retire, terminates them, and is then forgotten', async () => {
    let vmm = await start([alpha, beta]);
    await waitForWithLogs(workers, () => readyClean(vmm, 'alpha'), 40_000, "alpha's warm VM");
    const b1 = await waitForWithLogs(workers, () => readyClean(vmm, 'beta'), 40_000, "beta's warm VM");
    const held = await client.acquire({ owner: 'alice', sandbox: 'alice/p', arch: 'aarch64', taskId: 'rm-1', timeoutMs: 20_000 });
    expect(held.vmName).toBe(b1.vmName);
    const b2 = await waitForWithLogs(workers, () => readyClean(vmm, 'beta', [b1.vmName]), 40_000, "beta's warm pool refilled");
    await client.release(held);
    await stop();

    // The operator removes beta and restarts every process.
    vmm = await start([alpha]);
    const spawnsBefore = (await spawnQueue.getJobs(['waiting', 'delayed', 'active', 'completed', 'failed'])).filter((j) => j.data.group === 'beta').length;
    await waitForWithLogs(workers, async () => (await groupSummaries(vmm)).find((g) => g.name === 'beta' && g.removedFromConfig), 20_000, 'beta shown as removed from config');
    expect(await vmm.info()).toMatch(/Group beta \(removed from config, draining\)/);

    // Its idle clean VM retires (no warm pool); the hook terminates it with the published config.
    await waitForWithLogs(workers, async () => (await vmm.getAllVms()).every((v) => v.vmName !== b2.vmName), 40_000, "beta's idle clean VM terminated");
    expect(listenerPid(stateDir, b2.vmName)).toBeNull();

    // A request that names beta gets alice's VM back (bound to her sandbox), and beta spawns nothing.
    const again = await client.acquire({ owner: 'alice', sandbox: 'alice/p', groups: ['beta'], taskId: 'rm-2', timeoutMs: 20_000 });
    expect(again).toMatchObject({ vmName: b1.vmName, group: 'beta' });
    await client.release(again);
    expect((await spawnQueue.getJobs(['waiting', 'delayed', 'active', 'completed', 'failed'])).filter((j) => j.data.group === 'beta')).toHaveLength(spawnsBefore);

    // Its last VM retires (an operator's termination here); then the group is forgotten.
    expect(await vmm.startVmTermination(b1.vmName, VmStates.READY, 'operator')).toBe(true);
    await waitForWithLogs(workers, async () => !(await redis.sismember(keys.groupRegistry, 'beta')), 40_000, 'beta forgotten');
    expect(listenerPid(stateDir, b1.vmName)).toBeNull();
    expect(await vmm.reader.keysStartingWith(keys.groupKeyPrefix('beta'))).toEqual([]);
    expect((await groupSummaries(vmm)).map((g) => g.name)).toEqual(['alpha']);
    // Alpha was never touched.
    expect((await vmm.getAllVmsInGroup('alpha')).length).toBeGreaterThan(0);
  });
});
