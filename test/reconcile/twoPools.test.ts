import { randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { createProvider } from '../../src/providers/index.js';
import type { LocalProvider } from '../../src/providers/local.js';
import type { ProviderGroup } from '../../src/providers/types.js';
import { LAST_ORPHAN_CHECK } from '../../src/reconcile/orphanPass.js';
import { startProcessTypes, type RunningProcess } from '../../src/runtime/boot.js';
import { QueueNames } from '../../queues/names.js';
import { waitFor } from '../helpers/processes.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// Two pools on one machine (different prefixes, the same group name, the same local provider
// state_dir, addresses and port), each with its workers and a reconcile cycle every second and an
// orphan pass every second: for several passes neither takes the other's VMs for leaks, and each
// still cleans up a leak of its own.
const stateDir = mkdtempSync(join(tmpdir(), 'vmpool-test-twopools-'));
const provider = { type: 'local' as const, state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000), spawn_timeout: 15 };
const groupInput = {
  name: 'default',
  provider,
  min_ready: 2,
  max_vm_total: 2,
  vm_spawn_min_interval: 0,
  orphan_check_period: 1,
  orphan_grace_period: 2,
};
const prefixes = [uniquePrefix('twopools-a'), uniquePrefix('twopools-b')];
const configs: Config[] = prefixes.map(() => parseConfig({ vm_cycle_timeout: 1, groups: [groupInput] }, {}));

let redis: Redis;
const pools: { vmm: VmManager; running: RunningProcess; group: ProviderGroup; provider: LocalProvider }[] = [];

const orphanPasses = async (vmm: VmManager) => Number((await vmm.readVmPoolInfo('default', LAST_ORPHAN_CHECK)) ?? 0);
const readyNames = async (vmm: VmManager) => (await vmm.getAllVmRecords()).filter((v) => v.state === 'ready').map((v) => v.vmName).sort();

beforeAll(async () => {
  redis = connect();
  for (const [i, prefix] of prefixes.entries()) {
    const config = configs[i]!;
    const vmm = new VmManager(config, { redis, prefix });
    const running = await startProcessTypes(processTypeSpecs, ['spawn', 'health', 'terminate', 'reconcile'], config, { prefix, logger: createLogger(`pool-${i}`) });
    const group: ProviderGroup = { index: 0, config: config.groups[0]!, poolId: vmm.poolId };
    pools.push({ vmm, running, group, provider: createProvider(group, { logger: createLogger('test') }) as LocalProvider });
  }
}, 30_000);

afterAll(async () => {
  for (const p of pools) await p.running.stop(5_000);
  for (const p of pools) {
    for (const m of await p.provider.list(p.group)) await p.provider.terminate({ group: p.group, vmName: m.name, vmIp: m.ip ?? null });
    await p.vmm.close();
  }
  for (const prefix of prefixes) await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
  rmSync(stateDir, { recursive: true, force: true });
}, 30_000);

describe('two pools on one machine', () => {
  it('have their own identities and state directories', () => {
    const [a, b] = pools;
    expect(a!.vmm.poolId).not.toBe(b!.vmm.poolId);
    expect(a!.provider.stateDir).toBe(join(stateDir, 'pools', a!.vmm.poolId));
    expect(b!.provider.stateDir).toBe(join(stateDir, 'pools', b!.vmm.poolId));
  });

  it('run side by side for several orphan passes and neither loses a VM', async () => {
    // Both warm pools fill up.
    const before = await waitFor(
      async () => {
        const names = await Promise.all(pools.map((p) => readyNames(p.vmm)));
        return names.every((n) => n.length === 2) ? names : null;
      },
      60_000,
      'two ready VMs in each pool',
      250,
    );
    // Each pool's VMs carry its identity, in its own directory; the addresses are shared and distinct.
    for (const [i, p] of pools.entries()) {
      const listed = await p.provider.list(p.group);
      expect(listed.map((m) => m.name).sort()).toEqual(before[i]);
      expect(listed.every((m) => m.pool === p.vmm.poolId)).toBe(true);
    }
    expect(new Set(readdirSync(join(stateDir, 'ips'))).size).toBe(4);

    // Several orphan passes of each pool (period 1 s, grace 2 s: another pool's VM would have been
    // terminated by the third pass).
    const start = await Promise.all(pools.map((p) => orphanPasses(p.vmm)));
    for (const [i, p] of pools.entries()) {
      await waitFor(async () => (await orphanPasses(p.vmm)) >= start[i]! + 5_000, 60_000, `five seconds of orphan passes in pool ${i}`, 250);
    }
    const after = await Promise.all(pools.map((p) => readyNames(p.vmm)));
    expect(after).toEqual(before);
    for (const p of pools) {
      const terminate = await p.vmm.queue(QueueNames.TERMINATE).getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
      expect(terminate.map((j) => `${j.data.vmName} ${j.data.reason}`)).toEqual([]);
      expect((await p.provider.list(p.group)).length).toBe(2);
    }
  }, 150_000);

  it('each still terminates a leak of its own, and only its own pass does', async () => {
    const [a, b] = pools;
    const leak = await a!.provider.spawn({ group: a!.group, spawnId: 'leak' });
    await waitFor(async () => !(await a!.provider.list(a!.group)).some((m) => m.name === leak.name), 60_000, 'the leak terminated', 250);
    const jobs = await a!.vmm.queue(QueueNames.TERMINATE).getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
    expect(jobs.map((j) => `${j.data.vmName} ${j.data.reason}`)).toEqual([`${leak.name} orphan`]);
    expect(await b!.vmm.queue(QueueNames.TERMINATE).getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized'])).toEqual([]);
    // Its record goes last, when the terminate finishes (the list stops showing it before that).
    await waitFor(async () => !existsSync(join(a!.provider.stateDir, 'vms', `${leak.name}.json`)) || null, 30_000, 'the leak record removed', 100);
    for (const p of pools) expect((await readyNames(p.vmm)).length).toBe(2);
  }, 90_000);
});
