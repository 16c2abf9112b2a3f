import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { NoVmAvailable, VmManager, VmStates, type VmDescriptor } from '../../../src/index.js';
import type { ConfigInput } from '../../../src/config/index.js';
import { VmPoolClient } from '../../../src/client/index.js';
import { connectTo, type RedisConnection } from '../../../src/redis.js';
import { LeaseLost, VmDescriptorNotFound } from '../../../src/pool/types.js';
import { uniquePrefix } from '../../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';
import { startSentinelSet, type PrivateSentinelSet } from '../../helpers/redisServers.js';
import { describeWithTools } from '../../helpers/tools.js';

// vmpool on a real Sentinel set (a master, a replica, 3 sentinels: private servers on loopback).
// Every process type runs as a real process, pointed at it by REDIS_URL=redis+sentinel://.../name.
// The master is failed over under acquire/release load on a second pool, three times: SENTINEL
// FAILOVER without and with redis.wait_replicas, then a killed master. The test counts errors,
// acknowledged operations lost and the time to recover, prints them, and checks that the processes
// work on the last master.
const prefix = uniquePrefix('sentinel');
const stateDir = hookStateDir('sentinel');
const PORT = 2302;
const LOOPS = 6;

let set: PrivateSentinelSet;
let redis: RedisConnection;
let vmm: VmManager;
let client: VmPoolClient;
const workers: WorkerProcess[] = [];

const config = (url: string) =>
  ({
    redis: { url, prefix },
    vm_cycle_timeout: 0.5,
    groups: [{ name: 'warm', min_ready: 1, max_vm_total: 2, vm_dirty_terminating_timeout: 2, lease_timeout: 60, vm_max_check_fails: 0, ...hookGroup({ stateDir, port: PORT }) }],
  }) satisfies ConfigInput;

const loadConfig = (url: string, loadPrefix: string, wait: boolean) =>
  ({
    redis: { url, prefix: loadPrefix, ...(wait ? { wait_replicas: 1, wait_timeout: 0.5 } : {}) },
    groups: [{ name: 'load', max_vm_total: 0, max_vm_per_user: 1, lease_timeout: 600 }],
  }) satisfies ConfigInput;

/**
 * Waits for fn, with the workers' logs on a time-out. This test's own connection may be between two
 * masters right after a failover ("Connection is closed." for a command in flight): that counts as
 * not yet, and the last such error is in the time-out's message.
 */
async function until<T>(fn: () => Promise<T> | T, timeoutMs: number, what: string): Promise<NonNullable<T>> {
  let lastError: string | null = null;
  const attempt = async (): Promise<T | null> => {
    try {
      return await fn();
    } catch (err) {
      lastError = (err as Error).message;
      return null;
    }
  };
  return (await waitForWithLogs(workers, attempt, timeoutMs, what).catch((err: Error) => {
    throw new Error(lastError === null ? err.message : `${err.message}\nlast error: ${lastError}`);
  })) as NonNullable<T>;
}

async function readyCleanVm(except: string[] = []): Promise<VmDescriptor | null> {
  const vms = await vmm.getVmsByGroupAndStates('warm', [VmStates.READY]);
  return vms.find((v) => v.owner === null && !except.includes(v.vmName)) ?? null;
}

interface LoadFigures {
  ops: number;
  errors: number;
  lostAcquires: number;
  lostReleases: number;
  /** VMs of the load whose record was lost. */
  lostVms: number;
  /** From the failover's start to the first success after the last error (0: no error). */
  recoverMs: number;
  /** The slowest operation (one that waited through the failover instead of failing). */
  slowestMs: number;
  p50Ms: number;
}

/**
 * LOOPS builders, each with its own VM (its owner's dirty VM comes back to it), acquire and
 * release in turn on the load pool while `failover` runs. An acknowledged acquire whose release
 * then finds no lease, or an acknowledged release after which the VM is still held, is a lost
 * operation. After an error the outcome is read back from Redis (as a builder would ask again).
 */
async function underLoad(wait: boolean, failover: () => Promise<unknown>): Promise<LoadFigures> {
  const conn = connectTo(set.url, { maxRetriesPerRequest: 2 });
  conn.on('error', () => undefined);
  // A pool of its own for each run: the last run's leases may have been lost with its master.
  const loadPrefix = uniquePrefix('sentinel-load');
  const load = new VmManager(loadConfig(set.url, loadPrefix, wait), { redis: conn, prefix: loadPrefix });
  const figures: LoadFigures = { ops: 0, errors: 0, lostAcquires: 0, lostReleases: 0, lostVms: 0, recoverMs: 0, slowestMs: 0, p50Ms: 0 };
  const latencies: number[] = [];
  let stop = false;
  let failoverAt = 0;
  let lastErrorAt = 0;
  let firstOkAfterError = 0;
  const timed = async <T>(fn: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      const value = await fn();
      const ms = performance.now() - t0;
      latencies.push(ms);
      figures.slowestMs = Math.max(figures.slowestMs, ms);
      figures.ops += 1;
      if (lastErrorAt && !firstOkAfterError) firstOkAfterError = Date.now();
      return value;
    } catch (err) {
      if (!(err instanceof NoVmAvailable || err instanceof LeaseLost)) {
        figures.errors += 1;
        lastErrorAt = Date.now();
        firstOkAfterError = 0;
      }
      throw err;
    }
  };
  /** The lease the VM is held under now, read until Redis answers. */
  const heldLease = async (vmName: string): Promise<string | null> => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        const r = await timed(() => load.getVmRecord(vmName));
        return r.state === VmStates.IN_USE ? (r.leaseId ?? null) : null;
      } catch (err) {
        if (err instanceof VmDescriptorNotFound || Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  };
  const loop = async (i: number) => {
    const vmName = `load-${i}`;
    const request = { owner: `o${i}`, sandbox: `s${i}`, groups: [0], workerId: 'load' };
    let held: string | null = null;
    let released: string | null = null;
    let counted: string | null = null;
    while (!stop) {
      if (held === null) {
        const leaseId = randomUUID();
        try {
          await timed(() => load.acquireVm({ ...request, leaseId }));
          held = leaseId;
        } catch (err) {
          if (err instanceof NoVmAvailable) {
            // Our VM is still held: the release acknowledged before was lost. Give it back to go on.
            if (released !== null && released !== counted) figures.lostReleases += 1;
            counted = released;
            const stale = await heldLease(vmName);
            if (stale) await load.releaseVm(vmName, stale).catch(() => undefined);
            await new Promise((r) => setTimeout(r, 20));
          } else if ((await heldLease(vmName)) === leaseId) held = leaseId;
        }
      } else {
        const leaseId: string = held;
        try {
          if (await timed(() => load.releaseVm(vmName, leaseId))) {
            held = null;
            released = leaseId;
          } else {
            // Nothing held under the acknowledged lease: the acquire was lost.
            figures.lostAcquires += 1;
            held = null;
          }
        } catch (err) {
          if (err instanceof LeaseLost) {
            figures.lostAcquires += 1;
            held = null;
          } else if ((await heldLease(vmName)) !== leaseId) {
            held = null;
            released = leaseId;
          }
        }
      }
    }
    // What each builder believes at the end must be what Redis says.
    const now = await heldLease(vmName);
    if (held !== null && now !== held) figures.lostAcquires += 1;
    if (held === null && released !== null && released !== counted && now === released) figures.lostReleases += 1;
  };
  try {
    await load.markServerStart();
    for (let i = 0; i < LOOPS; i += 1) {
      const vmName = `load-${i}`;
      await load.addVmToPool(`10.0.0.${i + 1}`, vmName, 'load').catch(() => undefined);
      if (await load.startVmCheck(vmName)) await load.recordHealthCheckResult(vmName, true);
    }
    await set.replicaInSync();
    const loops = Array.from({ length: LOOPS }, (_, i) =>
      loop(i).catch((err: Error) => {
        // The VM itself is gone: its addition was lost with the old master.
        if (err instanceof VmDescriptorNotFound) figures.lostVms += 1;
        else throw err;
      }),
    );
    await new Promise((r) => setTimeout(r, 1_500));
    failoverAt = Date.now();
    await failover();
    // Load goes on until operations have succeeded for a while on the new master.
    await new Promise((r) => setTimeout(r, 3_000));
    stop = true;
    await Promise.all(loops);
    figures.recoverMs = lastErrorAt ? (firstOkAfterError || Date.now()) - failoverAt : 0;
    latencies.sort((a, b) => a - b);
    figures.p50Ms = Number((latencies[Math.floor(latencies.length / 2)] ?? 0).toFixed(3));
    figures.slowestMs = Math.round(figures.slowestMs);
    return figures;
  } finally {
    await load.close();
    await conn.quit().catch(() => conn.disconnect());
  }
}

describeWithTools('redis-sentinel', 'vmpool on Redis Sentinel', () => {
  beforeAll(async () => {
    set = await startSentinelSet();
    redis = connectTo(set.url, { maxRetriesPerRequest: 2 });
    redis.on('error', () => undefined);
    vmm = new VmManager(config(set.url), { redis, prefix });
    client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
    const env = { VMPOOL_CONFIG: writeConfigFile(config('redis://127.0.0.1:1')), REDIS_URL: set.url, VMPOOL_PREFIX: prefix };
    const types = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'];
    workers.push(...(await Promise.all(types.map((t) => startWorkerProcess(t, env)))));
  }, 60_000);

  afterAll(async () => {
    await Promise.all(workers.map((w) => w.stop()));
    removeHookMachines(stateDir);
    await client?.close();
    await vmm?.close();
    await redis?.quit().catch(() => redis.disconnect());
    await set?.stop();
  }, 60_000);

  it('runs the job system through the sentinels: spawn, health, acquire and release', async () => {
    await until(() => readyCleanVm(), 30_000, 'a warm ready VM');
    const a = await client.acquire({ owner: 'alice', sandbox: 'a', groups: [0], timeoutMs: 20_000 });
    expect((await vmm.getVmByName(a.vmName)).state).toBe(VmStates.IN_USE);
    expect(await client.release(a)).toBe(true);
  }, 45_000);

  const show = (name: string, f: LoadFigures) => {
    console.log(`Sentinel failover under acquire/release load (${LOOPS} builders), ${name}: ${JSON.stringify(f)}`);
  };

  it('fails over (SENTINEL FAILOVER) under acquire/release load without errors', async () => {
    const before = await set.masterPort();
    const plain = await underLoad(false, () => set.failover());
    show('SENTINEL FAILOVER, without WAIT', plain);
    expect(await set.masterPort()).not.toBe(before);
    expect(plain.ops).toBeGreaterThan(100);
    // failoverDetector and the reconnect on READONLY: commands wait and go to the new master.
    expect(plain.errors).toBe(0);
  }, 50_000);

  it('loses no acknowledged acquire or release with redis.wait_replicas', async () => {
    const waited = await underLoad(true, () => set.failover());
    show('SENTINEL FAILOVER, with redis.wait_replicas 1', waited);
    expect(waited.ops).toBeGreaterThan(100);
    // With WAIT, what was acknowledged was on the replica that took over.
    expect(waited.lostAcquires + waited.lostReleases + waited.lostVms).toBe(0);
  }, 50_000);

  it('recovers from a killed master once the sentinels promote the replica', async () => {
    const killed = await underLoad(false, () => set.killMaster());
    show('master killed, without WAIT', killed);
    expect(killed.ops).toBeGreaterThan(100);
  }, 50_000);

  it('goes on in every process on the new master', async () => {
    // The processes found the new master: a warm VM is handed out through the acquire queue.
    const vm = await until(() => readyCleanVm(), 30_000, 'a warm ready VM after the failovers');
    const a = await client.acquire({ owner: 'bob', sandbox: 'b', groups: [0], timeoutMs: 20_000 });
    expect(a.vmName).toBe(vm.vmName);
    // Reconcile cycles on: the dirty VM is terminated after its timeout and the pool refilled.
    expect(await client.release(a)).toBe(true);
    await until(async () => (await vmm.getAllVms()).every((v) => v.vmName !== a.vmName), 30_000, 'the dirty VM terminated after the failovers');
    await until(() => readyCleanVm([a.vmName]), 30_000, 'the warm pool refilled');
  }, 60_000);
});
