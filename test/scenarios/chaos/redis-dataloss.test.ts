import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LeaseLost, VmManager, VmStates } from '../../../src/index.js';
import { VmPoolClient } from '../../../src/client/index.js';
import type { VmAssignment } from '../../../queues/acquire.js';
import { QueueNames } from '../../../queues/names.js';
import { RECONCILE_SCHEDULER_ID } from '../../../queues/reconcile.js';
import { uniquePrefix } from '../../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { startPrivateRedis, type PrivateRedis } from '../../helpers/redisServers.js';
import { hookGroup, hookMachines, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';

// Self-healing after Redis loses data (issue 9, failures 1 and 2), with the real worker processes
// against a PRIVATE redis-server that the test restarts three ways, without restarting any vmpool
// process: from an AOF synced on every write (nothing may be replaced), empty (no persistence: the
// pool must come back by itself), and from an older RDB snapshot (no VM in use after the snapshot
// may be handed to another builder). Each scenario prints its figures. The shared Redis is never touched.
const run = promisify(execFile);
const prefix = uniquePrefix('chaos-dataloss');
const dirs = { aof: mkdtempSync(join(tmpdir(), 'vmpool-dataloss-aof-')), rdb: mkdtempSync(join(tmpdir(), 'vmpool-dataloss-rdb-')) };
const stateDir = hookStateDir('chaos-dataloss-hooks');
const HOOK_PORT = 2297;
const AOF_ARGS = ['--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--dir', dirs.aof];
// No AOF, no automatic snapshots: only the test's SAVE writes dump.rdb, which a restart loads.
const RDB_ARGS = ['--appendonly', 'no', '--save', '', '--dir', dirs.rdb];

let port: number;
let url: string;
let server: PrivateRedis | undefined;
let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let terminateQueue: Queue;
let reconcileQueue: Queue;
const workers: WorkerProcess[] = [];
const figures: Record<string, Record<string, number | string>> = {};
let builders = 0;

/** The dir of the running redis-server, where SAVE writes dump.rdb. */
let redisDir: string;

/** Starts the private redis-server with these args (on the same port each time). */
async function startRedis(args: string[]): Promise<void> {
  redisDir = args[args.indexOf('--dir') + 1]!;
  if (server) await server.restart(args);
  else server = await startPrivateRedis(args, 'chaos-dataloss');
}

const until = <T>(fn: () => Promise<T> | T, timeoutMs: number, what: string) => waitForWithLogs(workers, fn, timeoutMs, what);

/** A new builder (its own owner) acquires a VM of group 0. */
function acquire(timeoutMs = 60_000): Promise<VmAssignment> {
  builders += 1;
  return client.acquire({ owner: `builder-${builders}`, sandbox: `builder-${builders}/p`, groups: [0], taskId: `task-${builders}`, timeoutMs });
}

/** Terminate jobs of reason state_lost added since `since` (epoch ms): the VMs and machines a recovery replaced. */
async function replacedSince(since: number): Promise<string[]> {
  const jobs = await terminateQueue.getJobs(['completed', 'failed', 'active', 'waiting', 'delayed', 'prioritized', 'waiting-children']);
  return jobs.filter((j) => j.data.reason === 'state_lost' && j.timestamp >= since).map((j) => j.data.vmName as string);
}

/** The provider's machines equal the pool's VMs, none of them terminating: everything settled. */
async function settled(): Promise<boolean> {
  const machines = [...hookMachines(stateDir).keys()].sort();
  const vms = await vmm.getAllVms();
  if (vms.some((v) => v.state === VmStates.TERMINATING)) return false;
  return JSON.stringify(machines) === JSON.stringify(vms.map((v) => v.vmName).sort());
}

/** Ready VMs bound to no owner: what a new builder is given. */
async function readyClean(): Promise<string[]> {
  return (await vmm.getVmsByGroupAndStates('base', [VmStates.READY])).filter((v) => v.owner === null).map((v) => v.vmName);
}

async function readyCount(): Promise<number> {
  return (await readyClean()).length;
}

/** The lease is gone and renew says why: LeaseLost, reason state_lost. */
async function renewFailsAsStateLost(a: VmAssignment): Promise<void> {
  const err = await client.renew(a).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `renew of ${a.vmName}`).toBeInstanceOf(LeaseLost);
  expect((err as LeaseLost).reason).toBe('state_lost');
  expect((err as Error).message).toMatch(/Redis lost or rolled back the pool's state/);
}

beforeAll(async () => {
  await startRedis(AOF_ARGS);
  port = server!.port;
  url = server!.url;
  const config = {
    redis: { url, prefix },
    vm_cycle_timeout: 0.5,
    // Waiting requests must be woken by the recovery's ready messages, not by this slow retry.
    acquire_safety_retry: 30,
    jobs: { lock_duration: 3, stalled_interval: 1, max_stalled_count: 1 },
    groups: [
      {
        name: 'base',
        min_ready: 2,
        max_vm_total: 8,
        lease_timeout: 120,
        vm_dirty_terminating_timeout: 2,
        orphan_check_period: 1,
        orphan_grace_period: 30,
        ...hookGroup({ stateDir, port: HOOK_PORT, list: true }),
        // New VMs are checked at once (the spawn asks); ready ones rarely, so that the snapshot below
        // finds them ready rather than in a periodic check.
        vm_health_check_period: 60,
      },
    ],
  };
  redis = new Redis(url, { maxRetriesPerRequest: 2 });
  redis.on('error', () => undefined);
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis: url, prefix, graceMs: 30_000 });
  client.redis.on('error', () => undefined);
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
  terminateQueue.on('error', () => undefined);
  reconcileQueue.on('error', () => undefined);
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix, REDIS_URL: url };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  if (process.env.DATALOSS_LOG) (await import('node:fs')).writeFileSync(process.env.DATALOSS_LOG, workers.map((w) => w.lines.map((l) => w.type + ' ' + l).join('\n')).join('\n'));
  removeHookMachines(stateDir);
  await client.close().catch(() => undefined);
  await terminateQueue.close().catch(() => undefined);
  await reconcileQueue.close().catch(() => undefined);
  await vmm.close().catch(() => undefined);
  redis.disconnect();
  await server?.stop();
  for (const dir of Object.values(dirs)) rmSync(dir, { recursive: true, force: true });
  console.log(`\nRedis faults under running worker processes (figures of this run):\n${JSON.stringify(figures, null, 2)}`);
}, 60_000);

describe('self-healing after Redis loses data (real worker processes, private redis-server)', () => {
  it('AOF with appendfsync always: a crash replaces nothing, and held leases stay valid', { timeout: 90_000 }, async () => {
    await until(async () => (await readyCount()) >= 2 && (await settled()), 30_000, 'a settled warm pool');
    const held = [await acquire(), await acquire()];
    const before = await vmm.reader.poolState();
    expect(before?.generation).toBeTruthy();

    await server!.crash();
    const faultAt = Date.now();
    await startRedis(AOF_ARGS);
    const upAt = Date.now();
    const fresh = await acquire();
    const recoveryMs = Date.now() - upAt;

    const doubled = held.filter((a) => a.vmName === fresh.vmName).length;
    expect(doubled).toBe(0);
    for (const a of held) await expect(client.renew(a)).resolves.toMatchObject({ vmName: a.vmName });
    const after = await vmm.reader.poolState();
    // Verified on the new run, not recovered: the same generation, no recovery recorded.
    expect(after?.generation).toBe(before!.generation);
    expect(after?.recoveredAt).toBeNull();
    const replaced = await replacedSince(faultAt);
    expect(replaced).toEqual([]);
    figures['AOF, appendfsync always (kill -9)'] = { recoveryMsToFirstAcquire: recoveryMs, vmsReplaced: replaced.length, doubleAssignments: doubled };
    for (const a of [...held, fresh]) expect(await client.release(a)).toBe(true);
  });

  it('no persistence: Redis restarted empty; the pool comes back by itself and sweeps the machines it lost', { timeout: 120_000 }, async () => {
    await until(async () => (await readyCount()) >= 2, 30_000, 'a warm pool');
    const held = [await acquire(), await acquire()];
    const machinesBefore = new Set(hookMachines(stateDir).keys());

    await server!.crash();
    const faultAt = Date.now();
    await startRedis(RDB_ARGS);
    const upAt = Date.now();
    // A builder asks at once: it waits, and is served once the pool recovered and spawned.
    const fresh = acquire();
    const serverStartMs = (await until(async () => ((await vmm.getServerStart()) !== null ? Date.now() : null), 30_000, 'the server start marked again')) - upAt;
    const schedulerMs = (await until(async () => ((await reconcileQueue.getJobScheduler(RECONCILE_SCHEDULER_ID)) ? Date.now() : null), 30_000, 'the reconcile schedule again')) - upAt;
    const cycleMs = (await until(async () => ((await reconcileQueue.getJobs(['completed'], 0, 0)).length > 0 ? Date.now() : null), 30_000, 'a reconcile cycle ran')) - upAt;
    const served = await fresh;
    const acquireMs = Date.now() - upAt;

    // Served a new machine: never one a builder held (those are swept).
    const doubled = machinesBefore.has(served.vmName) ? 1 : 0;
    expect(doubled).toBe(0);
    for (const a of held) await renewFailsAsStateLost(a);
    await until(() => settled(), 60_000, "the provider's machines equal the pool's VMs");
    const left = [...machinesBefore].filter((m) => hookMachines(stateDir).has(m));
    expect(left, 'machines from before the loss still running').toEqual([]);
    const replaced = await replacedSince(faultAt);
    for (const m of machinesBefore) expect(replaced, `${m} replaced`).toContain(m);
    const settledMs = Date.now() - upAt;
    figures['no persistence (restart empty)'] = {
      serverStartMarkedMs: serverStartMs,
      schedulerBackMs: schedulerMs,
      firstCycleMs: cycleMs,
      recoveryMsToFirstAcquire: acquireMs,
      settledMs,
      vmsReplaced: new Set(replaced).size,
      doubleAssignments: doubled,
    };
    expect(await client.release(served)).toBe(true);
  });

  it('an older RDB snapshot: no VM in use after the snapshot is handed to another builder', { timeout: 120_000 }, async () => {
    await until(async () => (await readyCount()) >= 2 && (await settled()), 60_000, 'a settled warm pool');
    const atSnapshot = await acquire();
    await until(async () => (await readyCount()) >= 2 && (await vmm.getSpawnsInFlight('base')).length === 0 && (await settled()), 30_000, 'the warm pool refilled');
    const readyAtSnapshot = new Set(await readyClean());
    await run('redis-cli', ['-p', String(port), 'SAVE']);
    // After the snapshot: the first builder is done, two more take the VMs that the snapshot has as
    // ready. The snapshot knows none of this: restored, those VMs look free.
    expect(await client.release(atSnapshot)).toBe(true);
    const holding = [await acquire(), await acquire()];
    // The case that matters: VMs the snapshot has as ready, held by builders when Redis goes back to it.
    const atRisk = holding.filter((a) => readyAtSnapshot.has(a.vmName)).length;
    expect(atRisk, 'held VMs that the snapshot has as ready').toBeGreaterThan(0);
    const inUseSinceSnapshot = new Set([atSnapshot, ...holding].map((a) => a.vmName));

    await server!.shutdown({ noSave: true });
    const faultAt = Date.now();
    // Without AOF, in the same dir: the server loads the snapshot (whichever persistence ran before).
    await startRedis(['--appendonly', 'no', '--save', '', '--dir', redisDir]);
    const upAt = Date.now();
    // Builders ask at once, racing the recovery: each must get a VM nobody holds.
    let acquireMs: number | undefined;
    const outcomes = await Promise.allSettled(
      [acquire(30_000), acquire(30_000), acquire(30_000)].map((p) =>
        p.then((a) => {
          acquireMs ??= Date.now() - upAt;
          return a;
        }),
      ),
    );
    const fresh = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    const doubled = fresh.filter((a) => inUseSinceSnapshot.has(a.vmName));
    expect(doubled.map((a) => a.vmName), 'VMs handed to a second builder').toEqual([]);
    for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
    expect(new Set(fresh.map((a) => a.vmName)).size).toBe(fresh.length);
    for (const a of holding) await renewFailsAsStateLost(a);
    for (const a of fresh) expect(await client.release(a)).toBe(true);
    await until(() => settled(), 60_000, "the provider's machines equal the pool's VMs");
    for (const name of inUseSinceSnapshot) expect(hookMachines(stateDir).has(name), `${name} terminated`).toBe(false);
    const replaced = await replacedSince(faultAt);
    figures['older RDB snapshot'] = { heldVmsReadyInSnapshot: atRisk, recoveryMsToFirstAcquire: acquireMs!, settledMs: Date.now() - upAt, vmsReplaced: new Set(replaced).size, doubleAssignments: doubled.length };
  });

  it('no vmpool process was restarted, and all stop gracefully', async () => {
    const codes = await Promise.all(workers.map((w) => w.stop()));
    expect(codes, workers.map((w, i) => `--- ${w.type} exited ${codes[i]}:\n${w.lines.slice(-15).join('\n')}`).join('\n')).toEqual(workers.map(() => 0));
  });
});
