import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { startProcessTypes, type RunningProcess } from '../../src/runtime/boot.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { runVmpoolCli, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// `vmpool acquire` with no --arch, --group or --tag, as a real process on the real Redis: a pool of
// one group has nothing to choose from, so the CLI takes that group; with several it asks.
const prefix = uniquePrefix('cli-only-group');
const oneGroup = { redis: { url: REDIS_URL }, groups: [{ name: 'solo', archs: ['x86_64'] }], web: { port: 0 } };
const twoGroups = { ...oneGroup, groups: [...oneGroup.groups, { name: 'arm', archs: ['aarch64'] }] };
const env = { ...process.env, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent', VMPOOL_ACQUIRE_GRACE_MS: '1000' };

const vmpool = (configFile: string, ...args: string[]) => runVmpoolCli(['--config', configFile, ...args], env);

describe('vmpool acquire without --arch, --group or --tag', { timeout: 60_000 }, () => {
  const redis = connect();
  const vmm = new VmManager(parseConfig(oneGroup, {}), { redis, prefix });
  let acquireWorker: RunningProcess;

  beforeAll(async () => {
    await vmm.markServerStart();
    const unused = () => {
      throw new Error('unused');
    };
    acquireWorker = await startProcessTypes(processTypeSpecs, ['acquire'], parseConfig(oneGroup, {}), { prefix, providerFactory: unused, healthCheckFactory: unused });
  });
  afterAll(async () => {
    await acquireWorker?.stop(5_000);
    await deleteKeysWithPrefix(redis, prefix);
    await vmm.close();
    await redis.quit();
  });

  it('takes the only group of the pool', async () => {
    await vmm.addVmToPool('10.6.0.1', 'solo1', 'solo');
    await vmm.startVmCheck('solo1');
    await vmm.recordHealthCheckResult('solo1', true);
    const got = await vmpool(writeConfigFile(oneGroup), 'acquire', '--owner', 'alice', '--sandbox', 's', '--timeout', '5');
    expect(got.code, got.stderr).toBe(0);
    const vars = Object.fromEntries(got.stdout.trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
    expect(vars).toMatchObject({ VM_NAME: 'solo1', VM_IP: '10.6.0.1', GROUP: 'solo' });
    expect((await vmm.getAllVmRecords()).find((v) => v.vmName === 'solo1')).toMatchObject({ state: 'in_use', owner: 'alice', leaseId: vars.LEASE_ID });
  });

  it('with several groups, exits 2 naming them', async () => {
    const res = await vmpool(writeConfigFile(twoGroups), 'acquire', '--owner', 'alice', '--sandbox', 's', '--timeout', '1');
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('give --arch, --group or --tag (groups: solo, arm)');
  });
});
