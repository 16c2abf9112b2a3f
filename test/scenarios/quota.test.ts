import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, acquireJobId } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { acquireRequestStatus } from '../../src/acquire/requests.js';
import { QueueNames } from '../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// Resources and cloud quota with real processes (acquire, spawn, health, terminate, reconcile) and
// real hook machines. The `cloud` account's quota_cmd is `cat` of a file this test rewrites: its
// cores are all used by foreign machines at first, so requests wait as quota_full with no spawn
// (and no failure), and spawning resumes once the file says the usage dropped. The `shared`
// account's 8 cores are shared by two groups.
const prefix = uniquePrefix('quota-scenario');
const stateDir = hookStateDir('quota');
const quotaFile = join(stateDir, 'quota.json');
const PORT = 2297;
const hooks = { ...hookGroup({ stateDir, port: PORT }), vm_health_check_period: 3600 };
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  accounts: {
    cloud: { quota_cmd: ['cat', quotaFile], quota_cache: 0.5 },
    shared: { max_resources: { cores: 8 } },
  },
  groups: [
    { name: 'q', account: 'cloud', resources: { cores: 4 }, min_ready: 0, max_vm_total: 4, ...hooks },
    { name: 'big', account: 'shared', resources: { cores: 4 }, min_ready: 1, max_vm_total: 4, ...hooks },
    { name: 'small', account: 'shared', resources: { cores: 2 }, min_ready: 3, max_vm_total: 4, ...hooks },
  ],
} satisfies ConfigInput;

const writeQuota = (report: unknown) => writeFileSync(quotaFile, JSON.stringify(report));

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let spawnQueue: Queue;
const workers: WorkerProcess[] = [];

const vmsOf = async (group: string) => (await vmm.getAllVmRecords()).filter((v) => v.group === group && v.state !== 'terminating');

beforeAll(async () => {
  // 8 cores, all used by machines that are not this pool's.
  writeQuota({ limits: { cores: 8, instances: 10 }, usage: { cores: 8, instances: 2 }, pool_usage: {} });
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await spawnQueue?.close();
  await client?.close();
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [vmm]);
}, 60_000);

describe('cloud quota (quota_cmd)', () => {
  it('a full quota makes requests wait as quota_full with no failed spawn; spawning resumes when usage drops', async () => {
    const pending = client.acquire({ owner: 'alice', sandbox: 's', groups: ['q'], taskId: 'quota-1', timeoutMs: 60_000 });
    const status = async () => acquireRequestStatus(vmm, vmm.config, acquireJobId('quota-1', 'alice'), { owner: 'alice' });
    const waiting = await waitForWithLogs(workers, async () => ((await status())?.waiting?.reason === 'quota_full' ? (await status())!.waiting : null), 20_000, 'quota_full');
    expect(waiting.groups[0]).toMatchObject({ group: 'q', reason: 'quota_full', quota: { limit: 'account', units: ['cores'] } });

    // Another quota_cmd answer (a later cycle) changes nothing: no spawn, no failure, breaker closed.
    const first = (await vmm.quotas.cached('cloud'))!.fetchedAt;
    await waitForWithLogs(workers, async () => ((await vmm.quotas.cached('cloud'))?.fetchedAt ?? 0) > first, 10_000, 'a second quota_cmd answer');
    expect(await vmsOf('q')).toEqual([]);
    expect(await vmm.getSpawnsInFlight('q')).toEqual([]);
    const spawnJobs = await spawnQueue.getJobs(['completed', 'failed', 'active', 'waiting', 'delayed']);
    expect(spawnJobs.filter((j) => j.data.group === 'q')).toEqual([]);
    expect((await vmm.reader.breaker('q'))?.failures ?? 0).toBe(0);
    expect((await vmm.quotas.full(['q']))[0]).toMatchObject({ limit: 'account', units: ['cores'] });

    // The foreign machines went away: room for 2 VMs of 4 cores.
    writeQuota({ limits: { cores: 8, instances: 10 }, usage: { cores: 0, instances: 0 }, pool_usage: {} });
    const vm = await pending;
    expect(vm.group).toBe('q');
    const failed = await spawnQueue.getJobs(['failed']);
    expect(failed.filter((j) => j.data.group === 'q')).toEqual([]);
    await waitForWithLogs(workers, async () => (await vmm.quotas.full(['q']))[0] === null, 10_000, 'quota_full cleared');
  }, 90_000);
});

describe('an account limit in cores', () => {
  it('is shared by two groups: together they never pass 8 cores, and the one left out waits as quota_full', async () => {
    const cores = async () => (await vmsOf('big')).length * 4 + (await vmsOf('small')).length * 2;
    // big (config order first) takes 4 cores, small the other 4; small's third VM does not fit.
    await waitForWithLogs(workers, async () => (await vmsOf('big')).length === 1 && (await vmsOf('small')).length === 2, 30_000, '1 big and 2 small VMs');
    await waitForWithLogs(workers, async () => (await vmm.quotas.full(['small']))[0], 10_000, 'small at quota_full');
    expect(await cores()).toBe(8);
    expect((await vmm.quotas.full(['small']))[0]).toMatchObject({ limit: 'account', units: ['cores'] });
    // Still so after more cycles: the spawn decision and registerSpawn both hold the limit.
    const since = (await vmm.quotas.full(['small']))[0]!.at;
    await waitForWithLogs(workers, async () => ((await vmm.quotas.full(['small']))[0]?.at ?? 0) > since, 10_000, 'a later cycle');
    expect(await cores()).toBe(8);
    expect((await vmm.getSpawnsInFlight('small')).length + (await vmm.getSpawnsInFlight('big')).length).toBe(0);
  }, 60_000);
});
