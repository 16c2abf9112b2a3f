import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// registerSpawn re-checks resource limits against the pool as it is in Redis (registerSpawn-1.lua):
// a replica deciding from an older snapshot cannot pass a group's or an account's limit.
const input: ConfigInput = {
  redis: { url: REDIS_URL },
  accounts: { acct: { max_resources: { cores: 10 } } },
  groups: [
    { name: 'a', account: 'acct', resources: { cores: 4 } },
    { name: 'b', account: 'acct', resources: { cores: 2 }, max_resources: { instances: 2 } },
    { name: 'free' },
  ],
};

describe('registerSpawn with resource limits (real Redis)', () => {
  const prefix = uniquePrefix('quota-register');
  let redis: Redis;
  let vmm: VmManager;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix });
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it("counts VMs and spawns of every group of the account, and refuses the spawn that would pass a limit", async () => {
    await vmm.addVmToPool('10.9.0.1', 'a1', 'a'); // 4 cores
    expect(await vmm.registerSpawn('a', 's-a2')).toBeNull(); // 8
    expect(await vmm.registerSpawn('b', 's-b1')).toBeNull(); // 10
    // One more core of either group passes the account's 10.
    expect(await vmm.registerSpawn('b', 's-b2')).toEqual({ limit: 'account', unit: 'cores' });
    expect(await vmm.registerSpawn('a', 's-a3')).toEqual({ limit: 'account', unit: 'cores' });
    expect((await vmm.getSpawnsInFlight('a')).map((s) => s.spawnId)).toEqual(['s-a2']);
    expect((await vmm.getSpawnsInFlight('b')).map((s) => s.spawnId)).toEqual(['s-b1']);
    // A group without limits is not checked.
    expect(await vmm.registerSpawn('free', 's-f1')).toBeNull();
  });

  it('a terminating VM no longer counts, and the limits given by the caller (the cloud quota) win over the configured ones', async () => {
    await vmm.startVmTermination('a1', 'got_ip', 'operator');
    // 8 cores in use now: room for 2 more.
    expect(await vmm.registerSpawn('b', 's-b2')).toBeNull();
    // The group's own limit: 2 instances of b.
    expect(await vmm.registerSpawn('b', 's-b3')).toEqual({ limit: 'group', unit: 'instances' });
    // The cloud allows only 10 cores less 4 foreign ones.
    expect(await vmm.registerSpawn('a', 's-a4', { cores: 6 })).toEqual({ limit: 'account', unit: 'cores' });
  });
});

describe('registerSpawn and a group removed from the config (real Redis)', () => {
  // `old` named the account; the operator removed it from the config. Its VMs drain, and until they
  // are gone they still use the account: a spawn of `new` must not pass the account's limit.
  const prefix = uniquePrefix('quota-removed');
  const accounts = { acct: { max_resources: { cores: 12 } } };
  const oldGroup = { name: 'old', account: 'acct', resources: { cores: 4 } };
  const newGroup = { name: 'new', account: 'acct', resources: { cores: 4 } };
  let redis: Redis;
  const managers: VmManager[] = [];

  beforeAll(() => {
    redis = connect();
  });
  afterAll(async () => {
    await Promise.all(managers.map((m) => m.close()));
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it("counts the removed group's VMs (its published config's account and resources) in the account's limit", async () => {
    const before = new VmManager({ redis: { url: REDIS_URL }, accounts, groups: [oldGroup, newGroup] }, { redis, prefix });
    managers.push(before);
    // Reconcile registers and publishes the config's groups every cycle.
    await before.registerConfigGroups();
    await before.addVmToPool('10.9.1.1', 'old1', 'old');
    await before.addVmToPool('10.9.1.2', 'old2', 'old');

    const after = new VmManager({ redis: { url: REDIS_URL }, accounts, groups: [newGroup] }, { redis, prefix });
    managers.push(after);
    expect([...(await after.refreshRemovedGroups()).keys()]).toEqual(['old']);
    // old's 8 cores + 4 = 12: one VM of new fits, a second does not.
    expect(await after.registerSpawn('new', 's-n1')).toBeNull();
    expect(await after.registerSpawn('new', 's-n2')).toEqual({ limit: 'account', unit: 'cores' });
    expect((await after.getSpawnsInFlight('new')).map((s) => s.spawnId)).toEqual(['s-n1']);

    // old's VMs terminate as it drains: their cores are the account's again.
    await after.startVmTermination('old1', 'got_ip', 'surplus');
    expect(await after.registerSpawn('new', 's-n2')).toBeNull();
    expect(await after.registerSpawn('new', 's-n3')).toEqual({ limit: 'account', unit: 'cores' });
  });
});
