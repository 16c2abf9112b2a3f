import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, acquireJobId } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { acquireRequestStatus } from '../../src/acquire/requests.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// max_resources_per_owner with real processes (acquire, spawn, health, terminate, reconcile) and real
// hook machines: VMs of 4 cores, an owner may have 8 cores although max_vm_per_user allows 4. The
// owner's third request waits as owner_resources while clean VMs are ready, another owner is served,
// and the third request gets the owner's VM back once the owner releases it.
const prefix = uniquePrefix('owner-resources-scenario');
const stateDir = hookStateDir('owner-resources');
const PORT = 2311;
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [
    {
      name: 'o',
      resources: { cores: 4 },
      max_vm_per_user: 4,
      max_resources_per_owner: { cores: 8 },
      min_ready: 2,
      max_vm_total: 5,
      ...hookGroup({ stateDir, port: PORT }),
      vm_health_check_period: 3600,
    },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await client?.close();
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [vmm]);
}, 60_000);

describe('max_resources_per_owner (real processes)', () => {
  it("an owner at its cores waits as owner_resources beside ready VMs; another owner is served; its own VM back serves it", async () => {
    const first = await client.acquire({ owner: 'alice', sandbox: 's', groups: ['o'], taskId: 'or-1', timeoutMs: 60_000 });
    await client.acquire({ owner: 'alice', sandbox: 's', groups: ['o'], taskId: 'or-2', timeoutMs: 60_000 });
    const third = client.acquire({ owner: 'alice', sandbox: 's', groups: ['o'], taskId: 'or-3', timeoutMs: 60_000 });
    const status = async () => acquireRequestStatus(vmm, vmm.config, acquireJobId('or-3', 'alice'), { owner: 'alice' });
    const waiting = await waitForWithLogs(workers, async () => ((await status())?.waiting?.reason === 'owner_resources' ? (await status())!.waiting : null), 20_000, 'owner_resources');
    expect(waiting.groups[0]).toMatchObject({ group: 'o', reason: 'owner_resources', ownerVms: 2, maxVmPerUser: 2 });
    // The warm pool refills: clean VMs are ready, and alice still waits.
    await waitForWithLogs(workers, async () => ((await vmm.getAllVmRecords()).filter((v) => v.state === 'ready' && v.owner === null).length >= 1 ? true : null), 30_000, 'a clean ready VM');
    expect((await status())?.state).toBe('waiting');
    expect(await vmm.countOwnerVms('alice', 'o')).toBe(2);
    const bobs = await client.acquire({ owner: 'bob', sandbox: 'b', groups: ['o'], taskId: 'or-bob', timeoutMs: 30_000 });
    expect(bobs.group).toBe('o');
    expect((await status())?.state).toBe('waiting');
    // alice gives one back: her waiting request takes it (same sandbox) and she stays at 2 VMs.
    expect(await client.release(first)).toBe(true);
    const got = await third;
    expect(got.vmName).toBe(first.vmName);
    expect(await vmm.countOwnerVms('alice', 'o')).toBe(2);
  }, 90_000);
});
