import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, VmStates, type VmDescriptor } from '../../../src/index.js';
import type { ConfigInput } from '../../../src/config/index.js';
import { VmPoolClient, acquireJobId } from '../../../src/client/index.js';
import { QueueNames } from '../../../queues/names.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { alive, hookGroup, hookMachines, hookStateDir, removeHookMachines, spawnAttempts as spawnAttemptsIn } from '../../helpers/hookMachines.js';

// No work is lost on a crash: worker processes are SIGKILLed in the middle of a job, and what they
// held comes back through BullMQ's stalled-job recovery (jobs.lock_duration 3 s, stalled_interval
// 1 s) or reconcile. Machines are TCP listeners made by slow hooks (test/fixtures/hooks, with delays,
// a new machine on every spawn run), each group with its own state dir.
//
// A builder that vanished (never renews) is the third kind of crash: its VM comes back through lease
// expiry, shown in test/scenarios/system.test.ts ('reclaims the VM of a builder that vanished ...').
const prefix = uniquePrefix('chaos-crash');
const PORT = 2297;
const dirs = [hookStateDir('chaos-g0'), hookStateDir('chaos-g1')];
const common = { max_spawn_processes: 1, max_vm_total: 2 };
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  jobs: { lock_duration: 3, stalled_interval: 1, max_stalled_count: 1 },
  groups: [
    {
      name: 'warm',
      min_ready: 1,
      // The list hook lets reconcile find machines the pool does not know (leaks) and terminate them.
      orphan_check_period: 1,
      orphan_grace_period: 2,
      ...hookGroup({ stateDir: dirs[0]!, port: PORT, spawnDelay: 3, newMachineEachRun: true, list: true }),
      ...common,
    },
    {
      name: 'demand',
      min_ready: 0,
      ...hookGroup({ stateDir: dirs[1]!, port: PORT, spawnDelay: 3, terminateDelay: 3, newMachineEachRun: true }),
      ...common,
    },
    {
      // Never gets a machine (its provider replaces the hooks): its requests only wait.
      name: 'never',
      ...hookGroup({ stateDir: dirs[1]!, port: PORT }),
      provider: { type: 'command', spawn_cmd: ['/bin/false'], terminate_cmd: ['/bin/true'] },
      ...common,
    },
  ],
} satisfies ConfigInput;
const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let spawnQueue: Queue;
let acquireQueue: Queue;
let terminateQueue: Queue;
let reconcileQueue: Queue;
const workers: WorkerProcess[] = [];

async function start(type: string): Promise<WorkerProcess> {
  const w = await startWorkerProcess(type, env);
  workers.push(w);
  return w;
}

/** The machines a group's hooks made: name -> listener pid. */
const machines = (group: number) => hookMachines(dirs[group]!);
/** Spawn attempts that started in a group: machine name -> spawn id. */
const spawnAttempts = (group: number) => spawnAttemptsIn(dirs[group]!);
const until = <T>(fn: () => Promise<T> | T, timeoutMs: number, what: string) => waitForWithLogs(workers, fn, timeoutMs, what);

async function readyVm(group: number): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates(group, [VmStates.READY]);
  return vms.find((v) => v.owner === null) ?? null;
}

function workerOf(processedBy: string | undefined): WorkerProcess | undefined {
  return workers.find((w) => processedBy?.includes(`-${w.child.pid}-`));
}

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 20_000 });
  spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
  acquireQueue = new Queue(QueueNames.ACQUIRE, { connection: redis, prefix });
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
  reconcileQueue = new Queue(QueueNames.RECONCILE, { connection: redis, prefix });
  // One spawn and one terminate worker only, so that the crash hits the process running the job.
  await Promise.all(['spawn', 'health', 'terminate', 'acquire', 'acquire'].map(start));
  await start('reconcile');
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  for (const dir of dirs) removeHookMachines(dir);
  await closePool(prefix, redis, [client, spawnQueue, acquireQueue, terminateQueue, vmm], reconcileQueue);
}, 60_000);

describe('a crashed worker process loses no work', () => {
  it('a spawn killed while its hook runs is recovered by another spawn worker, and nothing leaks', { timeout: 60_000 }, async () => {
    const [spawnA] = workers.filter((w) => w.type === 'spawn');
    const [killedName, spawnId] = await until(() => [...spawnAttempts(0)][0] ?? null, 20_000, 'the first spawn hook running');
    await spawnA!.kill();
    expect(await vmm.getSpawnsInFlight('warm').then((s) => s.map((x) => x.spawnId))).toContain(spawnId);

    await start('spawn');
    const vm = await until(() => readyVm(0), 40_000, 'a ready VM in the warm group');
    const job = await Job.fromId(spawnQueue, `spawn-${spawnId}`);
    expect(await job?.getState()).toBe('completed');
    // The same job, taken back from the dead process (not a new spawn), made the pool's VM.
    expect(job!.stalledCounter).toBe(1);
    expect(job!.returnvalue.vmName).toBe(vm.vmName);
    expect(vm.vmName).not.toBe(killedName);
    expect(spawnAttempts(0).get(vm.vmName)).toBe(spawnId);
    await until(async () => (await vmm.getSpawnsInFlight('warm')).length === 0, 10_000, 'no spawn in flight');

    // The killed attempt's hook ran on (it is detached) and made a machine the pool never heard of:
    // reconcile's orphan pass (list hook) finds it and terminates it. So it is cleaned, not pooled.
    await until(() => !machines(0).has(killedName), 30_000, 'the killed attempt\'s machine cleaned');
    const terminations = await terminateQueue.getJobs(['completed', 'active', 'waiting', 'delayed', 'failed']);
    expect(terminations.find((j) => j.data.vmName === killedName)?.data.reason).toBe('orphan');
    const pooled = new Set((await vmm.getAllVmsInGroup('warm')).map((v) => v.vmName));
    for (const name of machines(0).keys()) expect(pooled).toContain(name);
  });

  it('a spawn that crashes more than max_stalled_count times fails, stops counting as in flight, and is replaced', { timeout: 60_000 }, async () => {
    const before = new Set(spawnAttempts(0).values());
    // Taking the warm VM makes reconcile spawn a refill.
    await client.acquire({ owner: 'zed', sandbox: 'zed/p', groups: [0], taskId: 'take-warm', timeoutMs: 10_000 });
    const attemptsOf = (id: string) => [...spawnAttempts(0)].filter(([, s]) => s === id).map(([name]) => name);
    const spawnId = await until(() => [...spawnAttempts(0).values()].find((s) => !before.has(s)), 20_000, 'the refill spawn hook running');
    for (let crash = 1; crash <= 2; crash++) {
      const victim = workers.find((w) => w.type === 'spawn' && w.child.exitCode === null && w.child.signalCode === null)!;
      await until(() => attemptsOf(spawnId).length === crash, 20_000, `spawn attempt ${crash} running`);
      await victim.kill();
      await start('spawn');
    }
    const job = await until(async () => {
      const j = await Job.fromId(spawnQueue, `spawn-${spawnId}`);
      return j && (await j.getState()) === 'failed' ? j : null;
    }, 20_000, 'the twice-crashed spawn failed');
    expect(job.failedReason).toMatch(/stalled more than allowable limit/);
    // Without cleanup it would hold the group's only spawn slot until vm_spawn_stale_timeout (30 min).
    await until(async () => !(await vmm.getSpawnsInFlight('warm')).some((s) => s.spawnId === spawnId), 10_000, 'the failed spawn no longer in flight');
    const refill = await until(() => readyVm(0), 30_000, 'a ready VM from another spawn');
    expect(spawnAttempts(0).get(refill.vmName)).not.toBe(spawnId);
    // Both crashed attempts made machines; the orphan pass cleans them.
    for (const name of attemptsOf(spawnId)) await until(() => !machines(0).has(name), 30_000, `${name} cleaned`);
  });

  let served: string;
  it('an acquire killed while its request waits is served by another acquire replica', { timeout: 60_000 }, async () => {
    expect(await vmm.getAllVmsInGroup('demand')).toEqual([]);
    const taskId = 'chaos-wait-1';
    const acquiring = client.acquire({ owner: 'alice', sandbox: 'alice/p', groups: [1], taskId, timeoutMs: 40_000 });
    acquiring.catch(() => undefined);
    const first = await until(async () => {
      const job = await Job.fromId(acquireQueue, acquireJobId(taskId, 'alice'));
      // Parked: in the line, its job delayed; processedBy names the replica that parked it.
      const waiting = job && (await job.getState()) === 'delayed' && workerOf(job.processedBy) && (await vmm.countDemand('demand')) === 1;
      return waiting ? job : null;
    }, 10_000, 'the acquire request parked by a replica');
    const victim = workerOf(first.processedBy)!;
    await victim.kill();
    // The request still counts as demand, so reconcile spawns for it while the job is recovered.
    expect(await vmm.countDemand('demand')).toBe(1);

    const assignment = await acquiring;
    expect(assignment.group).toBe('demand');
    const vm = await vmm.getVmByName(assignment.vmName);
    expect(vm.state).toBe(VmStates.IN_USE);
    expect(vm.owner).toBe('alice');
    expect(vm.taskId).toBe(taskId);
    const done = await Job.fromId(acquireQueue, acquireJobId(taskId, 'alice'));
    // Nothing stalled: a parked request holds no worker.
    expect(done!.stalledCounter).toBe(0);
    const survivor = workerOf(done!.processedBy);
    expect(survivor?.type).toBe('acquire');
    expect(survivor).not.toBe(victim);
    expect(await vmm.countDemand('demand')).toBe(0);
    served = assignment.vmName;
  });

  it('a parked acquire holds no process: every acquire process killed while it waits, it stays in the line and ends at its deadline', { timeout: 60_000 }, async () => {
    // A waiting request is parked in Redis (its job delayed), not in a worker: killing the acquire
    // processes loses nothing, and a restarted one ends it at its deadline, naming what blocked it.
    const spares = await Promise.all([start('acquire'), start('acquire')]);
    const taskId = 'chaos-wait-2';
    const acquiring = client.acquire({ owner: 'erin', sandbox: 'erin/p', groups: [2], taskId, timeoutMs: 8_000 });
    const outcome = acquiring.then(
      () => null,
      (err: Error) => err,
    );
    await until(async () => {
      const j = await Job.fromId(acquireQueue, acquireJobId(taskId, 'erin'));
      return j && (await j.getState()) === 'delayed' && (await vmm.countDemand('never')) === 1;
    }, 20_000, 'the acquire request parked');
    for (const w of workers.filter((x) => x.type === 'acquire')) await w.kill();
    expect(await vmm.countDemand('never')).toBe(1);
    const restarted = await start('acquire');
    const err = await until(() => outcome, 30_000, 'the acquire failed at its deadline');
    expect(err.message).toMatch(/^NoVmAvailable: no VM for owner erin .* within 8000 ms \(last blocking constraint: \w+ in never\(2\)/);
    await until(async () => (await vmm.countDemand('never')) === 0, 10_000, 'the failed request out of the line');
    await restarted.kill();
    void spares;
  });

  it('a terminate killed mid-terminate leaves the VM terminating, and it is terminated after recovery', { timeout: 60_000 }, async () => {
    const [terminateA] = workers.filter((w) => w.type === 'terminate');
    const pid = machines(1).get(served)!;
    expect(alive(pid)).toBe(true);
    expect(await vmm.startVmTermination(served, undefined, 'operator')).toBe(true);
    const marker = join(dirs[1]!, `terminating-${served}`);
    await until(() => existsSync(marker), 20_000, 'the terminate hook running');
    await terminateA!.kill();
    // No terminate worker runs now: the record stays, in terminating.
    expect((await vmm.getVmByName(served)).state).toBe(VmStates.TERMINATING);

    await start('terminate');
    const job = await until(async () => (await terminateQueue.getJobs(['completed'])).find((j) => j.data.vmName === served), 30_000, 'the VM terminated');
    expect(job.stalledCounter).toBe(1);
    expect(job.returnvalue).toEqual({ vmName: served, removed: true });
    expect((await vmm.getAllVms()).some((v) => v.vmName === served)).toBe(false);
    // The hook ran twice: in the killed process (it finished on its own) and after recovery.
    expect(readFileSync(marker, 'utf8').trim().split('\n')).toHaveLength(2);
    expect(alive(pid)).toBe(false);
    expect(machines(1).has(served)).toBe(false);
    // Every process but the nine killed ones is still up.
    expect(workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null)).toHaveLength(workers.length - 9);
  });
});
