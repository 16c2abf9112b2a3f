import type { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { recordJobMetrics } from '../../src/metrics/shared.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { HISTORY_PERIOD_MS, HISTORY_SAMPLES, isHistoryDue, quantileBetween } from '../../src/reconcile/history.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import { createWebKit, type WebKit } from '../http/fixtures.js';

// The pool's recent history for the pool page's charts: one sample per group per minute, taken by
// reconcile from the state indexes, the lines and the acquire wait histogram, capped per group.
describe('history: the pure parts', () => {
  it('is due on the first cycle, then once a period (and when the clock went back)', () => {
    expect(isHistoryDue(null, 1000)).toBe(true);
    expect(isHistoryDue(1000, 1000 + HISTORY_PERIOD_MS - 1)).toBe(false);
    expect(isHistoryDue(1000, 1000 + HISTORY_PERIOD_MS)).toBe(true);
    expect(isHistoryDue(5000, 1000)).toBe(true);
  });

  it('takes a quantile of what was observed between two cumulative snapshots, as histogram_quantile', () => {
    const bounds = [1, 2, 5];
    // 10 observations before; then 100 more: 90 in (0, 1], 10 in (2, 5].
    const before = [10, 10, 10, 10];
    const after = [100, 100, 110, 110];
    expect(quantileBetween(bounds, before, after, 0.5)).toBeCloseTo(50 / 90);
    expect(quantileBetween(bounds, before, after, 0.95)).toBeCloseTo(2 + 3 * 0.5);
    expect(quantileBetween(bounds, after, after, 0.95)).toBeNull();
    // Past the last finite bound: that bound.
    expect(quantileBetween(bounds, null, [0, 0, 0, 4], 0.95)).toBe(5);
    // Counts that went back (the metrics were reset): everything counts as new.
    expect(quantileBetween(bounds, [50, 50, 50, 50], [2, 2, 2, 2], 0.5)).toBeCloseTo(0.5);
  });
});

describe('VmMaster.recordHistory', () => {
  const prefix = uniquePrefix('history');
  const keys = poolKeys(prefix);
  const T0 = 1_750_000_000_000;
  const clock = { now: T0 };
  let redis: Redis;
  let vmm: VmManager;
  let master: VmMaster;

  /** An acquire that waited `seconds` and got a VM, as the acquire worker records it. */
  const assignedAfter = (seconds: number) =>
    recordJobMetrics(redis, prefix, QueueNames.ACQUIRE, { data: {}, timestamp: 0, finishedOn: seconds * 1000, attemptsMade: 1, opts: {} } as unknown as Job, 'completed', { now: 0 });

  beforeAll(() => {
    redis = connect();
    vmm = new VmManager({ groups: [{ name: 'a' }, { name: 'b' }] }, { redis, prefix, clock: () => clock.now });
    master = new VmMaster(vmm);
  });
  beforeEach(async () => {
    await deleteKeysWithPrefix(redis, prefix);
    clock.now = T0;
  });
  afterAll(async () => {
    await deleteKeysWithPrefix(redis, prefix);
    await vmm.close();
    await redis.quit();
  });

  it('samples each group once a minute from the indexes, the lines and the acquire waits since the last sample', async () => {
    await vmm.addVmToPool('10.7.0.1', 'r1', 'a');
    await vmm.startVmCheck('r1');
    await vmm.recordHealthCheckResult('r1', true);
    await vmm.addVmToPool('10.7.0.2', 'g1', 'a');
    await vmm.addVmToPool('10.7.0.3', 'b1', 'b');
    await redis.zadd(keys.demand('b'), T0 + 60_000, 'acq-1', T0 + 60_000, 'acq-2');
    for (let i = 0; i < 19; i++) await assignedAfter(0.3);
    await assignedAfter(20);

    expect(await master.recordHistory()).toBe(true);
    expect(await master.recordHistory()).toBe(false);
    const [a] = await vmm.readHistory('a', 3_600_000);
    expect(a).toMatchObject({ t: T0, waiting: 0, counts: { ready: 1, got_ip: 1, in_use: 0 } });
    // 19 waits in (0.25, 0.5] and one in (10, 30]: the 19th of 20 lies in the first.
    expect(a!.acquireP95).toBeGreaterThan(0.25);
    expect(a!.acquireP95).toBeLessThanOrEqual(0.5);
    const [b] = await vmm.readHistory('b', 3_600_000);
    expect(b).toMatchObject({ t: T0, waiting: 2, counts: { got_ip: 1 }, acquireP95: a!.acquireP95 });

    // The next minute: only the waits since the last sample count; none means null.
    clock.now += HISTORY_PERIOD_MS;
    expect(await master.recordHistory()).toBe(true);
    clock.now += HISTORY_PERIOD_MS;
    for (let i = 0; i < 5; i++) await assignedAfter(45);
    const report = await master.doCycle();
    expect(report.counts.recordHistory).toBe(1);
    const samples = await vmm.readHistory('a', 3_600_000);
    expect(samples.map((s) => s.t)).toEqual([T0, T0 + HISTORY_PERIOD_MS, T0 + 2 * HISTORY_PERIOD_MS]);
    expect(samples[1]!.acquireP95).toBeNull();
    expect(samples[2]!.acquireP95).toBeGreaterThan(30);
    expect(samples[2]!.acquireP95).toBeLessThanOrEqual(60);
    // readHistory gives the window asked for.
    expect(await vmm.readHistory('a', HISTORY_PERIOD_MS)).toHaveLength(2);
  });

  it(`keeps the last ${HISTORY_SAMPLES} samples of each group`, async () => {
    for (let i = 0; i < HISTORY_SAMPLES + 15; i++) {
      expect(await master.recordHistory()).toBe(true);
      clock.now += HISTORY_PERIOD_MS;
    }
    expect(await redis.llen(keys.history('a'))).toBe(HISTORY_SAMPLES);
    expect(await redis.llen(keys.history('b'))).toBe(HISTORY_SAMPLES);
    const newest = JSON.parse((await redis.lindex(keys.history('a'), 0))!) as { t: number };
    expect(newest.t).toBe(clock.now - HISTORY_PERIOD_MS);
  });
});

describe('the pool page charts', () => {
  let kit: WebKit;
  beforeAll(async () => {
    kit = await createWebKit('history-page');
  });
  afterAll(async () => kit?.close());

  it('draws the last hour per group as inline SVG from the samples', async () => {
    const empty = await (await kit.fetch('/')).text();
    expect(empty).toContain('no history yet');
    await kit.addReady('c1', '10.8.0.1');
    await kit.addReady('c2', '10.8.0.2');
    const master = new VmMaster(kit.vmm);
    expect(await master.recordHistory()).toBe(true);
    const page = await (await kit.fetch('/')).text();
    const base = page.slice(page.indexOf('data-group="0"'), page.indexOf('data-group="1"'));
    expect(base).toContain('<svg class="chart" data-chart="states"');
    expect(base).toMatch(/<polyline data-series="ready" data-last="2" points="[\d.]+,[\d.]+ [\d.]+,[\d.]+"/);
    expect(base).toMatch(/<svg class="chart" data-chart="waiting"[^]*<polyline data-series="waiting" data-last="0"/);
    expect(base).toContain('data-chart="acquire-p95"');
    expect(base).toContain('VMs per state, last hour: ready 2');
    // The refreshed fragment draws them too.
    const fragment = await (await kit.fetch('/?fragment=1')).text();
    expect(fragment).toContain('data-series="ready" data-last="2"');
  });
});
