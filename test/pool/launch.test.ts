import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { launchFingerprint, parseConfig } from '../../src/config/index.js';
import { VmManager, launchOrphanedAfterMs } from '../../src/pool/vmManager.js';
import { connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

// The launch scripts on the real Redis: publishLaunch's rule between configs, the outdated sets that
// setVmState keeps, acquire preferring VMs of the current launch, and no reuse of an outdated VM.
const T0 = 1_750_000_000_000;
const S = 1000;
const group = (image: string, launchRevision = 0) => ({ name: 'g', image, launch_revision: launchRevision, max_vm_total: 10, max_vm_per_user: 10 });
const v1: ConfigInput = { groups: [group('fedora-41')] };
const v2: ConfigInput = { groups: [group('fedora-42')] };
const prefix = uniquePrefix('launch');
const keys = poolKeys(prefix);
const clock = { now: T0 };
let redis: Redis;
let old: VmManager;
let next: VmManager;
const fp1 = launchFingerprint(parseConfig(v1).groups[0]!);
const fp2 = launchFingerprint(parseConfig(v2).groups[0]!);

beforeAll(() => {
  redis = connect();
  old = new VmManager(v1, { redis, prefix, clock: () => clock.now });
  next = new VmManager(v2, { redis, prefix, clock: () => clock.now });
});

beforeEach(async () => {
  await deleteKeysWithPrefix(redis, prefix);
  clock.now = T0 - 60 * S;
  await old.markServerStart();
  clock.now = T0;
});

afterAll(async () => {
  await deleteKeysWithPrefix(redis, prefix);
  await old.close();
  await next.close();
  await redis.quit();
});

let spawnCount = 0;
/** A VM spawned by `vmm`'s config (with a spawn id, so it records that config's fingerprint), checked to ready. */
async function spawnedReady(vmm: VmManager, name: string): Promise<void> {
  const spawnId = `s${++spawnCount}`;
  await vmm.registerSpawn('g', spawnId);
  await vmm.addVmToPool(`10.9.0.${spawnCount % 250}`, name, 'g', { spawnId });
  expect(await vmm.startVmCheck(name)).toBe(true);
  expect((await vmm.recordHealthCheckResult(name, true)).outcome).toBe('ok');
}

const process1 = { startedAt: T0 - 10 * S, processId: 'host:1:a' };
const process2 = { startedAt: T0 + 5 * S, processId: 'host:2:b' };
const acquire = (vmm: VmManager, owner: string) => vmm.acquireVm({ groups: ['g'], owner, sandbox: `${owner}/p`, workerId: 'w' });

describe('publishLaunch', () => {
  it('publishes the first config, keeps it for the same fingerprint, and lets a later-started process move it forward', async () => {
    expect(await old.publishLaunch('g', process1)).toEqual({ status: 'published', revision: 1, changed: 0 });
    expect(await old.publishLaunch('g', process1)).toEqual({ status: 'current', revision: 1 });
    clock.now = T0 + 10 * S;
    expect(await next.publishLaunch('g', process2)).toMatchObject({ status: 'published', revision: 2 });
    // The v1 process started before v2 was published: it defers, and is listed as deferring.
    const superseded = await old.publishLaunch('g', process1);
    expect(superseded).toMatchObject({ status: 'superseded', fingerprint: fp2, revision: 2, publishedBy: 'host:2:b' });
    const [state] = await old.launchStates();
    expect(state!.published).toMatchObject({ fingerprint: fp2, revision: 2, launchRevision: 0 });
    expect(state!.deferring).toEqual([{ process: 'host:1:a', fingerprint: fp1 }]);
  });

  it('lets a higher launch_revision win whatever the start order, and never a lower one', async () => {
    const pinned = new VmManager({ groups: [group('fedora-41', 3)] }, { redis, prefix, clock: () => clock.now });
    try {
      expect((await pinned.publishLaunch('g', process1)).status).toBe('published');
      clock.now = T0 + 10 * S;
      // Started later, but with launch_revision 0 < 3.
      expect(await next.publishLaunch('g', { ...process2, startedAt: T0 + 20 * S })).toMatchObject({ status: 'superseded', launchRevision: 3 });
      const bumped = new VmManager({ groups: [group('fedora-42', 4)] }, { redis, prefix, clock: () => clock.now });
      expect((await bumped.publishLaunch('g', { ...process1, processId: 'host:3:c' })).status).toBe('published');
      expect((await pinned.publishLaunch('g', process1)).status).toBe('superseded');
      await bumped.close();
    } finally {
      await pinned.close();
    }
  });
});

describe('a superseded launch config', () => {
  it('never wins again by its start: a stale replica restarted after the rollout defers, and the group stays rolled', async () => {
    await old.publishLaunch('g', process1);
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    expect(await redis.hget(keys.launch('g'), 'superseded')).toBe(fp1);
    // The v1 replica crashes and its supervisor restarts it with the old config file.
    clock.now = T0 + 30 * S;
    const restarted = { startedAt: T0 + 25 * S, processId: 'host:1:restarted' };
    expect(await old.publishLaunch('g', restarted)).toMatchObject({ status: 'superseded', fingerprint: fp2, revision: 2 });
    expect(await next.publishLaunch('g', process2)).toEqual({ status: 'current', revision: 2 });
    const [state] = await old.launchStates();
    expect(state!.deferring).toEqual([{ process: 'host:1:restarted', fingerprint: fp1 }]);
  });

  it('keeps only the most recent superseded fingerprints, and a new one still wins by its start', async () => {
    const started = (n: number) => ({ startedAt: T0 + n * S, processId: `host:${n}:x` });
    for (let n = 1; n <= 20; n++) {
      clock.now = T0 + n * S + 1;
      const vmm = new VmManager({ groups: [group(`image-${n}`)] }, { redis, prefix, clock: () => clock.now });
      expect((await vmm.publishLaunch('g', started(n))).status).toBe('published');
      await vmm.close();
    }
    const kept = (await redis.hget(keys.launch('g'), 'superseded'))!.split(' ');
    expect(kept).toHaveLength(16);
    const fpOf = (n: number) => launchFingerprint(parseConfig({ groups: [group(`image-${n}`)] }).groups[0]!);
    expect(kept).toEqual(Array.from({ length: 16 }, (_, i) => fpOf(i + 4)));
  });
});

describe('VMs made before fingerprints', () => {
  it('are stamped with the first published fingerprint, and rolled out by the next change', async () => {
    await spawnedReady(old, 'vm-before');
    await redis.hdel(keys.vm('vm-before'), 'launch_fingerprint');
    expect((await old.getVmRecord('vm-before')).launchFingerprint).toBeNull();
    expect(await old.publishLaunch('g', process1)).toEqual({ status: 'published', revision: 1, changed: 1 });
    expect((await old.getVmRecord('vm-before')).launchFingerprint).toBe(fp1);
    expect(await redis.zrange(keys.readyClean('g'), 0, '-1')).toEqual(['vm-before']);
    // Later publications stamp nothing: a VM added by hand since keeps no fingerprint.
    await old.addVmToPool('10.9.1.2', 'by-hand-later', 'g');
    clock.now = T0 + 10 * S;
    expect(await next.publishLaunch('g', process2)).toMatchObject({ status: 'published', changed: 1 });
    expect(await redis.smembers(keys.outdated('g'))).toEqual(['vm-before']);
    expect((await old.getVmRecord('by-hand-later')).launchFingerprint).toBeNull();
  });
});

describe('an orphaned launch config', () => {
  it('is taken over once no process has confirmed it for launchOrphanedAfterMs, and not before', async () => {
    await old.publishLaunch('g', process1);
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    const orphanedAfter = launchOrphanedAfterMs(parseConfig(v1).vm_cycle_timeout);
    // The v2 process confirms it a while later, then stops.
    clock.now = T0 + 100 * S;
    expect((await next.publishLaunch('g', process2)).status).toBe('current');
    clock.now = T0 + 100 * S + orphanedAfter;
    expect((await old.publishLaunch('g', process1)).status).toBe('superseded');
    clock.now += 1;
    expect(await old.publishLaunch('g', process1)).toMatchObject({ status: 'published', revision: 3 });
  });
});

describe('a VM of an older launch', () => {
  it('records the fingerprint of the config that spawned it; one added by hand records none and is never outdated', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-old');
    await old.addVmToPool('10.9.1.1', 'by-hand', 0);
    expect((await old.getVmRecord('vm-old')).launchFingerprint).toBe(fp1);
    expect((await old.getVmRecord('by-hand')).launchFingerprint).toBeNull();
    clock.now = T0 + 10 * S;
    expect(await next.publishLaunch('g', process2)).toMatchObject({ status: 'published', changed: 1 });
    expect(await redis.smembers(keys.outdated('g'))).toEqual(['vm-old']);
  });

  it('still serves while no VM of the current launch is ready, and is skipped once one is', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-old');
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    expect(await redis.zrange(keys.readyOutdated('g'), 0, '-1')).toEqual(['vm-old']);
    expect(await redis.zcard(keys.readyClean('g'))).toBe(0);
    // Only an old one is ready: it serves.
    expect((await acquire(next, 'alice')).vmName).toBe('vm-old');
    await spawnedReady(old, 'vm-old-2');
    await spawnedReady(next, 'vm-new');
    // vm-old-2 was checked first (lower score), but a VM of the current launch is ready.
    expect((await acquire(next, 'bob')).vmName).toBe('vm-new');
    expect((await acquire(next, 'carol')).vmName).toBe('vm-old-2');
  });

  it('is not reused after its build: released, it is ready in no index and counts as outdated until retired', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-old');
    const vm = await acquire(old, 'alice');
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    // In use: untouched.
    expect((await next.getVmByName(vm.vmName)).state).toBe('in_use');
    expect(await next.releaseVm(vm.vmName)).toBe(true);
    expect((await next.getVmByName(vm.vmName)).state).toBe('ready');
    expect(await redis.zcard(keys.readyDirty('g', 'alice', 'alice/p'))).toBe(0);
    await expect(acquire(next, 'alice')).rejects.toThrow();
    expect(await redis.smembers(keys.outdated('g'))).toEqual(['vm-old']);
    expect(await next.startVmTermination('vm-old', 'ready', 'rollout')).toBe(true);
    expect(await redis.scard(keys.outdated('g'))).toBe(0);
  });

  it('spawned by an old spawn worker after the change is outdated at once and no coming supply', async () => {
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    await old.registerSpawn('g', 'late');
    await old.addVmToPool('10.9.2.1', 'late-old', 'g', { spawnId: 'late' });
    expect(await redis.sismember(keys.outdated('g'), 'late-old')).toBe(1);
    expect(await redis.scard(keys.coming('g'))).toBe(0);
  });

  it('is rolled out again by a rollback on purpose (the old image with a higher launch_revision is a new launch)', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-old');
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    expect(await redis.zcard(keys.readyOutdated('g'))).toBe(1);
    clock.now = T0 + 20 * S;
    const rolledBack = new VmManager({ groups: [group('fedora-41', 1)] }, { redis, prefix, clock: () => clock.now });
    try {
      // Started before v2 was published, yet it wins: its launch_revision is higher.
      expect(await rolledBack.publishLaunch('g', { startedAt: T0 + 5 * S, processId: 'host:1:bumped' })).toMatchObject({ status: 'published', revision: 3, changed: 0 });
      expect(await next.publishLaunch('g', { startedAt: clock.now + S, processId: 'host:2:restarted' })).toMatchObject({ status: 'superseded', launchRevision: 1 });
      // The bump is a launch of its own: vm-old (revision 0) is rolled out as well.
      expect(await redis.smembers(keys.outdated('g'))).toEqual(['vm-old']);
    } finally {
      await rolledBack.close();
    }
  });

  it('is current again after the orphan takeover (every process of the new config stopped)', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-old');
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    clock.now += launchOrphanedAfterMs(parseConfig(v1).vm_cycle_timeout) + 1;
    expect(await old.publishLaunch('g', { startedAt: T0 + 15 * S, processId: 'host:1:restarted' })).toMatchObject({ status: 'published', revision: 3, changed: 1 });
    expect(await redis.zrange(keys.readyClean('g'), 0, '-1')).toEqual(['vm-old']);
    expect(await redis.zcard(keys.readyOutdated('g'))).toBe(0);
    // The rolled-back fingerprint is superseded in turn: a v2 process restarted later does not win by its start.
    expect(await next.publishLaunch('g', { startedAt: clock.now + S, processId: 'host:2:restarted' })).toMatchObject({ status: 'superseded', fingerprint: fp1 });
  });

  it('is kept out of the ready indexes while held, and back in ready_outdated when unheld', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-old');
    clock.now = T0 + 10 * S;
    await next.publishLaunch('g', process2);
    await next.holdVm('vm-old', 'op');
    expect(await redis.zcard(keys.readyOutdated('g'))).toBe(0);
    await next.unholdVm('vm-old');
    expect(await redis.zrange(keys.readyOutdated('g'), 0, '-1')).toEqual(['vm-old']);
  });
});

describe('the ready-age due set', () => {
  it('holds clean, unheld ready VMs of a group with max_ready_age, scored by their first passed check, and not a VM in use', async () => {
    const aging = new VmManager({ groups: [{ ...group('fedora-41'), max_ready_age: 600 }] }, { redis, prefix, clock: () => clock.now });
    try {
      await aging.publishLaunch('g', process1);
      await spawnedReady(aging, 'vm-a');
      expect(await redis.zscore(keys.dueReadyAge('g'), 'vm-a')).toBe(String(T0));
      expect((await aging.getVmRecord('vm-a')).firstReadyAt).toBe(T0);
      await acquire(aging, 'alice');
      expect(await redis.zcard(keys.dueReadyAge('g'))).toBe(0);
    } finally {
      await aging.close();
    }
  });

  it('costs nothing in a group without max_ready_age: no first_ready_at, no entry', async () => {
    await old.publishLaunch('g', process1);
    await spawnedReady(old, 'vm-b');
    expect((await old.getVmRecord('vm-b')).firstReadyAt).toBeNull();
    expect(await redis.zcard(keys.dueReadyAge('g'))).toBe(0);
  });
});
