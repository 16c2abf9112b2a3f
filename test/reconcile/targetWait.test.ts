import { ARRIVALS_KEPT_WITHOUT_TARGET_WAIT } from '../../src/pool/telemetry.js';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager, acquireWaiterMember } from '../../src/pool/vmManager.js';
import { groupSummaries } from '../../src/poolView.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';
import { poolKeys } from '../../src/pool/keys.js';
import { ConfigError, parseConfig, type ConfigInput } from '../../src/config/index.js';
import { decideStartSpawnIfRequired, decideRetireSurplus, type PoolSnapshot } from '../../src/reconcile/decisions.js';
import { arrivalRateFromBuckets, decideTargetWait, nextBootEma, poissonTail, targetWaitDecision } from '../../src/reconcile/targetWait.js';
import { loadArrivals, simulate, type SimulationResult } from './targetWaitSimulation.js';

const group = (extra: Record<string, unknown>) => parseConfig({ groups: [{ name: 'g', max_vm_total: 200, max_spawn_processes: 50, vm_spawn_min_interval: 0, ...extra }] } as ConfigInput, {}).groups[0]!;

describe('target_wait decision', () => {
  it('computes the Poisson tail', () => {
    expect(poissonTail(0, 1)).toBe(0);
    expect(poissonTail(3, 0)).toBe(1);
    // P(N >= 1) = 1 - e^-2; P(N >= 5 | mean 2) = 0.0527 (tables).
    expect(poissonTail(2, 1)).toBeCloseTo(1 - Math.exp(-2), 10);
    expect(poissonTail(2, 5)).toBeCloseTo(0.0527, 4);
    // The normal approximation above mean 600 agrees with the exact sum near that size.
    expect(Math.abs(poissonTail(601, 640) - poissonTail(599, 640))).toBeLessThan(0.02);
    expect(poissonTail(1000, 1000)).toBeGreaterThan(0.45);
    expect(poissonTail(1000, 1000)).toBeLessThan(0.55);
  });

  it('keeps the smallest warm pool whose late share is within the percentile', () => {
    // 2 requests a minute, boot 90 s, cycle 10 s, target 30 s: exposure 70 s, mean 2.33.
    const d = decideTargetWait({ arrivalRate: 2 / 60, bootMs: 90_000, targetSeconds: 30, percentile: 0.95, cycleSeconds: 10, floor: 0, ceiling: 50 });
    expect(d.minReady).toBe(6);
    expect(d.lateShare).toBeLessThanOrEqual(0.05);
    expect(poissonTail(2 / 60 * 70, d.minReady - 1)).toBeGreaterThan(0.05);
    expect(d.arrivalsPerMinute).toBeCloseTo(2);
    expect(d.bootMeasured).toBe(true);
    // More arrivals, a slower boot or a stricter percentile never need fewer VMs.
    const more = decideTargetWait({ arrivalRate: 4 / 60, bootMs: 90_000, targetSeconds: 30, percentile: 0.95, cycleSeconds: 10, floor: 0, ceiling: 50 });
    const slower = decideTargetWait({ arrivalRate: 2 / 60, bootMs: 180_000, targetSeconds: 30, percentile: 0.95, cycleSeconds: 10, floor: 0, ceiling: 50 });
    const stricter = decideTargetWait({ arrivalRate: 2 / 60, bootMs: 90_000, targetSeconds: 30, percentile: 0.99, cycleSeconds: 10, floor: 0, ceiling: 50 });
    expect(more.minReady).toBeGreaterThan(d.minReady);
    expect(slower.minReady).toBeGreaterThan(d.minReady);
    expect(stricter.minReady).toBeGreaterThan(d.minReady);
  });

  it('needs no warm pool when a fresh spawn meets the target, and stays within floor and ceiling', () => {
    expect(decideTargetWait({ arrivalRate: 1, bootMs: 20_000, targetSeconds: 60, percentile: 0.95, cycleSeconds: 10, floor: 0, ceiling: 50 }).minReady).toBe(0);
    expect(decideTargetWait({ arrivalRate: 0, bootMs: 90_000, targetSeconds: 30, percentile: 0.95, cycleSeconds: 10, floor: 2, ceiling: 50 }).minReady).toBe(2);
    const capped = decideTargetWait({ arrivalRate: 10, bootMs: 300_000, targetSeconds: 30, percentile: 0.95, cycleSeconds: 10, floor: 0, ceiling: 7 });
    expect(capped.minReady).toBe(7);
    expect(capped.lateShare).toBeGreaterThan(0.05);
    // Before the first VM is ready, the boot time is a default guess, and says so.
    const guess = decideTargetWait({ arrivalRate: 1 / 60, bootMs: null, targetSeconds: 30, percentile: 0.95, cycleSeconds: 10, floor: 0, ceiling: 50 });
    expect(guess.bootMeasured).toBe(false);
    expect(guess.bootSeconds).toBe(60);
  });

  it('measures the arrival rate over the window and the boot time as a moving average', () => {
    const now = 10 * 60_000 + 30_000; // 30 s into minute 10
    const buckets = new Map([[4, 100], [6, 6], [9, 6], [10, 3]]);
    // A 5-minute window covers minutes 6..9 whole and 30 s of minute 10: 15 requests in 270 s.
    expect(arrivalRateFromBuckets(buckets, now, 5 * 60_000)).toBeCloseTo(15 / 270, 10);
    expect(arrivalRateFromBuckets(new Map(), now, 5 * 60_000)).toBe(0);
    expect(nextBootEma(null, 1000)).toBe(1000);
    expect(nextBootEma(1000, 2000)).toBe(1200);
  });

  it('is refused in config next to min_ready, and its bounds without it', () => {
    expect(() => group({ target_wait: { p95: 30 }, min_ready: 2 })).toThrow(ConfigError);
    expect(() => group({ min_ready_floor: 1 })).toThrow(/target_wait/);
    expect(() => group({ target_wait: { p95: 30, p99: 60 } })).toThrow(/exactly one of p50, p90, p95, p99/);
    expect(() => group({ target_wait: {} })).toThrow(/exactly one/);
    expect(() => group({ target_wait: { p95: 30 }, min_ready_floor: 5, min_ready_ceiling: 2 })).toThrow(/at most min_ready_ceiling/);
    expect(() => group({ target_wait: { p95: 30, window: 10 } })).toThrow(/at least 60 seconds/);
    const g = group({ target_wait: { p95: 30 }, min_ready_floor: 1, min_ready_ceiling: 9 });
    expect(g.target_wait).toEqual({ p95: 30, window: 900 });
    expect(targetWaitDecision(g, { arrivalRate: 0, bootMs: null }, 10)?.minReady).toBe(1);
    // A group without it keeps the parsed shape it had.
    expect('target_wait' in group({})).toBe(false);
  });

  it('drives spawns and retires idle surplus through the reconcile decisions', () => {
    const g = group({ target_wait: { p95: 30 }, min_ready_ceiling: 9 });
    const snap = (rate: number, readyClean: number): PoolSnapshot => ({
      vms: Array.from({ length: readyClean }, (_, i) => ({
        vmName: `vm-${i}`, vmIp: '10.0.0.1', group: 'g', state: 'ready', owner: null, boundToUser: null, sandbox: null, usedByWorker: null, taskId: null, buildId: null, chroot: null,
        inUseSince: null, lastHealthCheck: 1, checkFails: 0, lastRelease: null, buildsCount: 0, terminatingSince: null, addedAt: i, boundSince: null, leaseId: null,
        leaseExpiresAt: null, heldBy: null, heldSince: null, heldUntil: null, holdReason: null,
      })),
      groups: [{ group: 'g', spawnsInFlight: [], demand: 0, lastSpawnStart: null, targetWait: { arrivalRate: rate, bootMs: 90_000 } }],
      serverStart: 0,
    });
    const config = { groups: [g], vm_cycle_timeout: 10 };
    // 2/min needs 6 ready: with 2, four spawns start for the warm pool.
    const spawns = decideStartSpawnIfRequired(snap(2 / 60, 2), config, 1_000_000);
    expect(spawns).toEqual(Array.from({ length: 4 }, () => ({ type: 'spawn', group: 'g', reason: 'warm_pool' })));
    // Arrivals stop: one VM stays ready for the next request (a fresh spawn takes longer than 30 s),
    // the other 5 idle VMs are surplus, oldest first.
    const retire = decideRetireSurplus(snap(0, 6), config, 1_000_000);
    expect(retire.map((a) => a.type === 'terminate' && a.vmName)).toEqual(['vm-0', 'vm-1', 'vm-2', 'vm-3', 'vm-4']);
  });
});

describe('target_wait simulation: a recorded day of arrivals, replayed in virtual time', () => {
  it('meets the p95 target with fewer VM-minutes than the best fixed min_ready that meets it', () => {
    const arrivals = loadArrivals();
    const target = 30;
    const common = { arrivals, cycleSeconds: 10, bootSeconds: 90, bootJitterSeconds: 20 };
    const adaptive = simulate({ ...common, group: group({ target_wait: { p95: target } }) });
    const fixed: { k: number; r: SimulationResult }[] = [];
    for (let k = 0; k <= 30; k++) {
      const r = simulate({ ...common, group: group({ min_ready: k }) });
      fixed.push({ k, r });
      if (r.p95 <= target) break;
    }
    const best = fixed.at(-1)!;
    const row = (name: string, r: SimulationResult) => `${name.padEnd(24)} p95 wait ${r.p95.toFixed(1).padStart(5)} s   VM-minutes ${r.vmMinutes.toFixed(0).padStart(6)} (idle ${r.idleVmMinutes.toFixed(0).padStart(5)})   spawns ${r.spawns}   most ready ${r.maxReady}`;
    console.log(
      [
        `target_wait simulation: ${arrivals.length} acquires over one day, boot 90±20 s, cycle 10 s, target p95 <= ${target} s`,
        row(`target_wait { p95: ${target} }`, adaptive),
        row(`fixed min_ready ${best.k} (best)`, best.r),
        row(`fixed min_ready ${Math.max(0, best.k - 1)}`, fixed.at(-2)?.r ?? best.r),
        `saved: ${(best.r.vmMinutes - adaptive.vmMinutes).toFixed(0)} VM-minutes (${(100 * (1 - adaptive.idleVmMinutes / best.r.idleVmMinutes)).toFixed(1)}% of the idle ones)`,
      ].join('\n'),
    );
    expect(adaptive.waits).toHaveLength(arrivals.length);
    expect(best.r.p95).toBeLessThanOrEqual(target);
    expect(adaptive.p95).toBeLessThanOrEqual(target);
    expect(adaptive.vmMinutes).toBeLessThan(best.r.vmMinutes);
    expect(adaptive.idleVmMinutes).toBeLessThan(best.r.idleVmMinutes);
  });
});

describe('target_wait in a reconcile cycle (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('target-wait');
  const input: ConfigInput = {
    groups: [{ name: 'tw', target_wait: { p95: 30, window: 600 }, min_ready_ceiling: 9, max_vm_total: 20, max_spawn_processes: 20, vm_spawn_min_interval: 0, lease_timeout: 86_400 }],
  };
  const clock = { now: Date.parse('2026-12-01T10:00:00Z') };
  let redis: Redis;
  let vmm: VmManager;
  let master: VmMaster;
  let spawnQueue: Queue;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
    master = new VmMaster(vmm);
    spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
    await vmm.markServerStart();
  });
  afterAll(async () => {
    await spawnQueue?.close();
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('measures boot time at the first passed check and the arrival rate, and spawns what the target needs', async () => {
    // Arrivals are counted by the acquire scripts: each request that joins the line (no VM is ready
    // yet) counts once for its first group; it leaves the line at once, so that it is no demand.
    let arrived = 0;
    const arrive = async (count: number) => {
      for (let i = 0; i < count; i++) {
        const jobId = `arrival-${(arrived += 1)}`;
        const waiter = { member: acquireWaiterMember(clock.now, jobId), priority: 0, deadline: clock.now + 60_000, jobId };
        const attempt = await vmm.tryAcquireVm({ groups: [0], owner: 'arrivals', sandbox: 'sb', workerId: 'w' }, waiter);
        expect(attempt.status).toBe('none');
        await vmm.leaveAcquireLine(waiter, ['tw']);
      }
    };
    // 20 arrivals in the last 10 minutes, and old ones outside the window that are trimmed.
    clock.now -= 3_600_000;
    await arrive(50);
    clock.now += 3_600_000 - 300_000;
    await arrive(10);
    clock.now += 300_000;
    await arrive(10);
    expect(await vmm.countDemand('tw')).toBe(0);

    // Two spawned VMs: ready 80 s and 100 s after their spawns started.
    for (const [i, bootMs] of [80_000, 100_000].entries()) {
      const name = `tw-${i}`;
      await vmm.addVmToPool(`10.8.0.${i + 1}`, name, 0, { spawnStartedAt: clock.now - bootMs });
      await vmm.startVmCheck(name);
      await vmm.recordHealthCheckResult(name, true);
      // Later checks of the same VM measure nothing more.
      await vmm.startVmCheck(name);
      await vmm.recordHealthCheckResult(name, true);
    }
    expect(await vmm.reader.bootTime('tw')).toEqual({ emaMs: 84_000, samples: 2 });
    // A hand-added VM (no spawn start) measures nothing.
    await vmm.addVmToPool('10.8.0.9', 'hand', 0);
    await vmm.startVmCheck('hand');
    await vmm.recordHealthCheckResult('hand', true);
    expect((await vmm.reader.bootTime('tw')).samples).toBe(2);

    const measure = await vmm.measureTargetWait('tw', 600_000);
    expect(measure.bootMs).toBe(84_000);
    expect(measure.arrivalRate * 60).toBeGreaterThan(1.9);
    expect(measure.arrivalRate * 60).toBeLessThan(2.3);
    expect((await vmm.reader.arrivals('tw')).size).toBe(2);

    const snapshot = await master.readSnapshot();
    expect(snapshot.groups[0]!.targetWait?.bootMs).toBe(84_000);
    const expected = targetWaitDecision(vmm.config.groups[0]!, measure, vmm.config.vm_cycle_timeout)!;
    expect(expected.minReady).toBeGreaterThan(3);
    await master.doCycle();
    // Three clean VMs are ready; the rest of the warm pool is spawned.
    expect(await spawnQueue.getJobCountByTypes('waiting', 'prioritized', 'delayed')).toBe(expected.minReady - 3);
    const [summary] = await groupSummaries(vmm);
    expect(summary!.minReady).toBe(expected.minReady);
    expect(summary!.targetWait).toMatchObject({ target: 'p95 30s', bootSeconds: 84, bootMeasured: true, minReady: expected.minReady });
  });
});

describe('target_wait on a group whose arrivals piled up before it was turned on (real Redis)', () => {
  const prefix = uniquePrefix('target-wait-backlog');
  const input: ConfigInput = { groups: [{ name: 'tw', target_wait: { p95: 30, window: 600 }, max_vm_total: 20 }] };
  const now = Date.parse('2026-12-01T10:00:00Z');
  let redis: Redis;
  let vmm: VmManager;

  beforeAll(() => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => now });
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('trims a week of old minutes at once (more than a Lua unpack takes) and keeps the window', async () => {
    // The acquire scripts count arrivals whether or not target_wait is on: a week of busy minutes
    // before it was turned on, then two in the window.
    const minute = Math.floor(now / 60_000);
    const fields: string[] = [];
    for (let m = minute - 7 * 24 * 60; m < minute - 10; m++) fields.push(String(m), '1');
    fields.push(String(minute - 5), '3', String(minute), '2');
    await redis.hset(poolKeys(prefix).arrivals('tw'), ...fields);

    const measure = await vmm.measureTargetWait('tw', 600_000);
    // The backlog changes nothing of the rate: only the window's minutes count.
    expect(measure.arrivalRate).toBe(arrivalRateFromBuckets(new Map([[minute - 5, 3], [minute, 2]]), now, 600_000));
    expect([...(await vmm.reader.arrivals('tw')).keys()].sort()).toEqual([minute - 5, minute]);
  });
});

describe('arrivals of a group without target_wait (real Redis)', () => {
  const prefix = uniquePrefix('arrivals-unmeasured');
  const input: ConfigInput = { groups: [{ name: 'plain', max_vm_total: 0 }] };
  const now = Date.parse('2026-12-01T10:00:00Z');
  let redis: Redis;
  let vmm: VmManager;

  beforeAll(() => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => now });
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('are kept to a day by the reconcile cycle, trimmed only once an hour of slack is used up', async () => {
    const key = poolKeys(prefix).arrivals('plain');
    const minute = Math.floor(now / 60_000);
    const fill = async (minutes: number) => {
      const fields: string[] = [];
      for (let m = minute - minutes + 1; m <= minute; m++) fields.push(String(m), '1');
      await redis.hset(key, ...fields);
    };
    // A day and 30 minutes: within the slack, nothing is read beyond HLEN, nothing dropped.
    await fill(ARRIVALS_KEPT_WITHOUT_TARGET_WAIT + 30);
    await new VmMaster(vmm).doCycle();
    expect(await redis.hlen(key)).toBe(ARRIVALS_KEPT_WITHOUT_TARGET_WAIT + 30);
    // Two days (the acquire scripts count in every group): trimmed to the last day.
    await fill(2 * ARRIVALS_KEPT_WITHOUT_TARGET_WAIT);
    await new VmMaster(vmm).doCycle();
    const kept = [...(await vmm.reader.arrivals('plain')).keys()].sort((a, b) => a - b);
    expect(kept).toHaveLength(ARRIVALS_KEPT_WITHOUT_TARGET_WAIT);
    expect(kept[0]).toBe(minute - ARRIVALS_KEPT_WITHOUT_TARGET_WAIT + 1);
    expect(kept.at(-1)).toBe(minute);
  });
});
