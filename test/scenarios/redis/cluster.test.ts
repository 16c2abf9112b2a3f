import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Queue, type Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, VmManager, VmStates, type VmDescriptor } from '../../../src/index.js';
import type { ConfigInput } from '../../../src/config/index.js';
import { VmPoolClient } from '../../../src/client/index.js';
import { connectTo, type RedisConnection } from '../../../src/redis.js';
import { QueueNames } from '../../../queues/names.js';
import { uniquePrefix } from '../../helpers/redis.js';
import { ROOT, freePort, nodeArgsFor, startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { hookGroup, hookStateDir, listenerPid, removeHookMachines } from '../../helpers/hookMachines.js';
import { cli, startRedisCluster, type PrivateCluster } from '../../helpers/redisServers.js';

// The whole job system on a real 3-master Redis Cluster (private redis-servers on loopback): every
// process type as a real process, pointed at the Cluster by REDIS_URL=redis+cluster://..., with a
// hash-tagged prefix. Spawn, health, acquire through BullMQ, release, dirty-timeout termination,
// health-failure termination and reconcile all run there; an untagged prefix is refused.
const prefix = `{${uniquePrefix('cluster')}}`;
const stateDir = hookStateDir('cluster');
const PORT = 2301;
const common = { ...hookGroup({ stateDir, port: PORT }), vm_max_check_fails: 0 };

let cluster: PrivateCluster;
let redis: RedisConnection;
let vmm: VmManager;
let client: VmPoolClient;
let terminateQueue: Queue;
const workers: WorkerProcess[] = [];
let env: Record<string, string>;

const config = (url: string) =>
  ({
    redis: { url, prefix },
    vm_cycle_timeout: 0.5,
    groups: [{ name: 'warm', archs: ['x86_64'], min_ready: 1, max_vm_total: 3, max_vm_per_user: 2, vm_dirty_terminating_timeout: 3, lease_timeout: 60, ...common }],
  }) satisfies ConfigInput;

const until = <T>(fn: () => Promise<T> | T, timeoutMs: number, what: string) => waitForWithLogs(workers, fn, timeoutMs, what);

async function readyCleanVm(except: string[] = []): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates('warm', [VmStates.READY]);
  return vms.find((v) => v.owner === null && !except.includes(v.vmName)) ?? null;
}

async function terminationOf(vmName: string): Promise<Job | undefined> {
  const jobs = await terminateQueue.getJobs(['completed', 'active', 'waiting', 'delayed', 'failed']);
  return jobs.find((j) => j.data.vmName === vmName);
}

const gone = async (vmName: string) => (await vmm.getAllVms()).every((v) => v.vmName !== vmName);

beforeAll(async () => {
  cluster = await startRedisCluster(3);
  redis = connectTo(cluster.url, { maxRetriesPerRequest: 2 });
  vmm = new VmManager(config(cluster.url), { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
  env = { VMPOOL_CONFIG: writeConfigFile(config('redis://127.0.0.1:1')), REDIS_URL: cluster.url, VMPOOL_PREFIX: prefix };
  const types = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'];
  workers.push(...(await Promise.all(types.map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await client?.close();
  await terminateQueue?.close();
  await vmm?.close();
  await redis?.quit().catch(() => redis.disconnect());
  await cluster?.stop();
}, 60_000);

describe('vmpool on a 3-master Redis Cluster', () => {
  let first: string;

  it('refuses an untagged prefix, in a process and in the library, saying why and with a tagged one', async () => {
    const err = await startWorkerProcess('acquire', { ...env, VMPOOL_PREFIX: 'vmpool-untagged' }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain('exited with 2');
    expect((err as Error).message).toContain('hash tag');
    expect((err as Error).message).toContain('"{vmpool-untagged}"');
    expect(() => new VmManager(config(cluster.url), { redis, prefix: 'vmpool' })).toThrow(ConfigError);
    expect(() => new VmPoolClient({ redis: cluster.url, prefix: 'vmpool' })).toThrow(/\{vmpool\}/);
  });

  it('spawns the warm pool, checks it to ready and hands a VM out through the acquire queue', async () => {
    const warm = await until(() => readyCleanVm(), 30_000, 'a warm ready VM');
    const started = Date.now();
    const assignment = await client.acquire({ owner: 'alice', sandbox: 'alice/p1', groups: [0], taskId: 'build-1', timeoutMs: 20_000 });
    // Its QueueEvents must reach the Cluster: a wrong host would leave it to the 30 s fallback.
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(assignment.vmName).toBe(warm.vmName);
    const vm = await vmm.getVmByName(assignment.vmName);
    expect(vm.state).toBe(VmStates.IN_USE);
    expect(vm.owner).toBe('alice');
    first = assignment.vmName;
  });

  it("keeps the pool's and BullMQ's keys in one slot, on one shard", async () => {
    const perNode = await Promise.all(cluster.ports.map(async (p) => ((await cli(p, '--scan', '--pattern', `${prefix}*`)) ?? '').split('\n').filter(Boolean).length));
    expect(perNode.filter((n) => n > 0)).toHaveLength(1);
    expect(Math.max(...perNode)).toBeGreaterThan(5);
  });

  it('releases the VM, reuses it for the same sandbox, and terminates it after the dirty timeout', async () => {
    const record = await vmm.getVmRecord(first);
    expect(await client.release({ vmName: first, vmIp: record.vmIp, group: 'warm', leaseId: record.leaseId!, leaseExpiresAt: 0 })).toBe(true);
    const again = await client.acquire({ owner: 'alice', sandbox: 'alice/p1', groups: [0], taskId: 'build-2', timeoutMs: 20_000 });
    expect(again.vmName).toBe(first);
    await client.release(again);
    expect((await vmm.getVmByName(first)).state).toBe(VmStates.READY);
    await until(() => gone(first), 30_000, 'the dirty VM terminated');
    expect((await terminationOf(first))?.data.reason).toBe('dirty_timeout');
    expect(listenerPid(stateDir, first)).toBeNull();
  });

  it('terminates a VM that fails its health check and spawns a replacement', async () => {
    const victim = await until(() => readyCleanVm(), 30_000, 'a ready VM');
    process.kill(listenerPid(stateDir, victim.vmName)!, 'SIGKILL');
    await until(() => gone(victim.vmName), 30_000, 'the broken VM terminated');
    expect((await terminationOf(victim.vmName))?.data.reason).toBe('health_check_failed');
    const replacement = await until(() => readyCleanVm([victim.vmName]), 30_000, 'a replacement');
    expect(replacement.vmName).not.toBe(victim.vmName);
  });

  it('serves the CLI: vmpool list through REDIS_URL=redis+cluster://', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [...nodeArgsFor('src/cli/main.ts'), 'list', '--json'], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      timeout: 30_000,
    });
    const listed = JSON.parse(stdout) as { vmName: string }[];
    expect(listed.map((v) => v.vmName).sort()).toEqual((await vmm.getAllVms()).map((v) => v.vmName).sort());
    expect(listed.length).toBeGreaterThan(0);
  });

  it('serves the HTTP API from the web process: ready, acquire and release', async () => {
    const port = await freePort();
    const web = await startWorkerProcess('web', { ...env, PORT: String(port) }, 20_000, { ready: '"web listening"' });
    workers.push(web);
    const base = `http://127.0.0.1:${port}`;
    expect(await (await fetch(`${base}/readyz`)).json()).toEqual({ status: 'ready' });
    await until(() => readyCleanVm(), 30_000, 'a ready VM');
    const post = (path: string, body: unknown) => fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const acquired = await post('/api/v1/acquire', { owner: 'carol', sandbox: 'c', arch: 'x86_64', timeoutMs: 20_000 });
    expect(acquired.status).toBe(200);
    const a = (await acquired.json()) as { vmName: string; leaseId: string };
    expect((await vmm.getVmByName(a.vmName)).owner).toBe('carol');
    const released = await post(`/api/v1/vms/${a.vmName}/release`, { leaseId: a.leaseId });
    expect(released.status).toBe(200);
    expect((await vmm.getVmByName(a.vmName)).state).toBe(VmStates.READY);
  });

  it('runs reconcile cycles without errors', () => {
    const reconcile = workers.find((w) => w.type === 'reconcile')!;
    expect(reconcile.lines.filter((l) => /CROSSSLOT|non local key|job failed/i.test(l))).toEqual([]);
    expect(workers.flatMap((w) => w.lines).filter((l) => /CROSSSLOT|MOVED|non local key/.test(l))).toEqual([]);
  });
});
