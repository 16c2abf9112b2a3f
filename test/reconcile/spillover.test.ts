import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmManager } from '../../src/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import { VmPoolClient } from '../../src/client/index.js';
import { groupSummaries } from '../../src/poolView.js';
import { closePool, connect, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { hookGroup, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';

// A provider that refuses capacity (a fault-injecting spawn hook with a typed error) opens the
// group's circuit breaker; its demand spills over to the fallback group, and returns once a probe
// spawn succeeds. Real worker processes, real hook processes, the real Redis.
const prefix = uniquePrefix('spillover');
const spotDir = hookStateDir('spill-spot');
const onDemandDir = hookStateDir('spill-ondemand');
const PORT = 2297;
const config = {
  redis: { url: REDIS_URL, prefix },
  vm_cycle_timeout: 0.5,
  acquire_safety_retry: 0.5,
  groups: [
    { name: 'spot', min_ready: 0, max_vm_total: 2, fallback_groups: ['ondemand'], breaker: { failures: 2, backoff: 2, max_backoff: 2 }, ...hookGroup({ stateDir: spotDir, port: PORT }) },
    { name: 'ondemand', min_ready: 0, max_vm_total: 2, ...hookGroup({ stateDir: onDemandDir, port: PORT }) },
  ],
} satisfies ConfigInput;

let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix });
  client = new VmPoolClient({ redis, prefix, graceMs: 5_000 });
  writeFileSync(join(spotDir, 'fail-class'), 'capacity');
  const env = { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix };
  workers.push(...(await Promise.all(['acquire', 'spawn', 'health', 'terminate', 'reconcile'].map((t) => startWorkerProcess(t, env)))));
}, 60_000);

afterAll(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  removeHookMachines(spotDir);
  removeHookMachines(onDemandDir);
  await closePool(prefix, redis, [client, vmm]);
}, 60_000);

describe('spill-over to a fallback group while the breaker is open', () => {
  it('opens the breaker on typed capacity errors and serves the request in the fallback group', { timeout: 60_000 }, async () => {
    const assignment = await client.acquire({ owner: 'alice', sandbox: 'a/1', groups: [0], timeoutMs: 40_000 });
    expect(assignment.group).toBe('ondemand');
    const breaker = await vmm.reader.breaker('spot');
    expect(breaker, JSON.stringify(breaker)).toMatchObject({ open: true, errorClass: 'capacity' });
    expect(breaker!.message).toContain('capacity: refused by the test');
    const [spot] = await groupSummaries(vmm);
    expect(spot!.breaker?.errorClass).toBe('capacity');
    expect(await vmm.getAllVmsInGroup('spot')).toEqual([]);
    await client.release(assignment);
  });

  it('keeps a strict request to the group it named', async () => {
    const err = await client.acquire({ owner: 'bob', sandbox: 'b/1', groups: [0], strictGroup: true, timeoutMs: 2_500 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoVmAvailable);
  });

  it('closes the breaker with a successful probe once the provider recovers, and the demand returns', { timeout: 90_000 }, async () => {
    rmSync(join(spotDir, 'fail-class'));
    // A strict request is demand for spot alone: the probe spawns for it, succeeds and closes the breaker.
    const strict = await client.acquire({ owner: 'dave', sandbox: 'd/1', groups: [0], strictGroup: true, timeoutMs: 40_000 });
    expect(strict.group).toBe('spot');
    expect(await vmm.reader.breaker('spot')).toBeNull();
    // Closed: spot's demand is its own again, and a request that may spill is served there.
    const back = await client.acquire({ owner: 'erin', sandbox: 'e/1', groups: [0], timeoutMs: 40_000 });
    expect(back.group).toBe('spot');
  });
});
