import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmManager, acquireJobId } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { acquireRequestStatus } from '../../src/acquire/requests.js';
import { QueueNames } from '../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// fallback_groups and a full quota, with real processes (acquire, spawn, health, terminate,
// reconcile) and real hook machines. Group `a` is in the `full` account, whose quota_cmd (`cat` of a
// file) reports every core used by machines that are not this pool's; its fallback `b` is in another
// account. A request for `a` spills over to `b` while `a` is quota_full; a strict one waits as
// quota_full. Nothing counts as a spawn failure.
const prefix = uniquePrefix('quota-spill');
const stateDir = hookStateDir('quota-spill');
const quotaFile = join(stateDir, 'quota.json');
const PORT = 2343;
const hooks = { ...hookGroup({ stateDir, port: PORT }), vm_health_check_period: 3600 };
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  acquire_safety_retry: 0.5,
  accounts: {
    full: { quota_cmd: ['cat', quotaFile], quota_cache: 0.5 },
    other: { max_resources: { cores: 16 } },
  },
  groups: [
    { name: 'a', account: 'full', resources: { cores: 4 }, min_ready: 0, max_vm_total: 2, fallback_groups: ['b'], ...hooks },
    { name: 'b', account: 'other', resources: { cores: 4 }, min_ready: 0, max_vm_total: 2, ...hooks },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let spawnQueue: Queue;
const workers: WorkerProcess[] = [];

const vmsOf = async (group: string) => (await vmm.getAllVmRecords()).filter((v) => v.group === group && v.state !== 'terminating');
const spawnJobsOf = async (group: string) => (await spawnQueue.getJobs(['completed', 'failed', 'active', 'waiting', 'delayed'])).filter((j) => j.data.group === group);

beforeAll(async () => {
  writeFileSync(quotaFile, JSON.stringify({ limits: { cores: 8 }, usage: { cores: 8 }, pool_usage: {} }));
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

describe('fallback_groups while a group is quota_full', () => {
  it("serves a request for the full group in its fallback (another account), with no spawn or failure in the full one", { timeout: 60_000 }, async () => {
    const vm = await client.acquire({ owner: 'alice', sandbox: 'alice/p', groups: ['a'], taskId: 'spill-1', timeoutMs: 40_000 });
    expect(vm.group).toBe('b');
    expect((await vmm.quotas.full(['a']))[0]).toMatchObject({ limit: 'account', units: ['cores'] });
    expect(await vmsOf('a')).toEqual([]);
    expect(await spawnJobsOf('a')).toEqual([]);
    expect((await vmm.reader.breaker('a'))?.failures ?? 0).toBe(0);
    expect(await vmm.blockedGroups(['a', 'b'])).toEqual(new Set(['a']));
    await client.release(vm);
  });

  it('keeps a strict request to the full group: it waits as quota_full and gets no VM of the fallback', { timeout: 60_000 }, async () => {
    const bVms = (await vmsOf('b')).map((v) => v.vmName);
    const pending = client.acquire({ owner: 'bob', sandbox: 'bob/p', groups: ['a'], strictGroup: true, taskId: 'strict-1', timeoutMs: 8_000 }).catch((e: unknown) => e);
    const status = async () => acquireRequestStatus(vmm, vmm.config, acquireJobId('strict-1', 'bob'), { owner: 'bob' });
    const waiting = await waitForWithLogs(workers, async () => ((await status())?.waiting?.reason === 'quota_full' ? (await status())!.waiting : null), 10_000, 'strict request waits as quota_full');
    expect(waiting.groups.map((g) => g.group)).toEqual(['a']);
    expect(waiting.groups[0]).toMatchObject({ reason: 'quota_full', quota: { limit: 'account', units: ['cores'] } });
    const err = await pending;
    expect(err).toBeInstanceOf(NoVmAvailable);
    expect((err as Error).message).toMatch(/quota/);
    // b spawned nothing for it, and a still spawned nothing.
    expect((await vmsOf('b')).map((v) => v.vmName)).toEqual(bVms);
    expect(await spawnJobsOf('a')).toEqual([]);
  });
});
