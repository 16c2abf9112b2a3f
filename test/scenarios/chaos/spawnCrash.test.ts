import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { VmManager, VmStates } from '../../../src/index.js';
import type { ConfigInput } from '../../../src/config/index.js';
import { QueueNames } from '../../../queues/names.js';
import { spawnJobId } from '../../../queues/spawn.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { liveGroupMembers } from '../../helpers/netns.js';
import { alive, hookGroup, hookMachines, hookStateDir, removeHookMachines, spawnAttempts } from '../../helpers/hookMachines.js';

// A spawn job can run twice: a spawn worker killed (SIGKILL, through the test-only VMPOOL_FAULT
// crash points) right after the VM entered the pool, or after its hook made the machine but before
// the pool had it, is re-run by stalled-job recovery, which makes no second machine: the group never
// goes over max_vm_total and the provider's machines are the pool's VMs. A spawn worker stopped
// (SIGTERM) during a slow hook kills the hook's process group, terminates the machine it printed,
// hands the job back and exits 0. Real worker processes; machines are the test hooks' TCP listeners
// (test/fixtures/hooks, a new machine name on every hook run). No list_cmd: reconcile's orphan pass
// cannot clean up, so whatever a crash left must be handled by the spawn itself.
const PORT = 2295;

interface System {
  prefix: string;
  dir: string;
  redis: Redis;
  vmm: VmManager;
  spawnQueue: Queue;
  reconcileQueue: Queue;
  workers: WorkerProcess[];
  env: Record<string, string>;
  start(type: string, extraEnv?: Record<string, string>): Promise<WorkerProcess>;
  until<T>(fn: () => Promise<T> | T, timeoutMs: number, what: string): Promise<NonNullable<T>>;
  /** Largest number of the group's pool VMs, and of the hooks' live machines, seen so far. */
  peaks: { vms: number; machines: number };
  stopSampling(): void;
}

let current: System | undefined;

async function startSystem(name: string, hooks: { terminateDelay?: number } = {}): Promise<System> {
  const prefix = uniquePrefix(`spawn-crash-${name}`);
  const dir = hookStateDir(`spawn-crash-${name}`);
  const config = {
    redis: { url: REDIS_URL, prefix },
    vm_cycle_timeout: 0.5,
    // A dead process's job comes back after about 2-3 s; a second stall fails it.
    jobs: { lock_duration: 2, stalled_interval: 1, max_stalled_count: 1 },
    groups: [{ name: 'one', min_ready: 1, max_vm_total: 1, max_spawn_processes: 1, ...hookGroup({ stateDir: dir, port: PORT, newMachineEachRun: true, ...hooks }) }],
  } satisfies ConfigInput;
  const redis = connect();
  const workers: WorkerProcess[] = [];
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
  const vmm = new VmManager(config, { redis, prefix });
  const peaks = { vms: 0, machines: 0 };
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const vms = (await vmm.getAllVmsInGroup('one').catch(() => [])).length;
      const machines = [...hookMachines(dir).values()].filter((pid) => alive(pid)).length;
      peaks.vms = Math.max(peaks.vms, vms);
      peaks.machines = Math.max(peaks.machines, machines);
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  const system: System = {
    prefix,
    dir,
    redis,
    vmm,
    spawnQueue: new Queue(QueueNames.SPAWN, { connection: redis, prefix }),
    reconcileQueue: new Queue(QueueNames.RECONCILE, { connection: redis, prefix }),
    workers,
    env,
    async start(type, extraEnv = {}) {
      const w = await startWorkerProcess(type, { ...env, ...extraEnv });
      workers.push(w);
      return w;
    },
    until: (fn, timeoutMs, what) => waitForWithLogs(workers, fn, timeoutMs, what),
    peaks,
    stopSampling() {
      sampling = false;
      void sampler;
    },
  };
  current = system;
  return system;
}

afterEach(async () => {
  const s = current;
  current = undefined;
  if (!s) return;
  s.stopSampling();
  await Promise.all(s.workers.map((w) => w.stop()));
  removeHookMachines(s.dir);
  await closePool(s.prefix, s.redis, [s.spawnQueue, s.vmm], s.reconcileQueue);
}, 60_000);

/** How a worker process ended, once it did. */
async function exited(w: WorkerProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (w.child.exitCode === null && w.child.signalCode === null) await new Promise((r) => w.child.once('exit', r));
  return { code: w.child.exitCode, signal: w.child.signalCode };
}

/** The pids each run of a spawn's hook had (the leaders of their process groups). */
function hookPids(dir: string, spawnId: string): number[] {
  const file = join(dir, `spawn-pid-${spawnId}`);
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').map(Number) : [];
}

async function liveMachineNames(dir: string): Promise<string[]> {
  return [...hookMachines(dir)].filter(([, pid]) => alive(pid)).map(([name]) => name).sort();
}

async function completedSpawn(s: System, spawnId: string): Promise<Job> {
  return s.until(async () => {
    const job = await Job.fromId(s.spawnQueue, spawnJobId(spawnId));
    // Read again once completed: the first read may predate its result.
    return job && (await job.getState()) === 'completed' ? ((await Job.fromId(s.spawnQueue, spawnJobId(spawnId))) ?? null) : null;
  }, 30_000, `spawn job ${spawnId} completed`);
}

describe('a spawn job that runs twice makes one machine', () => {
  it('a spawn worker killed just after its VM entered the pool: the re-run only queues the health check; one VM, never over max_vm_total', { timeout: 60_000 }, async () => {
    const s = await startSystem('after-add');
    await Promise.all(['health', 'terminate', 'reconcile'].map((t) => s.start(t)));
    const doomed = await s.start('spawn', { VMPOOL_FAULT: 'spawn-after-add' });
    expect(await exited(doomed)).toEqual({ code: null, signal: 'SIGKILL' });

    const [[machine, spawnId]] = [...spawnAttempts(s.dir)] as [[string, string]];
    const [vm] = await s.vmm.getAllVmsInGroup('one');
    expect(vm?.vmName).toBe(machine);
    // (Reconcile's periodic health check may already have checked it: no state is asserted.)
    // The VM took the spawn's slot in the same step: it does not count twice against max_vm_total.
    expect(await s.vmm.getSpawnsInFlight('one')).toEqual([]);

    await s.start('spawn');
    const job = await completedSpawn(s, spawnId);
    expect(job.stalledCounter).toBe(1);
    expect(job.returnvalue).toEqual({ vmName: machine, vmIp: vm!.vmIp, group: 'one' });
    const logs = (await s.spawnQueue.getJobLogs(job.id!)).logs.join('\n');
    expect(logs).toMatch(/an earlier run added/);
    await s.until(async () => (await s.vmm.getVmsByGroupAndStates('one', [VmStates.READY])).length === 1, 20_000, 'the VM ready');

    // The hook ran once; one machine, the pool's.
    expect(hookPids(s.dir, spawnId)).toHaveLength(1);
    expect(spawnAttempts(s.dir).size).toBe(1);
    expect(await liveMachineNames(s.dir)).toEqual([machine]);
    expect((await s.vmm.getAllVmsInGroup('one')).map((v) => v.vmName)).toEqual([machine]);
    expect(s.peaks).toEqual({ vms: 1, machines: 1 });
  });

  it('a spawn worker killed after its hook made the machine, before the pool had it: the re-run adopts that machine', { timeout: 60_000 }, async () => {
    const s = await startSystem('after-hook');
    await Promise.all(['health', 'terminate', 'reconcile'].map((t) => s.start(t)));
    const doomed = await s.start('spawn', { VMPOOL_FAULT: 'spawn-after-hook' });
    expect(await exited(doomed)).toEqual({ code: null, signal: 'SIGKILL' });

    const [[machine, spawnId]] = [...spawnAttempts(s.dir)] as [[string, string]];
    // The machine exists and the pool does not know it; the spawn still holds its slot.
    expect(await liveMachineNames(s.dir)).toEqual([machine]);
    expect(await s.vmm.getAllVmsInGroup('one')).toEqual([]);
    expect((await s.vmm.getSpawnsInFlight('one')).map((x) => x.spawnId)).toEqual([spawnId]);
    expect(await s.vmm.reader.spawnMachine(spawnId)).toMatchObject({ vmName: machine, hookDone: true, added: false });

    await s.start('spawn');
    const job = await completedSpawn(s, spawnId);
    expect(job.returnvalue.vmName).toBe(machine);
    expect((await s.spawnQueue.getJobLogs(job.id!)).logs.join('\n')).toMatch(/adopting it/);
    await s.until(async () => (await s.vmm.getVmsByGroupAndStates('one', [VmStates.READY])).length === 1, 20_000, 'the adopted VM ready');
    await s.until(async () => (await s.vmm.getSpawnsInFlight('one')).length === 0, 10_000, 'no spawn in flight');

    // Adopted, not spawned again: the provider's machines are the pool's VMs.
    expect(hookPids(s.dir, spawnId)).toHaveLength(1);
    expect(await liveMachineNames(s.dir)).toEqual([machine]);
    expect((await s.vmm.getAllVmsInGroup('one')).map((v) => v.vmName)).toEqual([machine]);
    expect(s.peaks).toEqual({ vms: 1, machines: 1 });
  });
});

describe('a spawn worker stopped during a slow spawn hook', () => {
  it('kills the hook\'s process group, terminates the machine it printed, hands the job back and exits 0', { timeout: 60_000 }, async () => {
    const s = await startSystem('sigterm');
    // The hook prints its machine, then waits 30 s more.
    writeFileSync(join(s.dir, 'slow-after-print'), '30');
    await Promise.all(['health', 'terminate', 'reconcile'].map((t) => s.start(t)));
    const stopping = await s.start('spawn', { VMPOOL_SHUTDOWN_DEADLINE_MS: '1000' });
    const [machine, spawnId] = await s.until(() => [...spawnAttempts(s.dir)][0] ?? null, 20_000, 'the spawn hook running');
    await s.until(async () => (await s.vmm.reader.spawnMachine(spawnId))?.vmName === machine, 20_000, 'the printed machine recorded');
    const [hookPid] = hookPids(s.dir, spawnId);
    expect(liveGroupMembers(hookPid!)).not.toEqual([]);

    // The helper SIGKILLs after 4.5 s: a null code would mean the stop overran.
    const stopStart = Date.now();
    const code = await stopping.stop(4_500);
    console.log(`spawn worker stopped during a spawn hook (VMPOOL_SHUTDOWN_DEADLINE_MS=1000): exit ${code} after ${Date.now() - stopStart} ms`);
    expect(code, stopping.lines.slice(-10).join('\n')).toBe(0);
    expect(stopping.lines.join('\n')).not.toMatch(/shutdown deadline passed/);
    expect(liveGroupMembers(hookPid!)).toEqual([]);
    // The machine it printed was terminated before the process exited.
    expect(await liveMachineNames(s.dir)).toEqual([]);
    expect(existsSync(join(s.dir, `terminating-${machine}`))).toBe(true);
    // The job went back to the queue with its slot, not to a failed attempt.
    const job = (await Job.fromId(s.spawnQueue, spawnJobId(spawnId)))!;
    expect(['waiting', 'delayed', 'prioritized']).toContain(await job.getState());
    expect(job.attemptsMade).toBe(0);
    expect((await s.vmm.getSpawnsInFlight('one')).map((x) => x.spawnId)).toEqual([spawnId]);
    expect(await s.vmm.getAllVmsInGroup('one')).toEqual([]);

    // The next spawn worker runs it to the end with a new machine; nothing is left of the first.
    rmSync(join(s.dir, 'slow-after-print'));
    await s.start('spawn');
    const done = await completedSpawn(s, spawnId);
    expect(done.returnvalue.vmName).not.toBe(machine);
    await s.until(async () => (await s.vmm.getSpawnsInFlight('one')).length === 0, 10_000, 'no spawn in flight');
    expect(await liveMachineNames(s.dir)).toEqual([done.returnvalue.vmName]);
    expect((await s.vmm.getAllVmsInGroup('one')).map((v) => v.vmName)).toEqual([done.returnvalue.vmName]);
    // The sampler reads every 25 ms: it may not have run since the VM appeared (a loaded machine).
    await s.until(async () => s.peaks.vms >= 1, 10_000, 'the sampler to see the VM');
    expect(s.peaks.vms).toBe(1);
  });

  it('when terminate_cmd does not end before the deadline, a terminate job takes over, which the next run settles before it terminates the machine and spawns', { timeout: 60_000 }, async () => {
    const s = await startSystem('sigterm-slow-terminate', { terminateDelay: 3 });
    writeFileSync(join(s.dir, 'slow-after-print'), '30');
    // No terminate worker: the job left by the stop stays queued until the next run settles it.
    await Promise.all(['health', 'reconcile'].map((t) => s.start(t)));
    const stopping = await s.start('spawn', { VMPOOL_SHUTDOWN_DEADLINE_MS: '1000' });
    const [machine, spawnId] = await s.until(() => [...spawnAttempts(s.dir)][0] ?? null, 20_000, 'the spawn hook running');
    await s.until(async () => (await s.vmm.reader.spawnMachine(spawnId))?.vmName === machine, 20_000, 'the printed machine recorded');
    expect(await stopping.stop(4_500)).toBe(0);
    const terminateQueue = new Queue(QueueNames.TERMINATE, { connection: s.redis, prefix: s.prefix });
    try {
      const backstop = await Job.fromId(terminateQueue, `spawn-stop-${spawnId}-${machine}`);
      expect(backstop?.data ?? 'no job', stopping.lines.slice(-8).join('\n')).toMatchObject({ vmName: machine, orphan: { group: 'one' } });
      expect((await s.vmm.reader.spawnMachine(spawnId)) ?? 'no machine recorded', stopping.lines.slice(-8).join('\n')).toMatchObject({ vmName: machine, hookDone: false });

      rmSync(join(s.dir, 'slow-after-print'));
      await s.start('spawn');
      const done = await completedSpawn(s, spawnId);
      expect(done.returnvalue ?? 'no result', JSON.stringify(done.toJSON())).toMatchObject({ group: 'one' });
      expect(done.returnvalue.vmName).not.toBe(machine);
      const logs = (await s.spawnQueue.getJobLogs(done.id!)).logs.join('\n');
      expect(logs).toMatch(new RegExp(`terminated ${machine}`));
      // The next run removed the queued job and terminated the machine itself.
      expect(await Job.fromId(terminateQueue, `spawn-stop-${spawnId}-${machine}`)).toBeUndefined();
      await s.until(async () => (await liveMachineNames(s.dir)).length === 1, 10_000, 'only the new machine alive');
      expect(await liveMachineNames(s.dir)).toEqual([done.returnvalue.vmName]);
      expect((await s.vmm.getAllVmsInGroup('one')).map((v) => v.vmName)).toEqual([done.returnvalue.vmName]);
    } finally {
      await terminateQueue.close();
    }
  });
});
