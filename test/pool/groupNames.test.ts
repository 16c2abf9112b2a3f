import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import { PoolAccess } from '../../src/pool/context.js';
import { DATA_FORMAT_VERSION, DataFormat } from '../../src/pool/dataFormat.js';
import { moveGroupReferences } from '../../src/pool/groupNames.js';
import { acquireWaiterMember, VmStates } from '../../src/pool/types.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { runCli } from '../../src/cli/program.js';
import { runEntry, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// Groups identified by name: the migration of a version-1 pool (keys and references by group
// index) to data format 2, also killed in the middle in a real process, and the key moves it is
// made of. The version-1 pool is built with this code under the names, then every reference is
// moved to the indexes (and checked to name no group any more): the layout a version-1 release wrote.
const base = uniquePrefix('groupnames');
const logger = createLogger('groupnames-test');
let redis: Redis;
let n = 0;
const used: string[] = [];
const prefixFor = () => {
  const prefix = `${base}-${++n}`;
  used.push(prefix);
  return prefix;
};
const T0 = 1_750_000_000_000;

const input: ConfigInput = {
  groups: [
    { name: 'alpha', archs: ['x86_64'], max_vm_per_user: 3, breaker: { failures: 2, backoff: 600, max_backoff: 600 } },
    { name: 'beta', archs: ['aarch64'], max_vm_per_user: 3 },
  ],
};
const GROUPS = ['alpha', 'beta'];

beforeAll(() => {
  redis = connect();
});
afterAll(async () => {
  for (const prefix of used) await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

/** Every key of the pool and its content, in a comparable form (the audit trail, the data format, locks and the group registry left out). */
async function dump(prefix: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const skip = /:(audit_events|data_format|migration_lock|reconcile_lock|legacy_group_names|groups)$/;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    for (const key of keys) {
      if (skip.test(key)) continue;
      const type = await redis.type(key);
      // A waiting request's info is JSON that Lua re-encodes in its own key order.
      if (key.endsWith(':waiter_info')) out[key] = Object.fromEntries(Object.entries(await redis.hgetall(key)).map(([f, v]) => [f, JSON.parse(v) as unknown]));
      else if (type === 'hash') out[key] = await redis.hgetall(key);
      else if (type === 'set') out[key] = (await redis.smembers(key)).sort();
      else if (type === 'zset') out[key] = await redis.zrange(key, '0', '-1', 'WITHSCORES');
      else if (type === 'list') out[key] = await redis.lrange(key, 0, -1);
      else if (type === 'string') out[key] = await redis.get(key);
      else out[key] = type;
    }
  } while (cursor !== '0');
  return out;
}

/**
 * A pool with something of every kind in both groups: a clean ready VM, a leased VM, a dirty VM
 * bound to an owner, a request waiting in the line, a spawn in flight with its record, an open
 * breaker, a drained group, history, arrivals, a metric, a swept mark and group info.
 */
async function buildPool(prefix: string): Promise<{ vmm: VmManager; aliceLease: string }> {
  const clock = { now: T0 };
  const vmm = new VmManager(parseConfig(input, {}), { redis, prefix, logger, clock: () => clock.now });
  await vmm.markServerStart();
  clock.now += 1000;
  const ready = async (name: string, ip: string, group: string) => {
    await vmm.addVmToPool(ip, name, group);
    await vmm.startVmCheck(name);
    await vmm.recordHealthCheckResult(name, true);
  };
  await ready('a1', '10.9.0.1', 'alpha');
  await ready('b1', '10.9.0.2', 'beta');
  await ready('b2', '10.9.0.3', 'beta');
  clock.now += 1000;
  const alice = await vmm.tryAcquireVm({ groups: ['alpha'], owner: 'alice', sandbox: 'alice/p', workerId: 'w', taskId: 't-alice' });
  if (alice.status !== 'acquired') throw new Error(`alice: ${alice.status}`);
  const bob = await vmm.tryAcquireVm({ groups: ['beta'], owner: 'bob', sandbox: 'bob/p', workerId: 'w', taskId: 't-bob' });
  if (bob.status !== 'acquired') throw new Error(`bob: ${bob.status}`);
  await vmm.releaseVm(bob.vm.vmName, bob.leaseId);
  const waiter = { member: acquireWaiterMember(clock.now, 'acquire-carol'), priority: 0, deadline: clock.now + 3_600_000, jobId: 'acquire-carol' };
  const carol = await vmm.tryAcquireVm({ groups: ['alpha', 'beta'], owner: 'carol', sandbox: 'carol/p', workerId: 'w' }, waiter);
  // b1 or b2 is free for carol in beta unless the line keeps it: either way something waits or is held.
  if (carol.status === 'acquired') await vmm.tryAcquireVm({ groups: ['alpha'], owner: 'dave', sandbox: 'dave/p', workerId: 'w' }, { ...waiter, member: acquireWaiterMember(clock.now, 'acquire-dave'), jobId: 'acquire-dave' });
  await vmm.registerSpawn('beta', 'g1-1-abc');
  await vmm.startSpawnAttempt('beta', 'g1-1-abc');
  await vmm.recordSpawnOutcome('alpha', 'failed', 'quota', 'quota exceeded');
  await vmm.recordSpawnOutcome('alpha', 'failed', 'quota', 'quota exceeded');
  await vmm.drainGroup('beta');
  await vmm.writeVmPoolInfo('alpha', 'last_vm_spawn_start', clock.now);
  await vmm.markLossSwept('alpha', 'gen-1');
  const counts = Object.fromEntries(Object.values(VmStates).map((s) => [s, 1]));
  await vmm.appendHistory(new Map(GROUPS.map((g) => [g, { t: clock.now, counts: counts as never, waiting: 1, acquireP95: null }])), { t: clock.now, buckets: [] }, 10);
  const keys = new PoolAccess(redis, prefix).keys;
  await redis.hset(keys.metric('spawns'), '["alpha","ok",""]', '3', '["beta","failed","quota"]', '2');
  await redis.hset(keys.metric('spawn_duration'), '["alpha","ok"]\tsum', '12.5', '["alpha","ok"]\tcount', '3');
  return { vmm, aliceLease: alice.leaseId };
}

/** Moves the pool back to the version-1 layout: every reference by index, the data format at 1. */
async function toVersion1(prefix: string): Promise<void> {
  const pool = new PoolAccess(redis, prefix);
  await moveGroupReferences(pool, new Map(GROUPS.map((g, i) => [g, String(i)])));
  // Version 1 kept a waiting request's groups as numbers.
  for (const [member, raw] of Object.entries(await redis.hgetall(pool.keys.waiterInfo))) {
    const info = JSON.parse(raw) as { groups: unknown[] };
    await redis.hset(pool.keys.waiterInfo, member, JSON.stringify({ ...info, groups: info.groups.map(Number) }));
  }
  await redis.del(pool.keys.groupRegistry, pool.keys.legacyGroupNames);
  await redis.hset(pool.keys.dataFormat, 'version', 1);
}

function runMigrate(prefix: string, killAfterSave: number): ReturnType<typeof runEntry> {
  return runEntry('test/fixtures/dataFormat/migrateGroups.ts', { PREFIX: prefix, GROUPS: GROUPS.join(','), KILL_AFTER_SAVE: String(killAfterSave) });
}

describe('groups by name: the migration to data format 2', { timeout: 120_000 }, () => {
  it('the version-1 fixture names no group anywhere (keys, records, waiters, metrics): only indexes', async () => {
    const prefix = prefixFor();
    const { vmm } = await buildPool(prefix);
    await vmm.close();
    await toVersion1(prefix);
    const text = JSON.stringify(await dump(prefix));
    expect(text).not.toMatch(/alpha|beta/);
    expect(text).toContain('group:1:ready_dirty');
    expect(Object.keys(await redis.hgetall(new PoolAccess(redis, prefix).keys.metric('spawns'))).sort()).toEqual(['["0","ok",""]', '["1","failed","quota"]']);
  });

  it('a migration killed in the middle (real process, SIGKILL) is completed by the next process: every key and record as before, by name', async () => {
    for (const killAfter of [1, 3]) {
      const prefix = prefixFor();
      const { vmm, aliceLease } = await buildPool(prefix);
      const before = await dump(prefix);
      await vmm.close();
      await toVersion1(prefix);

      const killed = await runMigrate(prefix, killAfter);
      expect(killed.signal, killed.output).toBe('SIGKILL');
      const keys = new PoolAccess(redis, prefix).keys;
      expect(await redis.hget(keys.dataFormat, 'version')).toBe('1');
      expect(await redis.hget(keys.dataFormat, 'migrating')).toBe(String(DATA_FORMAT_VERSION));
      const progress = await redis.hget(keys.dataFormat, 'progress');
      expect(progress?.split(',')).toHaveLength(killAfter);

      // The next process, with the list in the other order: the map recorded by the first one wins.
      const next = new DataFormat({ redis, prefix, logger, groups: [...GROUPS].reverse(), lockTtlMs: 1_000, pollMs: 100, quiesceMs: 0 });
      expect(await next.ensure()).toMatchObject({ version: DATA_FORMAT_VERSION });
      expect(await redis.hgetall(keys.legacyGroupNames)).toEqual({ 0: 'alpha', 1: 'beta' });
      expect((await redis.smembers(keys.groupRegistry)).sort()).toEqual(GROUPS);
      expect(await dump(prefix)).toEqual(before);

      // The pool works on: alice's lease renews, bob's dirty VM goes back to bob, beta's clean VM to an aarch64 request.
      const after = new VmManager(parseConfig(input, {}), { redis, prefix, logger, clock: () => T0 + 5000 });
      try {
        const a1 = await after.getVmByName('a1');
        expect(a1).toMatchObject({ group: 'alpha', state: 'in_use', owner: 'alice' });
        expect(await after.renewLease('a1', aliceLease)).toBeGreaterThan(T0 + 5000);
        const again = await after.tryAcquireVm({ groups: ['beta'], owner: 'bob', sandbox: 'bob/p', workerId: 'w', taskId: 't-bob-2' });
        expect(again).toMatchObject({ status: 'acquired', vm: { group: 'beta', owner: 'bob' } });
        expect(await after.reader.breaker('alpha')).toMatchObject({ open: true, errorClass: 'quota' });
        expect(await after.drainedSince('beta')).not.toBeNull();
        expect((await after.getSpawnsInFlight('beta')).map((s) => s.spawnId)).toEqual(['g1-1-abc']);
        expect(await after.reader.spawnMachine('g1-1-abc')).toBeDefined();
        expect(await redis.hget(keys.spawnRecord('g1-1-abc'), 'group')).toBe('beta');
      } finally {
        await after.close();
      }
    }
  });

  it('a job payload or audit event of a version-1 process (a group index) is read through the recorded map, not the reading config', async () => {
    const prefix = prefixFor();
    const { vmm } = await buildPool(prefix);
    await vmm.close();
    await toVersion1(prefix);
    await new DataFormat({ redis, prefix, logger, groups: GROUPS }).ensure();
    const reversed = new VmManager(parseConfig({ groups: [...input.groups!].reverse() }, {}), { redis, prefix, logger });
    try {
      expect(await reversed.payloadGroup(0)).toBe('alpha');
      expect(await reversed.payloadGroup('beta')).toBe('beta');
      await expect(reversed.payloadGroup(7)).rejects.toThrow(/group index 7/);
      // An audit event of a version-1 process names its group by index: read by the recorded name.
      const keys = new PoolAccess(redis, prefix).keys;
      await redis.xadd(keys.auditEvents, '*', 'event', 'spawned', 'vm', 'old-1', 'group', '1');
      expect((await reversed.reader.auditEvents({ vm: 'old-1' })).events.map((e) => e.group)).toEqual(['beta']);
      // The public API's index is this config's: 0 is beta here.
      expect(reversed.resolveGroup(0)).toBe('beta');
      expect(reversed.resolveGroup('alpha')).toBe('alpha');
    } finally {
      await reversed.close();
    }
  });
});

describe('vmpool group rename', { timeout: 60_000 }, () => {
  it('moves a group with its VMs, lease, waiting request, spawn, breaker and metrics to the new name; refuses a name in use or invalid', async () => {
    const prefix = prefixFor();
    const { vmm, aliceLease } = await buildPool(prefix);
    await vmm.registerConfigGroups();
    const before = await dump(prefix);
    try {
      const renamed = await vmm.renameGroup('alpha', 'gamma');
      expect(renamed).toEqual({ from: 'alpha', to: 'gamma', vms: 1 });
      const moved = JSON.parse(JSON.stringify(before).replace(/alpha/g, 'gamma')) as Record<string, unknown>;
      expect(await dump(prefix)).toEqual(moved);
      await expect(vmm.renameGroup('gamma', 'beta')).rejects.toThrow(/has a group "beta" already/);
      await expect(vmm.renameGroup('gamma', 'no:colon')).rejects.toThrow(/invalid group name/);
      await expect(vmm.renameGroup('nothing', 'other')).rejects.toThrow(/no group "nothing"/);
    } finally {
      await vmm.close();
    }

    // By the CLI, with a config that names the new group: beta -> delta.
    const keys = new PoolAccess(redis, prefix).keys;
    const file = writeConfigFile({ groups: [{ ...input.groups![0], name: 'gamma' }, input.groups![1]] });
    let out = '';
    const io = { out: (t: string) => (out += t), err: (t: string) => (out += t), env: { REDIS_URL, VMPOOL_PREFIX: prefix }, now: () => Date.now() };
    expect(await runCli(['--config', file, 'group', 'rename', 'beta', 'delta'], io), out).toBe(0);
    expect(out).toContain('group beta renamed to delta with its 2 VMs');
    expect((await redis.smembers(keys.groupRegistry)).sort()).toEqual(['delta', 'gamma']);

    // The pool runs on under the new names.
    const after = new VmManager(parseConfig({ groups: [{ ...input.groups![0], name: 'gamma' }, { ...input.groups![1], name: 'delta' }] }, {}), { redis, prefix, logger, clock: () => T0 + 5000 });
    try {
      expect(await after.getVmByName('a1')).toMatchObject({ group: 'gamma', state: 'in_use', owner: 'alice' });
      expect(await after.renewLease('a1', aliceLease)).toBeGreaterThan(T0 + 5000);
      expect((await after.getAllVmsInGroup('delta')).map((v) => v.vmName).sort()).toEqual(['b1', 'b2']);
      expect(await after.reader.breaker('gamma')).toMatchObject({ open: true });
      expect((await after.getSpawnsInFlight('delta')).map((s) => s.spawnId)).toEqual(['g1-1-abc']);
      expect(await redis.hget(keys.metric('spawns'), '["delta","failed","quota"]')).toBe('2');
    } finally {
      await after.close();
    }
  });
});

describe('moveGroupKeys', () => {
  it('is safe to repeat, and merges a key written again under the old name after a move', async () => {
    const prefix = prefixFor();
    const pool = new PoolAccess(redis, prefix);
    const k = pool.keys;
    await redis.sadd(k.coming('0'), 'x1', 'x2');
    await redis.zadd(k.readyClean('0'), 5, 'r1');
    await redis.hset(k.ownerVms('0'), 'alice', '1');
    await redis.set(k.lineTurn('0'), '7');
    await redis.rpush(k.history('0'), 'h2', 'h1');
    const tails = ['coming', 'ready_clean', 'owner_vms', 'line_turn', 'history', 'missing'];
    expect(await pool.scripts.moveGroupKeys('0', 'alpha', tails)).toBe(5);
    expect(await pool.scripts.moveGroupKeys('0', 'alpha', tails)).toBe(0);
    // A process of the old layout writes the old keys again.
    await redis.sadd(k.coming('0'), 'x3');
    await redis.zadd(k.readyClean('0'), 9, 'r1', 1, 'r2');
    await redis.hset(k.ownerVms('0'), 'alice', '5', 'bob', '2');
    await redis.set(k.lineTurn('0'), '3');
    await redis.rpush(k.history('0'), 'h0');
    expect(await pool.scripts.moveGroupKeys('0', 'alpha', tails)).toBe(5);
    expect((await redis.smembers(k.coming('alpha'))).sort()).toEqual(['x1', 'x2', 'x3']);
    expect(await redis.zrange(k.readyClean('alpha'), '0', '-1', 'WITHSCORES')).toEqual(['r2', '1', 'r1', '9']);
    expect(await redis.hgetall(k.ownerVms('alpha'))).toEqual({ alice: '1', bob: '2' });
    expect(await redis.get(k.lineTurn('alpha'))).toBe('7');
    expect(await redis.lrange(k.history('alpha'), 0, -1)).toEqual(['h2', 'h1', 'h0']);
    expect(await redis.exists(k.coming('0'), k.readyClean('0'), k.ownerVms('0'), k.lineTurn('0'), k.history('0'))).toBe(0);
  });
});
