import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchFingerprint, parseConfig, type ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import type { VmRecord, VmState } from '../../src/pool/types.js';
import { decideStartSpawnIfRequired, type GroupSnapshot, type PoolSnapshot } from '../../src/reconcile/decisions.js';
import { decideRollOut, launchSuperseded, type GroupLaunch } from '../../src/reconcile/rollout.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

const NOW = 1_750_000_000_000;
const S = 1000;

type GroupInput = NonNullable<ConfigInput['groups']>[number];
const configOf = (g: Partial<GroupInput> = {}) => parseConfig({ groups: [{ name: 'g', max_vm_total: 20, max_spawn_processes: 4, vm_spawn_min_interval: 0, min_ready: 3, ...g }] }, {});

let seq = 0;
function vm(state: VmState, fields: Partial<VmRecord> = {}): VmRecord {
  seq += 1;
  return {
    vmName: `vm${seq}`, vmIp: `10.0.0.${seq % 250}`, group: 'g', state, owner: null, boundToUser: null, sandbox: null,
    usedByWorker: null, taskId: null, buildId: null, chroot: null, inUseSince: null, lastHealthCheck: NOW - S,
    checkFails: 0, lastRelease: null, buildsCount: 0, terminatingSince: null, addedAt: null, boundSince: null,
    leaseId: null, leaseExpiresAt: null, heldBy: null, heldSince: null, heldUntil: null, holdReason: null,
    firstReadyAt: NOW - 100 * S, ...fields,
  };
}

/** One group's snapshot: `outdated` and `current` VMs, with the counts VmMaster would read. */
function snapshotOf(outdated: VmRecord[], current: VmRecord[], fields: Partial<GroupSnapshot> = {}, launch: Partial<GroupLaunch> = {}): PoolSnapshot {
  const all = [...outdated, ...current];
  const readyCurrent = current.filter((v) => v.state === 'ready' && v.owner === null && v.heldBy === null).length;
  const comingCurrent = current.filter((v) => (v.state === 'got_ip' || v.state === 'check_health') && v.owner === null).length;
  const group: GroupSnapshot = {
    group: 'g', spawnsInFlight: [], demand: 0, lastSpawnStart: null,
    counts: { all: all.length, active: all.filter((v) => v.state !== 'terminating').length, coming: readyCurrent + comingCurrent },
    launch: { current: true, outdated: outdated.map((v) => v.vmName), aged: [], readyCurrent, ...launch },
    ...fields,
  };
  return { vms: all, groups: [group], serverStart: null };
}

const retired = (actions: ReturnType<typeof decideRollOut>) => actions.map((a) => (a.type === 'terminate' ? `${a.vmName}:${a.reason}` : a.type));

describe('decideRollOut', () => {
  it('keeps every old ready VM while no new one is ready, and the spawn decision surges for all of min_ready', () => {
    const old = [vm('ready'), vm('ready'), vm('ready')];
    const s = snapshotOf(old, []);
    expect(decideRollOut(s, configOf(), NOW)).toEqual([]);
    expect(decideStartSpawnIfRequired(s, configOf(), NOW).filter((a) => a.type === 'spawn')).toHaveLength(3);
  });

  it('retires one old ready VM per new ready one, the oldest first, so that min_ready holds', () => {
    const old = [vm('ready', { firstReadyAt: NOW - 50 * S }), vm('ready', { firstReadyAt: NOW - 90 * S }), vm('ready', { firstReadyAt: NOW - 70 * S })];
    const fresh = [vm('ready'), vm('got_ip')];
    expect(retired(decideRollOut(snapshotOf(old, fresh), configOf(), NOW))).toEqual([`${old[1]!.vmName}:rollout`]);
    const moreFresh = [vm('ready'), vm('ready'), vm('ready')];
    expect(retired(decideRollOut(snapshotOf(old, moreFresh), configOf(), NOW))).toHaveLength(3);
  });

  it('retires an old VM bound to an owner at once, and never touches one in use, held, or of another process', () => {
    const dirty = vm('ready', { owner: 'alice', sandbox: 'alice/p' });
    const busy = vm('in_use', { owner: 'bob' });
    const held = vm('ready', { heldBy: 'op' });
    const s = snapshotOf([dirty, busy, held], []);
    expect(retired(decideRollOut(s, configOf(), NOW))).toEqual([`${dirty.vmName}:rollout`]);
    const superseded = snapshotOf([dirty], [], {}, { current: false });
    expect(decideRollOut(superseded, configOf(), NOW)).toEqual([]);
    expect(decideStartSpawnIfRequired(superseded, configOf(), NOW)).toEqual([]);
  });

  it('at max_vm_total with nothing spawning or booting, retires one old VM at a time so that the roll ends', () => {
    const old = [vm('ready'), vm('ready'), vm('ready')];
    const full = configOf({ max_vm_total: 3 });
    expect(retired(decideRollOut(snapshotOf(old, []), full, NOW))).toHaveLength(1);
    // Its replacement is booting: wait for it.
    const booting = snapshotOf(old.slice(1), [vm('check_health')]);
    expect(decideRollOut(booting, full, NOW)).toEqual([]);
    const spawning = snapshotOf(old, [], { spawnsInFlight: [{ spawnId: 'x', startedAt: NOW }] });
    expect(decideRollOut(spawning, full, NOW)).toEqual([]);
  });

  it('retires ready VMs past max_ready_age once the rest keeps min_ready, and not one a millisecond younger', () => {
    const cfg = configOf({ max_ready_age: 600 });
    const aged = vm('ready', { firstReadyAt: NOW - 600 * S - 1 });
    const young = vm('ready', { firstReadyAt: NOW - 600 * S });
    const others = [vm('ready'), vm('ready'), vm('ready')];
    const s = snapshotOf([], [aged, young, ...others], {}, { aged: [aged.vmName, young.vmName] });
    expect(retired(decideRollOut(s, cfg, NOW))).toEqual([`${aged.vmName}:max_ready_age`]);
    // With only min_ready clean ready VMs, the aged one waits for its replacement.
    const tight = snapshotOf([], [aged, others[0]!, others[1]!], {}, { aged: [aged.vmName] });
    expect(decideRollOut(tight, cfg, NOW)).toEqual([]);
  });
});

describe('launchSuperseded', () => {
  const published = { fingerprint: 'b', launchRevision: 1, superseded: ['a'] };
  it('holds for a config that was current once, or has a lower launch_revision; not for the current one, a new one, or a higher revision', () => {
    expect(launchSuperseded(published, { fingerprint: 'a', launchRevision: 1 })).toBe(true);
    expect(launchSuperseded(published, { fingerprint: 'z', launchRevision: 0 })).toBe(true);
    expect(launchSuperseded(published, { fingerprint: 'b', launchRevision: 1 })).toBe(false);
    expect(launchSuperseded(published, { fingerprint: 'c', launchRevision: 1 })).toBe(false);
    expect(launchSuperseded(published, { fingerprint: 'a', launchRevision: 2 })).toBe(false);
    expect(launchSuperseded(null, { fingerprint: 'a', launchRevision: 0 })).toBe(false);
  });
});

// Two reconcile replicas, one with the old config (started first) and one with the new, run
// cycles in turn on one pool. A spawn worker makes each spawn job's VM with its own config (v2, already
// upgraded); a terminate worker removes the terminated ones. No VM of the new launch may be retired.
describe('replicas with v1 and v2 configs side by side', () => {
  const prefix = uniquePrefix('rollout-replicas');
  const group = (image: string) => ({ name: 'g', image, min_ready: 4, max_vm_total: 12, max_spawn_processes: 4, vm_spawn_min_interval: 0, vm_health_check_period: 3600 });
  const v1: ConfigInput = { groups: [group('fedora-41')] };
  const v2: ConfigInput = { groups: [group('fedora-42')] };
  const clock = { now: NOW };
  let redis: Redis;
  let vmm1: VmManager;
  let vmm2: VmManager;
  let spawnQueue: Queue;
  let terminateQueue: Queue;

  beforeAll(async () => {
    redis = connect();
    vmm1 = new VmManager(v1, { redis, prefix, clock: () => clock.now });
    vmm2 = new VmManager(v2, { redis, prefix, clock: () => clock.now });
    spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
    terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
    clock.now = NOW - 60 * S;
    await vmm1.markServerStart();
    clock.now = NOW;
  });

  afterAll(async () => {
    await spawnQueue.close();
    await terminateQueue.close();
    await deleteKeysWithPrefix(redis, prefix);
    await vmm1.close();
    await vmm2.close();
    await redis.quit();
  });

  let ip = 0;
  /** Runs the queued spawn jobs with `spawner`'s config (VMs to ready), and the terminate jobs. */
  async function workJobs(spawner: VmManager): Promise<void> {
    for (const job of await spawnQueue.getJobs(['waiting', 'prioritized'])) {
      const name = `vm-${++ip}`;
      await spawner.addVmToPool(`10.7.0.${ip}`, name, job.data.group, { spawnId: job.data.spawnId });
      await spawner.startVmCheck(name);
      await spawner.recordHealthCheckResult(name, true);
      await job.remove();
    }
    for (const job of await terminateQueue.getJobs(['waiting', 'prioritized'])) {
      await vmm2.removeVmFromPool(job.data.vmName).catch(() => undefined);
      await job.remove();
    }
  }

  async function terminations(): Promise<Map<string, string>> {
    const page = await vmm2.reader.auditEvents({ limit: 1000 });
    return new Map(page.events.filter((e) => e.event === 'terminate_requested').map((e) => [e.vm, e.reason ?? '']));
  }

  it('rolls the group to v2 and neither flaps nor retires a v2 VM, however the cycles interleave', async () => {
    const fp1 = launchFingerprint(vmm1.groupConfig('g'));
    const fp2 = launchFingerprint(vmm2.groupConfig('g'));
    const master1 = new VmMaster(vmm1, { startedAt: NOW - 10 * S });
    for (let i = 0; i < 3; i++) {
      await master1.doCycle();
      await workJobs(vmm1);
      clock.now += 2 * S;
    }
    const v1Vms = (await vmm1.getAllVms()).map((v) => v.vmName);
    expect(v1Vms).toHaveLength(4);
    const busy = await vmm1.acquireVm({ groups: ['g'], owner: 'alice', sandbox: 'alice/p', workerId: 'w' });

    // The v2 replica starts; the v1 replica keeps running its cycles in between.
    const master2 = new VmMaster(vmm2, { startedAt: clock.now });
    clock.now += S;
    let minReady = Infinity;
    for (let i = 0; i < 12; i++) {
      await (i % 2 === 0 ? master2 : master1).doCycle();
      await workJobs(vmm2);
      const ready = await vmm2.getVmsByGroupAndStates('g', ['ready']);
      minReady = Math.min(minReady, ready.filter((v) => v.owner === null).length);
      clock.now += 2 * S;
    }
    const [launch] = await vmm2.launchStates();
    expect(launch!.published!.fingerprint).toBe(fp2);
    expect(launch!.deferring.map((d) => d.fingerprint)).toEqual([fp1]);

    const ended = await terminations();
    const records = await Promise.all((await vmm2.getAllVms()).map((v) => vmm2.getVmRecord(v.vmName)));
    // Every v1 VM but the one in use was retired for the rollout; nothing else was terminated.
    expect([...ended.entries()].sort()).toEqual(v1Vms.filter((n) => n !== busy.vmName).map((n) => [n, 'rollout']).sort());
    expect(records.filter((r) => r.launchFingerprint === fp1).map((r) => [r.vmName, r.state])).toEqual([[busy.vmName, 'in_use']]);
    expect(records.filter((r) => r.state === 'ready' && r.owner === null).every((r) => r.launchFingerprint === fp2)).toBe(true);
    expect(minReady).toBeGreaterThanOrEqual(3);

    // Released, the v1 VM in use is retired, not reused.
    await vmm2.releaseVm(busy.vmName);
    await master1.doCycle();
    expect((await vmm2.getVmByName(busy.vmName)).state).toBe('ready');
    await master2.doCycle();
    expect((await terminations()).get(busy.vmName)).toBe('rollout');
  });
  it('does not roll back when the v1 replica crashes and restarts with its old config after v2 took over', async () => {
    const fp2 = launchFingerprint(vmm2.groupConfig('g'));
    const [before] = await vmm2.launchStates();
    const v2Vms = (await vmm2.getAllVms()).filter((v) => v.state !== 'terminating').map((v) => v.vmName);
    expect(v2Vms.length).toBeGreaterThanOrEqual(4);
    const endedBefore = (await terminations()).size;
    // Both start after v2 was published; the restarted v1 replica even starts last.
    const master2 = new VmMaster(vmm2, { startedAt: clock.now });
    clock.now += S;
    const restarted1 = new VmMaster(vmm1, { startedAt: clock.now });
    clock.now += S;
    for (let i = 0; i < 10; i++) {
      await (i % 2 === 0 ? restarted1 : master2).doCycle();
      await workJobs(vmm2);
      clock.now += 2 * S;
    }
    const [after] = await vmm2.launchStates();
    // No flap: the published launch never changed (its revision counts every change).
    expect(after!.published).toMatchObject({ fingerprint: fp2, revision: before!.published!.revision });
    expect(after!.deferring.map((d) => d.process)).toContain(restarted1.launchProcess.processId);
    expect(after!.outdated).toBe(0);
    // The audit trail counts no termination since: no v2 VM was retired.
    expect((await terminations()).size).toBe(endedBefore);
    const records = await Promise.all(v2Vms.map((n) => vmm2.getVmRecord(n)));
    expect(records.map((r) => [r.vmName, r.state, r.launchFingerprint])).toEqual(v2Vms.map((n) => [n, 'ready', fp2]));
  });
});

describe('max_ready_age in a reconcile cycle', () => {
  const prefix = uniquePrefix('rollout-age');
  const cfg: ConfigInput = { groups: [{ name: 'g', min_ready: 2, max_vm_total: 4, max_spawn_processes: 4, vm_spawn_min_interval: 0, vm_health_check_period: 3600, max_ready_age: 600 }] };
  const clock = { now: NOW };
  let redis: Redis;
  let vmm: VmManager;
  let spawnQueue: Queue;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(cfg, { redis, prefix, clock: () => clock.now });
    spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
    clock.now = NOW - 60 * S;
    await vmm.markServerStart();
    clock.now = NOW;
  });

  afterAll(async () => {
    await spawnQueue.close();
    await deleteKeysWithPrefix(redis, prefix);
    await vmm.close();
    await redis.quit();
  });

  let ip = 0;
  async function spawnJobsToReady(): Promise<string[]> {
    const names: string[] = [];
    for (const job of await spawnQueue.getJobs(['waiting', 'prioritized'])) {
      const name = `age-${++ip}`;
      await vmm.addVmToPool(`10.8.0.${ip}`, name, 'g', { spawnId: job.data.spawnId });
      await vmm.startVmCheck(name);
      await vmm.recordHealthCheckResult(name, true);
      await job.remove();
      names.push(name);
    }
    return names;
  }

  it('spawns replacements for aged VMs first, then retires them, never below min_ready', async () => {
    const master = new VmMaster(vmm);
    await master.doCycle();
    const first = await spawnJobsToReady();
    expect(first).toHaveLength(2);
    clock.now = NOW + 600 * S;
    await master.doCycle();
    expect(await spawnJobsToReady()).toEqual([]);
    clock.now += 1;
    // Aged: no longer supply, so two replacements are spawned; nothing is retired yet.
    const report = await master.doCycle();
    expect(report.counts.rollOut).toBe(0);
    const replacements = await spawnJobsToReady();
    expect(replacements).toHaveLength(2);
    await master.doCycle();
    const states = await Promise.all(first.map(async (n) => (await vmm.getVmByName(n)).state));
    expect(states).toEqual(['terminating', 'terminating']);
    const events = (await vmm.reader.auditEvents({ limit: 100 })).events.filter((e) => e.event === 'terminate_requested');
    expect(events.map((e) => [e.vm, e.reason])).toEqual(first.map((n) => [n, 'max_ready_age']));
  });
});
