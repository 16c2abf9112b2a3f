import { randomInt } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createHealthCheck } from '../../src/health/index.js';
import { createLogger } from '../../src/logger.js';
import { poolIdFromPrefix, poolIdOf } from '../../src/pool/poolId.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { createProvider } from '../../src/providers/index.js';
import type { LocalProvider } from '../../src/providers/local.js';
import type { ProviderGroup } from '../../src/providers/types.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { startProcessTypes } from '../../src/runtime/boot.js';
import { SPAWN_QUEUE, addSpawnJob } from '../../queues/spawn.js';
import { waitFor } from '../helpers/processes.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// The pool's identity: pool_id or derived from the prefix, given to every hook as VMPOOL_POOL_ID,
// and the local provider's state kept per pool id.
const logger = createLogger('test');
const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-poolid-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pool id', () => {
  it('is derived from the prefix without hash-tag braces, or taken from pool_id', () => {
    expect(poolIdFromPrefix('vmpool')).toBe('vmpool');
    expect(poolIdFromPrefix('{ci}')).toBe('ci');
    expect(poolIdFromPrefix('staging.{copr}')).toBe('staging.copr');
    expect(poolIdFromPrefix('..x')).toBe('x');
    expect(poolIdFromPrefix('{}')).toBe('vmpool');
    expect(poolIdOf({ pool_id: 'prod-builders' }, 'vmpool')).toBe('prod-builders');
    expect(poolIdOf({}, 'staging')).toBe('staging');
  });

  it('pool_id is optional, and a bad one is refused naming the key', () => {
    expect('pool_id' in parseConfig({}, {})).toBe(false);
    expect(parseConfig({ pool_id: 'prod.builders_1' }, {}).pool_id).toBe('prod.builders_1');
    expect(() => parseConfig({ pool_id: 'a b' }, {})).toThrow(/pool_id: got "a b", expected a letter or digit/);
    expect(() => parseConfig({ pool_id: '../x' }, {})).toThrow(/pool_id/);
  });

  it('is the VmManager\'s poolId', async () => {
    const redis = connect();
    const a = new VmManager({}, { redis, prefix: 'vmpool-test-{poolid}' });
    const b = new VmManager({ pool_id: 'given' }, { redis, prefix: 'vmpool-test-poolid' });
    expect([a.poolId, b.poolId]).toEqual(['vmpool-test-poolid', 'given']);
    await a.close();
    await b.close();
    await redis.quit();
  });
});

describe('VMPOOL_POOL_ID', () => {
  it('reaches the spawn, terminate, list and check hooks', async () => {
    const seen = join(dir, 'seen');
    const hook = (name: string, out = '') => {
      const path = join(dir, `${name}.sh`);
      writeFileSync(path, `#!/bin/sh\necho "${name} $VMPOOL_POOL_ID" >> "${seen}"\n${out}\n`);
      chmodSync(path, 0o755);
      return path;
    };
    const config = parseConfig({
      groups: [
        {
          name: 'cloud',
          provider: {
            type: 'command',
            spawn_cmd: [hook('spawn', `echo '{"name":"m-1","ip":"192.0.2.1"}'`)],
            terminate_cmd: [hook('terminate')],
            list_cmd: [hook('list', 'echo "m-1 192.0.2.1 - $VMPOOL_POOL_ID"')],
          },
          check: { type: 'command', cmd: [hook('check')] },
        },
      ],
    }, {});
    const group: ProviderGroup = { index: 0, config: config.groups[0]!, poolId: 'ci-pool' };
    const provider = createProvider(group, { logger });
    await provider.spawn({ group, spawnId: 's-1' });
    expect(await provider.list!(group)).toEqual([{ name: 'm-1', ip: '192.0.2.1', createdAt: null, pool: 'ci-pool' }]);
    await provider.terminate({ group, vmName: 'm-1', vmIp: '192.0.2.1' });
    await createHealthCheck(group, { logger }).check({ group, vmName: 'm-1', vmIp: '192.0.2.1' }, { timeoutMs: 5000 });
    // Without a pool id (a provider made by hand), the variable is there and empty.
    await provider.terminate({ group: { index: 0, config: config.groups[0]! }, vmName: 'm-1', vmIp: null });
    expect(readFileSync(seen, 'utf8').trim().split('\n')).toEqual(['spawn ci-pool', 'list ci-pool', 'terminate ci-pool', 'check ci-pool', 'terminate']);
  });
});

describe('VMPOOL_POOL_ID in the worker runtime', () => {
  it('reaches the hooks of spawn, health and terminate jobs, whoever builds the group', async () => {
    const seen = join(dir, 'runtime-seen');
    const hook = (name: string, out = '') => {
      const path = join(dir, `rt-${name}.sh`);
      writeFileSync(path, `#!/bin/sh\necho "${name} $VMPOOL_POOL_ID" >> "${seen}"\n${out}\n`);
      chmodSync(path, 0o755);
      return path;
    };
    const prefix = uniquePrefix('poolid-rt');
    const config = parseConfig({
      pool_id: 'rt-pool',
      groups: [
        {
          name: 'cloud',
          provider: { type: 'command', spawn_cmd: [hook('spawn', `echo '{"name":"rt-1","ip":"192.0.2.7"}'`)], terminate_cmd: [hook('terminate')] },
          check: { type: 'command', cmd: [hook('check')] },
        },
      ],
    }, {});
    const redis = connect();
    const vmm = new VmManager(config, { redis, prefix });
    const running = await startProcessTypes(processTypeSpecs, ['spawn', 'health', 'terminate'], config, { prefix, logger });
    try {
      await vmm.registerSpawn('cloud', 'rt-s1');
      await addSpawnJob(vmm.queue(SPAWN_QUEUE), { group: 'cloud', spawnId: 'rt-s1' });
      await waitFor(async () => (await vmm.getAllVmRecords()).some((v) => v.vmName === 'rt-1'), 20_000, 'the spawned VM in the pool');
      await vmm.startVmTermination('rt-1', undefined, 'operator');
      await waitFor(() => readFileSync(seen, 'utf8').includes('terminate'), 20_000, 'terminate hook ran');
      const lines = readFileSync(seen, 'utf8').trim().split('\n');
      expect(lines).toContain('spawn rt-pool');
      expect(lines).toContain('terminate rt-pool');
      expect(lines.every((l) => l.endsWith(' rt-pool'))).toBe(true);
    } finally {
      await running.stop(5_000);
      await deleteKeysWithPrefix(redis, prefix);
      await vmm.close();
      await redis.quit();
    }
  }, 60_000);
});

describe('local provider per pool', () => {
  it('keeps each pool\'s VMs in its own directory, with a shared client key and address claims', async () => {
    const stateDir = join(dir, 'local');
    const config = parseConfig({ groups: [{ name: 'default', provider: { type: 'local', state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000) } }] }, {});
    const groups: ProviderGroup[] = ['pool-a', 'pool-b'].map((poolId) => ({ index: 0, config: config.groups[0]!, poolId }));
    const providers = groups.map((g) => createProvider(g, { logger }) as LocalProvider);
    try {
      const machines = await Promise.all(providers.map((p, i) => p.spawn({ group: groups[i]!, spawnId: `s-${i}` })));
      expect(machines[0]!.ip).not.toBe(machines[1]!.ip);
      for (const [i, p] of providers.entries()) {
        expect(p.stateDir).toBe(join(stateDir, 'pools', groups[i]!.poolId!));
        expect(await p.list(groups[i]!)).toEqual([{ name: machines[i]!.name, ip: machines[i]!.ip, createdAt: expect.any(Number), pool: groups[i]!.poolId }]);
        const check = await createHealthCheck(groups[i]!, { logger, provider: p }).check({ group: groups[i]!, vmName: machines[i]!.name, vmIp: machines[i]!.ip }, { timeoutMs: 10_000 });
        expect(check.ok).toBe(true);
      }
    } finally {
      for (const [i, p] of providers.entries()) for (const m of await p.list(groups[i]!)) await p.terminate({ group: groups[i]!, vmName: m.name, vmIp: m.ip ?? null });
    }
  }, 60_000);

  it('still lists (untagged), checks and terminates a VM an older build started in state_dir itself', async () => {
    const stateDir = join(dir, 'legacy');
    const config = parseConfig({ groups: [{ name: 'default', provider: { type: 'local', state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000) } }] }, {});
    const legacyGroup: ProviderGroup = { index: 0, config: config.groups[0]! };
    const pooled: ProviderGroup = { ...legacyGroup, poolId: 'pool-a' };
    // A provider without a pool id keeps the layout of builds before pool ids.
    const legacy = createProvider(legacyGroup, { logger }) as LocalProvider;
    const current = createProvider(pooled, { logger }) as LocalProvider;
    const old = await legacy.spawn({ group: legacyGroup, spawnId: 'old' });
    try {
      expect(readFileSync(join(stateDir, 'vms', `${old.name}.json`), 'utf8')).toContain('"pool":""');
      expect(await current.list(pooled)).toEqual([{ name: old.name, ip: old.ip, createdAt: expect.any(Number) }]);
      const check = await createHealthCheck(pooled, { logger, provider: current }).check({ group: pooled, vmName: old.name, vmIp: old.ip }, { timeoutMs: 10_000 });
      expect(check.ok).toBe(true);
      await current.terminate({ group: pooled, vmName: old.name, vmIp: old.ip });
      expect(await legacy.list(legacyGroup)).toEqual([]);
    } finally {
      await legacy.terminate({ group: legacyGroup, vmName: old.name, vmIp: old.ip });
    }
  }, 60_000);
});
