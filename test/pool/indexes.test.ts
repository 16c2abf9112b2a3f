import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NoVmAvailable, VmError, VmStates, type VmState } from '../../src/pool/types.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { connect } from '../helpers/redis.js';
import { createPoolKit, testConfig, type PoolKit } from './fixtures/kit.js';

/**
 * Random sequences of operations, then a check that every index the scripts keep (state sets, ready
 * sorted sets, per-user counters, IP sets, task keys, the VM list) agrees with the VM hashes.
 */
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-indexes');
});
afterAll(async () => kit.close());

/** Small deterministic PRNG (mulberry32), so that a failing seed can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function scanKeys(pattern: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await kit.redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    out.push(...keys);
    cursor = next;
  } while (cursor !== '0');
  return out.sort();
}

const sorted = (xs: Iterable<string>) => [...xs].sort();

async function checkIndexes(): Promise<number> {
  const k = kit.keys;
  const hashes = new Map<string, Record<string, string>>();
  for (const key of await scanKeys(`${k.base}vm:*`)) hashes.set(key.slice(`${k.base}vm:`.length), await kit.redis.hgetall(key));
  const vms = [...hashes.values()];

  expect(sorted(await kit.redis.smembers(k.allVms))).toEqual(sorted(hashes.keys()));
  for (const [name, h] of hashes) expect(h.vm_name).toBe(name);

  for (const group of kit.vmm.vmGroups) {
    for (const state of Object.values(VmStates)) {
      const expected = vms.filter((h) => h.group === group && h.state === state).map((h) => h.vm_name!);
      expect(sorted(await kit.redis.smembers(k.state(group, state))), `group ${group} state ${state}`).toEqual(sorted(expected));
    }
    // A held VM stays out of the ready indexes.
    const clean = vms.filter((h) => h.group === group && h.state === 'ready' && h.owner === undefined && h.held_by === undefined);
    const cleanIndex = await kit.redis.zrange(k.readyClean(group), 0, '-1', 'WITHSCORES');
    const cleanMap = new Map<string, number>();
    for (let i = 0; i < cleanIndex.length; i += 2) cleanMap.set(cleanIndex[i]!, Number(cleanIndex[i + 1]));
    expect(sorted(cleanMap.keys()), `group ${group} ready_clean`).toEqual(sorted(clean.map((h) => h.vm_name!)));
    for (const h of clean) expect(cleanMap.get(h.vm_name!)).toBe(Number(h.last_health_check ?? 0));

    const counts: Record<string, string> = {};
    for (const h of vms) {
      if (h.group === group && h.owner !== undefined) counts[h.owner] = String(Number(counts[h.owner] ?? 0) + 1);
    }
    expect(await kit.redis.hgetall(k.ownerVms(group)), `group ${group} owner_vms`).toEqual(counts);

    // Due-time sets and the coming set (includes/setVmState: indexDue): members and scores follow the hashes.
    const ofGroup = vms.filter((h) => h.group === group);
    const due: [string, (h: Record<string, string>) => boolean, string][] = [
      [k.dueCheck(group), (h) => ['got_ip', 'ready', 'in_use', 'check_health_failed'].includes(h.state!), 'last_health_check'],
      [k.dueDirty(group), (h) => h.state === 'ready' && h.owner !== undefined && h.held_by === undefined, 'last_release'],
      [k.dueCheckStarted(group), (h) => h.state === 'check_health', 'last_health_check'],
      [k.dueTerminating(group), (h) => h.state === 'terminating', 'terminating_since'],
    ];
    for (const [key, member, field] of due) {
      const entries = await kit.redis.zrange(key, 0, '-1', 'WITHSCORES');
      const got = new Map<string, number>();
      for (let i = 0; i < entries.length; i += 2) got.set(entries[i]!, Number(entries[i + 1]));
      const want = ofGroup.filter(member);
      expect(sorted(got.keys()), key).toEqual(sorted(want.map((h) => h.vm_name!)));
      for (const h of want) expect(got.get(h.vm_name!), `${key} ${h.vm_name}`).toBe(Number(h[field] ?? 0));
    }
    const coming = ofGroup.filter((h) => ['got_ip', 'check_health'].includes(h.state!) && h.owner === undefined && h.held_by === undefined);
    expect(sorted(await kit.redis.smembers(k.coming(group))), `group ${group} coming`).toEqual(sorted(coming.map((h) => h.vm_name!)));
    const held = ofGroup.filter((h) => h.held_by !== undefined).map((h) => h.vm_name!);
    expect(sorted(await kit.redis.smembers(k.held(group))), `group ${group} held`).toEqual(sorted(held));
  }

  // Dirty ready indexes: every member is a ready VM bound to that owner and sandbox; every such VM is in one.
  const dirtyMembers = new Map<string, string>();
  for (const key of await scanKeys(`${k.base}group:*:ready_dirty:*`)) {
    const entries = await kit.redis.zrange(key, 0, '-1', 'WITHSCORES');
    for (let i = 0; i < entries.length; i += 2) {
      const name = entries[i]!;
      const h = hashes.get(name);
      expect(h, `${key} lists missing VM ${name}`).toBeDefined();
      expect(h!.state).toBe('ready');
      const owner = h!.owner!;
      expect(key).toBe(`${k.base}group:${h!.group}:ready_dirty:${owner.length}:${owner}:${h!.sandbox}`);
      expect(Number(entries[i + 1])).toBe(Number(h!.last_health_check ?? 0));
      expect(dirtyMembers.has(name)).toBe(false);
      dirtyMembers.set(name, key);
    }
  }
  const dirty = vms.filter((h) => h.state === 'ready' && h.owner !== undefined && h.held_by === undefined).map((h) => h.vm_name!);
  expect(sorted(dirtyMembers.keys())).toEqual(sorted(dirty));

  // A ready VM never has failed checks.
  for (const h of vms) if (h.state === 'ready') expect(h.check_fails).toBe('0');

  // IP sets.
  for (const key of await scanKeys(`${k.base}ip:*`)) {
    const ip = key.slice(`${k.base}ip:`.length);
    expect(sorted(await kit.redis.smembers(key))).toEqual(sorted(vms.filter((h) => h.vm_ip === ip).map((h) => h.vm_name!)));
  }
  for (const h of vms) expect(await kit.redis.sismember(k.ip(h.vm_ip!), h.vm_name!)).toBe(1);

  // Task keys (per owner) point at the VM whose owner and task_id they name; only VMs holding a task have one.
  const taskKeys = await scanKeys(`${k.base}owner_task:*`);
  for (const key of taskKeys) {
    const name = await kit.redis.get(key);
    const h = hashes.get(name!);
    expect(key, `task key of ${name}`).toBe(k.ownerTask(h!.owner!, h!.task_id!));
  }
  expect(await scanKeys(`${k.base}task:*`)).toEqual([]);
  const holding = vms.filter((h) => h.task_id !== undefined && h.state === 'in_use');
  for (const h of holding) expect(await kit.redis.get(k.ownerTask(h.owner!, h.task_id!))).toBe(h.vm_name);
  return vms.length;
}

const STATES = Object.values(VmStates) as VmState[];
const OWNERS = ['alice', 'bob', 'carol', 'a:b', 'a'];
const SANDBOXES = ['s1', 's2', 'b:s1', ''];
const IPS = ['10.5.0.1', '10.5.0.2', '10.5.0.3', 'fd00::1'];

async function randomOps(vmm: VmManager, seed: number, steps: number, checkEvery: number): Promise<Record<string, number>> {
  const random = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const names = Array.from({ length: 12 }, (_, i) => `vm${i}`);
  const done: Record<string, number> = {};
  let task = 0;
  if (checkEvery > 0) await vmm.markServerStart();
  for (let step = 0; step < steps; step++) {
    kit.clock.now += Math.floor(random() * 3000);
    const name = pick(names);
    const ops: [string, () => Promise<unknown>][] = [
      ['add', () => vmm.addVmToPool(pick(IPS), name, pick([0, 1]))],
      ['check', () => vmm.startVmCheck(name)],
      ['ok', () => vmm.recordHealthCheckResult(name, true)],
      ['ok', () => vmm.recordHealthCheckResult(name, true)],
      ['fail', () => vmm.recordHealthCheckResult(name, false)],
      ['markFailed', () => vmm.markVmCheckFailed(name)],
      ['acquire', () => vmm.acquireVm({ groups: random() < 0.5 ? [0, 1] : [pick([0, 1])], owner: pick(OWNERS), sandbox: pick(SANDBOXES), workerId: 'w', taskId: random() < 0.6 ? `t${task++ % 7}` : null })],
      ['acquire', () => vmm.acquireVm({ groups: [0, 1], owner: pick(OWNERS), sandbox: pick(SANDBOXES), workerId: 'w' })],
      ['release', () => vmm.releaseVm(name)],
      ['release', () => vmm.releaseVm(name)],
      ['terminate', () => vmm.startVmTermination(name, random() < 0.3 ? pick(STATES) : undefined)],
      ['remove', () => vmm.removeVmFromPool(name)],
      ['serverStart', () => (random() < 0.2 ? vmm.markServerStart() : Promise.resolve())],
      ['hold', () => vmm.holdVm(name, 'operator')],
      ['unhold', () => vmm.unholdVm(name)],
    ];
    // Half the time, take the VM one natural step further, so that runs reach every state.
    const progress = async (): Promise<[string, () => Promise<unknown>]> => {
      const state = (await kit.redis.hget(kit.keys.vm(name), 'state')) as VmState | null;
      switch (state) {
        case null:
          return ops[0]!;
        case 'got_ip':
        case 'check_health_failed':
          return ops[1]!;
        case 'check_health':
          return random() < 0.8 ? ops[2]! : ops[4]!;
        case 'ready':
          return random() < 0.8 ? ops[6]! : ops[10]!;
        case 'in_use':
          return random() < 0.7 ? ops[8]! : pick([ops[4]!, ops[1]!, ops[10]!]);
        case 'terminating':
          return ops[11]!;
      }
    };
    const [label, op] = random() < 0.5 ? await progress() : pick(ops);
    try {
      await op();
      done[label] = (done[label] ?? 0) + 1;
    } catch (err) {
      // Refusals are part of the run; anything that is not a VmError is a bug.
      if (!(err instanceof VmError) && !(err instanceof NoVmAvailable)) throw err;
    }
    if (checkEvery > 0 && step % checkEvery === checkEvery - 1) await checkIndexes();
  }
  return done;
}

async function randomRun(seed: number, steps: number): Promise<Record<string, number>> {
  await kit.reset();
  const done = await randomOps(kit.vmm, seed, steps, 50);
  await checkIndexes();
  return done;
}

describe('index consistency', () => {
  it.each([1, 2, 3, 4])('indexes agree with the VM hashes after 400 random operations (seed %i)', async (seed) => {
    const done = await randomRun(seed, 400);
    // The run exercised the interesting paths, so the checks above checked something.
    for (const label of ['add', 'check', 'ok', 'fail', 'acquire', 'release', 'terminate', 'remove', 'hold', 'unhold']) {
      expect(done[label] ?? 0, label).toBeGreaterThan(0);
    }
  });

  it('indexes agree with the VM hashes after operations from 4 connections at once', async () => {
    await kit.reset();
    await kit.vmm.markServerStart();
    const connections = Array.from({ length: 4 }, () => connect());
    const managers = connections.map((redis) => new VmManager(testConfig(), { redis, prefix: kit.prefix, clock: () => kit.clock.now }));
    try {
      const runs = await Promise.all(managers.map((vmm, i) => randomOps(vmm, 100 + i, 250, 0)));
      const acquired = runs.reduce((n, done) => n + (done.acquire ?? 0), 0);
      expect(acquired).toBeGreaterThan(0);
      await checkIndexes();
    } finally {
      for (const vmm of managers) await vmm.close();
      for (const redis of connections) await redis.quit();
    }
  });
});
