import { Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/index.js';
import { launchFingerprint, parseConfig, type ConfigInput } from '../../src/config/index.js';
import { QueueNames } from '../../queues/names.js';
import { spawnJobId, spawnJobOptions } from '../../queues/spawn.js';
import { connect, deleteKeysWithPrefix, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitFor, workerLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookMachines, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// A spawn worker process on a superseded launch config (a rolling restart not yet done on its
// machine) runs no spawn hook: it puts the job back, delayed, without counting a failure, and a
// worker of the current config spawns it.
const prefix = uniquePrefix('spawn-launch');
const stateDir = hookStateDir('spawn-launch');
const configOf = (image: string) => ({ redis: { url: REDIS_URL, prefix }, groups: [{ name: 'g', image, ...hookGroup({ stateDir, port: 2297 }) }] }) satisfies ConfigInput;
const v1 = configOf('fedora-41');
const v2 = configOf('fedora-42');
const fp1 = launchFingerprint(parseConfig(v1).groups[0]!);
const fp2 = launchFingerprint(parseConfig(v2).groups[0]!);
const SUPERSEDED_LOG = "this spawn worker's launch config of the group is superseded";

let redis: Redis;
let vmm1: VmManager;
let vmm2: VmManager;
let spawnQueue: Queue;
let events: QueueEvents;
const workers: WorkerProcess[] = [];
const envOf = (config: ConfigInput) => ({ VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix });

beforeAll(async () => {
  redis = connect();
  vmm1 = new VmManager(v1, { redis, prefix });
  vmm2 = new VmManager(v2, { redis, prefix });
  await vmm1.markServerStart();
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
  events = new QueueEvents(QueueNames.SPAWN, { connection: connect({ maxRetriesPerRequest: null }), prefix });
  await events.waitUntilReady();
  workers.push(await startWorkerProcess('spawn', envOf(v1)));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await events.close();
  await spawnQueue.close();
  await vmm1.close();
  await vmm2.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

describe('a spawn worker on a superseded launch config', () => {
  it('spawns nothing, puts the job back without a failure, and a current worker spawns it', async () => {
    // v1 was current, then a v2 reconcile process took over: fp1 is superseded.
    const now = Date.now();
    await vmm1.publishLaunch('g', { startedAt: now - 60_000, processId: 'reconcile:1' });
    expect((await vmm2.publishLaunch('g', { startedAt: Date.now() + 1, processId: 'reconcile:2' })).status).toBe('published');

    await vmm2.registerSpawn('g', 'late');
    const job = await spawnQueue.add('spawn', { group: 'g', spawnId: 'late' }, { ...spawnJobOptions, jobId: spawnJobId('late') });
    // Taken and put back at least twice by the v1 worker.
    await waitFor(async () => ((await spawnQueue.getJob(job.id!))?.attemptsStarted ?? 0) >= 2, 20_000, 'the job put back twice');
    const parked = (await spawnQueue.getJob(job.id!))!;
    expect(await parked.getState()).toBe('delayed');
    expect(parked.attemptsMade).toBe(0);
    expect(hookMachines(stateDir).size).toBe(0);
    expect(await vmm2.getAllVms()).toEqual([]);
    expect(await vmm2.reader.breaker('g')).toBeNull();
    expect((await vmm2.getSpawnsInFlight('g')).map((s) => s.spawnId)).toEqual(['late']);
    // Logged once, not at every put-back.
    expect(workers[0]!.lines.filter((l) => l.includes(SUPERSEDED_LOG))).toHaveLength(1);

    // A spawn worker of the current config joins: it takes the job at its next delay and spawns.
    workers.push(await startWorkerProcess('spawn', envOf(v2)));
    const result = (await job.waitUntilFinished(events, 30_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${workerLogs(workers)}`);
    })) as { vmName: string };
    expect((await vmm2.getVmRecord(result.vmName)).launchFingerprint).toBe(fp2);
    expect(await vmm2.reader.breaker('g')).toBeNull();
    expect((await vmm2.launchStates())[0]!.outdated).toBe(0);
  }, 60_000);

  it('spawns when its config is newer than the published one (its reconcile processes not yet restarted)', async () => {
    // The v2 worker stops; a v3 worker starts before any v3 reconcile process: v2 is still published.
    await workers.pop()!.stop();
    const v3 = configOf('fedora-43');
    workers.push(await startWorkerProcess('spawn', envOf(v3)));
    const fp3 = launchFingerprint(parseConfig(v3).groups[0]!);
    await vmm2.registerSpawn('g', 'ahead');
    const job = await spawnQueue.add('spawn', { group: 'g', spawnId: 'ahead' }, { ...spawnJobOptions, jobId: spawnJobId('ahead') });
    // The v1 worker may take it first and put it back; the v3 worker spawns it.
    const result = (await job.waitUntilFinished(events, 30_000)) as { vmName: string };
    expect((await vmm2.getVmRecord(result.vmName)).launchFingerprint).toBe(fp3);
    expect(fp3).not.toBe(fp1);
  }, 60_000);

  it('does not put back a spawn whose slot is gone (stale meanwhile): it ends as any such spawn', async () => {
    // Only the v1 worker is left.
    await workers.pop()!.stop();
    const job = await spawnQueue.add('spawn', { group: 'g', spawnId: 'stale' }, { ...spawnJobOptions, jobId: spawnJobId('stale') });
    await expect(job.waitUntilFinished(events, 20_000)).rejects.toThrow(/no longer holds a slot/);
    expect((await spawnQueue.getJob(job.id!))!.attemptsStarted).toBe(1);
    expect(await vmm2.reader.breaker('g')).toBeNull();
  }, 30_000);
});
