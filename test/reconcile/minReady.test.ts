import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, parseConfig, type ConfigInput } from '../../src/config/index.js';
import { runCli } from '../../src/cli/program.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { decideRetireSurplus, decideStartSpawnIfRequired, type PoolSnapshot } from '../../src/reconcile/decisions.js';
import { minReadyAt, minReadyTimeline, periodAt } from '../../src/reconcile/minReady.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import type { VmRecord } from '../../src/pool/types.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// Tuesday 2026-12-01: 07:30 UTC is 08:30 in Prague (CET, UTC+1), inside "* 8-18 * * 1-5".
const TUE_0830_PRAGUE = Date.parse('2026-12-01T07:30:00Z');
const TUE_0630_PRAGUE = Date.parse('2026-12-01T05:30:00Z');
const TUE_1930_PRAGUE = Date.parse('2026-12-01T18:30:00Z');
const SAT_1000_PRAGUE = Date.parse('2026-12-05T09:00:00Z');

const schedule = {
  default: 2,
  periods: [
    { cron: '* 12-13 * * 1-5', tz: 'Europe/Prague', value: 20 },
    { cron: '* 8-18 * * 1-5', tz: 'Europe/Prague', value: 10 },
  ],
};

describe('min_ready by schedule', () => {
  it('takes the first period that matches the minute, in its time zone, else the default', () => {
    const g = parseConfig({ groups: [{ name: 'g', min_ready: schedule }] }, {}).groups[0]!;
    expect(minReadyAt(g.min_ready, TUE_0830_PRAGUE)).toBe(10);
    expect(minReadyAt(g.min_ready, Date.parse('2026-12-01T11:15:00Z'))).toBe(20);
    expect(minReadyAt(g.min_ready, TUE_0630_PRAGUE)).toBe(2);
    expect(minReadyAt(g.min_ready, TUE_1930_PRAGUE)).toBe(2);
    expect(minReadyAt(g.min_ready, SAT_1000_PRAGUE)).toBe(2);
    expect(periodAt(schedule, TUE_0830_PRAGUE)?.value).toBe(10);
    expect(minReadyAt(3, TUE_0830_PRAGUE)).toBe(3);
    // The time zone defaults to UTC.
    const utc = parseConfig({ groups: [{ name: 'g', min_ready: { default: 0, periods: [{ cron: '* 7 * * *', value: 5 }] } }] }, {}).groups[0]!;
    expect(minReadyAt(utc.min_ready, TUE_0830_PRAGUE)).toBe(5);
  });

  it('gives the next 24 hours as runs of one value', () => {
    const runs = minReadyTimeline(schedule, Date.parse('2026-12-01T00:00:00Z'), 24);
    expect(runs.map((r) => [new Date(r.from).toISOString().slice(11, 16), r.value])).toEqual([
      ['00:00', 2],
      ['07:00', 10],
      ['11:00', 20],
      ['13:00', 10],
      ['18:00', 2],
    ]);
    expect(runs.at(-1)!.to).toBe(Date.parse('2026-12-02T00:00:00Z'));
  });

  it('refuses a bad cron expression or time zone, naming the field', () => {
    const bad = (period: Record<string, unknown>) => () => parseConfig({ groups: [{ name: 'g', min_ready: { default: 1, periods: [period] } }] }, {});
    expect(bad({ cron: '* * * *', value: 1 })).toThrow(/groups\.0\.min_ready.*5 fields/s);
    expect(bad({ cron: '0 * * * * *', value: 1 })).toThrow(ConfigError);
    expect(bad({ cron: '* 25 * * *', value: 1 })).toThrow(/groups\.0\.min_ready/);
    expect(bad({ cron: '* * * * *', tz: 'Mars/Olympus', value: 1 })).toThrow(/time zone/);
    expect(bad({ cron: '* * * * *', value: -1 })).toThrow(ConfigError);
  });

  const vm = (name: string, over: Partial<VmRecord> = {}): VmRecord =>
    ({
      vmName: name, vmIp: '10.0.0.1', group: 'g', state: 'ready', owner: null, boundToUser: null, sandbox: null, usedByWorker: null, taskId: null,
      buildId: null, chroot: null, inUseSince: null, lastHealthCheck: 1, checkFails: 0, lastRelease: null, buildsCount: 0,
      terminatingSince: null, addedAt: 1, boundSince: null, leaseId: null, leaseExpiresAt: null, heldBy: null, heldSince: null, ...over,
    }) as VmRecord;

  it('spawns up to the value in force, and after a period retires only idle clean VMs', () => {
    const config = parseConfig({ groups: [{ name: 'g', min_ready: schedule, max_vm_total: 30, max_spawn_processes: 30, vm_spawn_min_interval: 0 }] }, {});
    const snapshot = (vms: VmRecord[], demand = 0): PoolSnapshot => ({ vms, groups: [{ group: 'g', spawnsInFlight: [], demand, lastSpawnStart: null }], serverStart: 0 });
    expect(decideStartSpawnIfRequired(snapshot([]), config, TUE_0830_PRAGUE)).toHaveLength(10);
    expect(decideStartSpawnIfRequired(snapshot([]), config, TUE_1930_PRAGUE)).toHaveLength(2);

    const pool = [
      ...Array.from({ length: 6 }, (_, i) => vm(`clean-${i}`, { addedAt: 100 + i })),
      vm('busy', { state: 'in_use', owner: 'alice', boundToUser: 'alice' }),
      vm('dirty', { owner: 'bob', boundToUser: 'bob', lastRelease: 5 }),
      vm('held', { heldBy: 'ops' }),
      vm('coming', { state: 'check_health' }),
    ];
    // 19:30: 2 in force, 1 waiting request: 3 of the 6 idle clean VMs stay, the 3 idle longest go.
    const retired = decideRetireSurplus(snapshot(pool, 1), config, TUE_1930_PRAGUE);
    expect(retired.map((a) => a.type === 'terminate' && [a.vmName, a.reason, a.allowedPreState])).toEqual([
      ['clean-0', 'surplus', 'ready'],
      ['clean-1', 'surplus', 'ready'],
      ['clean-2', 'surplus', 'ready'],
    ]);
    // Inside the period nothing is surplus; a fixed min_ready never retires anything.
    expect(decideRetireSurplus(snapshot(pool), config, TUE_0830_PRAGUE)).toEqual([]);
    const fixed = parseConfig({ groups: [{ name: 'g', min_ready: 0 }] }, {});
    expect(decideRetireSurplus(snapshot(pool), fixed, TUE_1930_PRAGUE)).toEqual([]);
  });
});

describe('a reconcile cycle follows the schedule (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('min-ready-schedule');
  const input: ConfigInput = {
    groups: [{ name: 'sched', min_ready: { default: 1, periods: [{ cron: '* 8-18 * * 1-5', tz: 'Europe/Prague', value: 3 }] }, max_vm_total: 5, max_spawn_processes: 5, vm_spawn_min_interval: 0, lease_timeout: 86_400 }],
  };
  const clock = { now: TUE_0830_PRAGUE };
  let redis: Redis;
  let vmm: VmManager;
  let master: VmMaster;
  let spawnQueue: Queue;
  let terminateQueue: Queue;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
    master = new VmMaster(vmm);
    spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
    terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
    await vmm.markServerStart();
  });
  afterAll(async () => {
    await spawnQueue?.close();
    await terminateQueue?.close();
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('spawns for the period, then retires the surplus when it ends, leaving a VM in use alone', async () => {
    await master.doCycle();
    expect(await spawnQueue.getJobCountByTypes('waiting', 'prioritized', 'delayed')).toBe(3);
    // The spawns arrive: four ready VMs (one more than the period asks, as after a manual add).
    for (const [i, name] of ['s1', 's2', 's3', 's4'].entries()) {
      await vmm.addVmToPool(`10.7.0.${i + 1}`, name, 'sched');
      await vmm.startVmCheck(name);
      await vmm.recordHealthCheckResult(name, true);
    }
    for (const s of await vmm.getSpawnsInFlight('sched')) await vmm.finishSpawn('sched', s.spawnId);
    const busy = await vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/p', workerId: 'w1' });

    clock.now = TUE_1930_PRAGUE + 60_000;
    const report = await master.doCycle();
    expect(report.counts.retireSurplus).toBe(2);
    const jobs = await terminateQueue.getJobs(['waiting', 'prioritized', 'delayed']);
    expect(jobs.map((j) => j.data.reason)).toEqual(['surplus', 'surplus']);
    expect(jobs.map((j) => j.data.vmName)).not.toContain(busy.vmName);
    expect((await vmm.getVmByName(busy.vmName)).state).toBe('in_use');
    const ready = await vmm.getVmsByGroupAndStates('sched', ['ready']);
    expect(ready).toHaveLength(1);
  });
});

describe('vmpool config check', () => {
  it('prints the effective min_ready for the next 24 hours', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-sched-'));
    try {
      const file = join(dir, 'vmpool.yaml');
      writeFileSync(file, stringify({ groups: [{ name: 'sched', min_ready: schedule }] }));
      let out = '';
      const code = await runCli(['config', 'check', file], { out: (t) => (out += t), err: (t) => (out += t), env: {}, now: () => Date.parse('2026-12-01T00:00:00Z') });
      expect(code, out).toBe(0);
      expect(out).toContain('group sched: min_ready over the next 24 hours (UTC):');
      expect(out).toContain('2026-12-01 07:00 - 2026-12-01 11:00  10');
      expect(out).toContain('2026-12-01 11:00 - 2026-12-01 13:00  20');
      expect(out).toContain('2026-12-01 18:00 - 2026-12-02 00:00  2');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
