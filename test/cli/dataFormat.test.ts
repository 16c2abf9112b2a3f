import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { DATA_FORMAT_VERSION } from '../../src/pool/dataFormat.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { runVmpoolCli, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

// `vmpool` on a pool of another data format (src/pool/dataFormat.ts): the commands that change
// the pool refuse, naming the version, and change nothing; the reading ones still work.
const prefix = uniquePrefix('cli-dataformat');
const redis = connect();
const input = { redis: { url: REDIS_URL }, groups: [{ name: 'base', archs: ['x86_64'], max_vm_total: 2 }] };
const configFile = writeConfigFile(input);
const vmm = new VmManager(parseConfig(input, {}), { redis, prefix });
const keys = poolKeys(prefix);
const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, VMPOOL_PREFIX: prefix, VMPOOL_CONFIG: configFile, LOG_LEVEL: 'warn' };
const cli = (...args: string[]) => runVmpoolCli(args, env);

afterAll(async () => {
  await vmm.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

describe('vmpool and the data format', { timeout: 60_000 }, () => {
  it('on a newer pool, a change is refused with the version it needs, and a read works', async () => {
    await vmm.markServerStart();
    await vmm.addVmToPool('10.80.0.1', 'vm-1', 0);
    await vmm.startVmCheck('vm-1');
    await vmm.recordHealthCheckResult('vm-1', true);
    await redis.hset(keys.dataFormat, 'version', String(DATA_FORMAT_VERSION + 1));

    const hold = await cli('hold', 'vm-1', '--reason', 'look');
    expect(hold.code, hold.stderr).toBe(1);
    expect(hold.stderr).toContain(`the pool's data format is version ${DATA_FORMAT_VERSION + 1}, and this vmpool knows versions up to ${DATA_FORMAT_VERSION}`);
    expect(hold.stderr).toContain('this command changes the pool, so it refused');
    expect(await vmm.getVmRecord('vm-1')).toMatchObject({ state: 'ready', heldBy: null });
    const drain = await cli('drain', 'base');
    expect(drain.code, drain.stderr).toBe(1);

    const list = await cli('list', '--json');
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toContain('vm-1');
    expect((await cli('info')).code).toBe(0);

    // The same release's data format: the change goes through.
    await redis.hset(keys.dataFormat, 'version', String(DATA_FORMAT_VERSION));
    const held = await cli('hold', 'vm-1', '--reason', 'look');
    expect(held.code, held.stderr).toBe(0);
    expect((await vmm.getVmRecord('vm-1')).heldBy).not.toBeNull();
  });

  // A pool older than this release exists only once a release has migrations (version 2 on).
  it.skipIf(DATA_FORMAT_VERSION < 2)('on an older pool (no process of this release migrated it yet), a change is refused', async () => {
    await redis.hset(keys.dataFormat, 'version', String(DATA_FORMAT_VERSION - 1));
    const unhold = await cli('unhold', 'vm-1');
    expect(unhold.code, unhold.stderr).toBe(1);
    expect(unhold.stderr).toContain(`the pool's data format is version ${DATA_FORMAT_VERSION - 1}, and this vmpool writes version ${DATA_FORMAT_VERSION}`);
    expect((await vmm.getVmRecord('vm-1')).heldBy).not.toBeNull();
  });
});
