import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/index.js';
import { launchFingerprint, parseConfig, type ConfigInput } from '../../src/config/index.js';
import type { VmRecord } from '../../src/pool/types.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// A changed `image` rolls a group over to new VMs, with real processes (spawn, health, terminate,
// reconcile) and real hook machines: the spawn and reconcile processes are restarted with the new
// config, as an operator does. No old VM is handed out once a new one is ready, the VM in use is
// not interrupted (and is retired at its release), and min_ready holds throughout.
const prefix = uniquePrefix('rollout-scenario');
const stateDir = hookStateDir('rollout');
const PORT = 2296;
const MIN_READY = 3;
const AGE = 3;
const configOf = (image: string) =>
  ({
    redis: { url: REDIS_URL, prefix },
    vm_cycle_timeout: 0.5,
    groups: [
      {
        name: 'roll',
        image,
        ...hookGroup({ stateDir, port: PORT, spawnDelay: 0.5 }),
        // Checks only at spawn: a periodic check takes a VM out of ready for a moment, which is no rollout's doing.
        vm_health_check_period: 3600,
        min_ready: MIN_READY,
        max_vm_total: 8,
        max_spawn_processes: 3,
      },
      // The same in both configs: its VMs age out every few seconds.
      { name: 'aging', ...hookGroup({ stateDir, port: PORT, spawnDelay: 0.5 }), vm_health_check_period: 3600, min_ready: 2, max_vm_total: 4, max_ready_age: AGE },
    ],
  }) satisfies ConfigInput;
const v1 = configOf('fedora-41');
const v2 = configOf('fedora-42');
const fp1 = launchFingerprint(parseConfig(v1).groups[0]!);
const fp2 = launchFingerprint(parseConfig(v2).groups[0]!);

let redis: Redis;
let vmm: VmManager;
const workers: WorkerProcess[] = [];
const envOf = (config: ConfigInput) => ({ VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix });

async function records(): Promise<VmRecord[]> {
  return vmm.getAllVmRecords();
}
const cleanReady = (vms: VmRecord[], group = 'roll') => vms.filter((v) => v.group === group && v.state === 'ready' && v.owner === null && v.heldBy === null);

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(v2, { redis, prefix });
  const env = envOf(v1);
  for (const type of ['spawn', 'health', 'terminate', 'reconcile']) workers.push(await startWorkerProcess(type, env));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(stateDir);
  await closePool(prefix, redis, [vmm]);
}, 60_000);

describe('a changed image', () => {
  it('rolls the group to new VMs: none old handed out once a new one is ready, none in use interrupted, min_ready held', async () => {
    await waitForWithLogs(workers, async () => cleanReady(await records()).length >= MIN_READY, 30_000, 'the v1 warm pool');
    const busy = await vmm.acquireVm({ groups: ['roll'], owner: 'alice', sandbox: 'alice/p', workerId: 'w', taskId: 'build-1' });
    const busyLease = (await vmm.getVmRecord(busy.vmName)).leaseId;
    await waitForWithLogs(workers, async () => cleanReady(await records()).length >= MIN_READY, 30_000, 'the v1 warm pool refilled');
    expect((await records()).filter((v) => v.group === 'roll').every((v) => v.launchFingerprint === fp1)).toBe(true);

    // Sample the clean ready VMs (plus the one this test takes below) during the whole roll.
    let minServing = Infinity;
    let taken = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        minServing = Math.min(minServing, cleanReady(await records()).length + taken);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    // The operator's rolling restart: spawn first, then reconcile, with the new image.
    const env = envOf(v2);
    for (const type of ['spawn', 'reconcile']) {
      const old = workers.findIndex((w) => w.type === type);
      await workers[old]!.stop();
      workers.splice(old, 1, await startWorkerProcess(type, env));
    }
    await waitForWithLogs(workers, async () => (await vmm.launchStates())[0]!.published?.fingerprint === fp2, 20_000, 'v2 published');
    await waitForWithLogs(workers, async () => cleanReady(await records()).some((v) => v.launchFingerprint === fp2), 30_000, 'a v2 VM ready');
    taken = 1;
    const fresh = await vmm.acquireVm({ groups: ['roll'], owner: 'bob', sandbox: 'bob/p', workerId: 'w' });
    expect((await vmm.getVmRecord(fresh.vmName)).launchFingerprint).toBe(fp2);

    // Done: every VM but alice's is of v2, and the warm pool is whole again.
    await waitForWithLogs(
      workers,
      async () => {
        const vms = (await records()).filter((v) => v.group === 'roll' && v.state !== 'terminating');
        return vms.filter((v) => v.launchFingerprint === fp1).map((v) => v.vmName).join() === busy.vmName && cleanReady(vms).length >= MIN_READY;
      },
      60_000,
      'only the VM in use left of v1',
    );
    sampling = false;
    await sampler;
    expect(minServing).toBeGreaterThanOrEqual(MIN_READY);
    const still = await vmm.getVmRecord(busy.vmName);
    expect([still.state, still.leaseId]).toEqual(['in_use', busyLease]);
    expect((await vmm.launchStates())[0]!.outdated).toBe(1);

    // Released, it is retired (not reused), for the rollout.
    expect(await vmm.releaseVm(busy.vmName, busyLease!)).toBe(true);
    await waitForWithLogs(workers, async () => (await records()).every((v) => v.vmName !== busy.vmName), 30_000, 'the released v1 VM gone');
    const events = (await vmm.reader.auditEvents({ limit: 1000 })).events;
    const retired = events.filter((e) => e.event === 'terminate_requested' && e.group === 'roll');
    expect(retired.find((e) => e.vm === busy.vmName)?.reason).toBe('rollout');
    // Every VM retired was of v1, and for the rollout.
    const spawnedV1 = new Set(events.filter((e) => e.event === 'spawned' && e.details.launch === fp1).map((e) => e.vm));
    expect(retired.every((e) => spawnedV1.has(e.vm) && e.reason === 'rollout')).toBe(true);
    expect(retired.length).toBe(spawnedV1.size);
    expect((await vmm.launchStates())[0]!.outdated).toBe(0);
  }, 180_000);
});

describe('max_ready_age', () => {
  it('retires a VM ready for longer than max_ready_age and replaces it first, keeping min_ready', async () => {
    const first = await waitForWithLogs(workers, async () => {
      const ready = cleanReady(await records(), 'aging');
      return ready.length >= 2 ? ready.map((v) => v.vmName) : null;
    }, 30_000, 'the aging group ready');
    let minReady = Infinity;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        minReady = Math.min(minReady, cleanReady(await records(), 'aging').length);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    await waitForWithLogs(workers, async () => {
      const vms = await records();
      return first.every((name) => !vms.some((v) => v.vmName === name)) && cleanReady(vms, 'aging').length >= 2;
    }, 40_000, 'the first VMs aged out and replaced');
    sampling = false;
    await sampler;
    expect(minReady).toBeGreaterThanOrEqual(2);
    const events = (await vmm.reader.auditEvents({ limit: 1000 })).events;
    const reasons = new Map(events.filter((e) => e.event === 'terminate_requested').map((e) => [e.vm, e.reason]));
    // Every VM that was ready at the start (2, or 3 when a replacement was already ready on a loaded machine).
    expect(first.length).toBeGreaterThanOrEqual(2);
    expect(first.map((name) => reasons.get(name))).toEqual(first.map(() => 'max_ready_age'));
    // Not before its time: each was ready for longer than max_ready_age when retired.
    for (const name of first) {
      const ready = events.find((e) => e.vm === name && e.event === 'ready')!;
      const retired = events.find((e) => e.vm === name && e.event === 'terminate_requested')!;
      expect(retired.time - ready.time).toBeGreaterThan(AGE * 1000 - 1000);
    }
  }, 90_000);
});
