import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { runVmpoolCli, startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { alive, hookGroup, hookStateDir, listenerPid, removeHookMachines } from '../helpers/hookMachines.js';
import { Job, Queue } from 'bullmq';
import { ACQUIRE_QUEUE, acquireSetRequestId, addAcquireSetJob, type VmSetAssignment } from '../../queues/acquire.js';

// check_on_acquire with real processes (acquire, spawn, health, terminate, reconcile) and real hook
// machines (TCP listeners): a machine killed after its last periodic check (period 1 h here) is not
// handed out by a group with check_on_acquire: tcp; the builder gets another VM, and the dead one is
// terminated with the reason in the audit trail. The same kill in a group without it hands the dead
// one out: the test can fail.
const prefix = uniquePrefix('check-on-acquire');
const checkedDir = hookStateDir('check-on-acquire');
const plainDir = hookStateDir('check-on-acquire-plain');
const PORT = 2331;
const common = { vm_health_check_period: 3600, min_ready: 2, max_vm_total: 4, vm_max_check_fails: 0 };
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  groups: [
    { name: 'checked', ...hookGroup({ stateDir: checkedDir, port: PORT }), ...common, check_on_acquire: 'tcp', check_on_acquire_timeout: 2 },
    { name: 'plain', ...hookGroup({ stateDir: plainDir, port: PORT }), ...common },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
const workers: WorkerProcess[] = [];
const configFile = writeConfigFile(config);
const cli = (...args: string[]) => runVmpoolCli(['--config', configFile, ...args], { PATH: process.env.PATH, HOME: process.env.HOME, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent' });

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  const env = { VMPOOL_CONFIG: configFile, VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await client?.close();
  removeHookMachines(checkedDir);
  removeHookMachines(plainDir);
  await closePool(prefix, redis, [vmm]);
}, 60_000);

/** Waits for two ready VMs in the group, kills the machine of the first, and returns its name. */
async function killOneReadyMachine(group: string, stateDir: string): Promise<string> {
  const ready = await waitForWithLogs(
    workers,
    async () => {
      const vms = (await vmm.getAllVmRecords()).filter((v) => v.group === group && v.state === 'ready');
      return vms.length >= 2 ? vms : null;
    },
    60_000,
    `two ready VMs in ${group}`,
  );
  const dead = ready[0]!.vmName;
  const pid = listenerPid(stateDir, dead);
  expect(pid).not.toBeNull();
  process.kill(pid!, 'SIGKILL');
  await waitForWithLogs(workers, () => !alive(pid!), 5_000, `machine ${dead} gone`);
  // Its record still says ready: the periodic check would not look again for an hour.
  expect((await vmm.getVmRecord(dead)).state).toBe('ready');
  return dead;
}

/** Two acquires in a row (whichever of the two ready VMs the first gets, the second meets the other). */
async function acquireTwo(group: string): Promise<string[]> {
  const first = await client.acquire({ owner: 'alice', sandbox: 'a/1', groups: [group], timeoutMs: 60_000 });
  const second = await client.acquire({ owner: 'bob', sandbox: 'b/1', groups: [group], timeoutMs: 60_000 });
  return [first.vmName, second.vmName];
}

describe('check_on_acquire', () => {
  it('never hands out a VM whose machine died after its last check; the dead one is terminated', async () => {
    const dead = await killOneReadyMachine('checked', checkedDir);
    const given = await acquireTwo('checked');
    expect(given).not.toContain(dead);
    expect(new Set(given).size).toBe(2);
    // Terminating, or already removed by the terminate worker.
    await waitForWithLogs(
      workers,
      async () => {
        const record = (await vmm.getAllVmRecords()).find((v) => v.vmName === dead);
        return !record || record.state === 'terminating';
      },
      30_000,
      `${dead} terminated`,
    );
    const events = await cli('events', '--vm', dead, '--json');
    expect(events.code, events.stderr).toBe(0);
    const lines = events.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event: string; reason?: string | null });
    expect(lines.filter((e) => e.reason === 'check_on_acquire').map((e) => e.event)).toEqual(expect.arrayContaining(['check_failed', 'terminate_requested']));
  }, 180_000);

  it('a set never includes a dead machine: the dead one is terminated, the set served whole with live ones', async () => {
    const dead = await killOneReadyMachine('checked', checkedDir);
    const queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
    try {
      const job = await addAcquireSetJob(
        queue,
        { owner: 'erin', sandbox: 'e/1', requestId: 'pair', vms: [{ groups: ['checked'] }, { groups: ['checked'] }], timeoutMs: 90_000 },
        { jobId: acquireSetRequestId('erin', 'pair'), timestamp: Date.now() },
      );
      await waitForWithLogs(workers, async () => ['completed', 'failed'].includes(await job.getState()), 120_000, 'the set to be served');
      const stored = (await Job.fromId(queue, String(job.id)))!;
      expect(stored.failedReason).toBeUndefined();
      const set = stored.returnvalue as VmSetAssignment;
      const names = set.vms.map((v) => v.vmName);
      expect(names).toHaveLength(2);
      expect(names).not.toContain(dead);
      for (const v of set.vms) expect((await vmm.getVmRecord(v.vmName)).state).toBe('in_use');
      const record = (await vmm.getAllVmRecords()).find((v) => v.vmName === dead);
      expect(!record || record.state === 'terminating').toBe(true);
    } finally {
      await queue.close();
    }
  }, 180_000);

  it('without check_on_acquire, the same dead machine is handed out', async () => {
    const dead = await killOneReadyMachine('plain', plainDir);
    expect(await acquireTwo('plain')).toContain(dead);
  }, 180_000);
});
