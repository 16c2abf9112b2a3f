import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { classifySpawnFailure } from '../../src/providers/spawnErrors.js';
import { blockedGroups, demandGroupsOf, withFallbacks } from '../../src/acquire/fallback.js';
import { demandByGroup } from '../../src/reconcile/demand.js';
import { breakerGate } from '../../src/reconcile/breaker.js';
import { decideStartSpawnIfRequired, type PoolSnapshot } from '../../src/reconcile/decisions.js';
import { connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';
import { writeConfigFile } from '../helpers/processes.js';
import { createMetricsRegistry } from '../../src/metrics/registry.js';
import { groupSummaries } from '../../src/poolView.js';
import { runCli } from '../../src/cli/program.js';

describe('typed spawn hook errors', () => {
  it('reads the class from JSON on the last line, else from the exit code', () => {
    expect(classifySpawnFailure('booting\n{"error": "quota", "message": "cores quota exceeded"}\n', 1)).toEqual({ errorClass: 'quota', message: 'cores quota exceeded' });
    expect(classifySpawnFailure('{"error":"capacity"}', 1)).toEqual({ errorClass: 'capacity', message: null });
    expect(classifySpawnFailure('', 80).errorClass).toBe('quota');
    expect(classifySpawnFailure('', 81).errorClass).toBe('capacity');
    expect(classifySpawnFailure('', 82).errorClass).toBe('rate_limit');
    expect(classifySpawnFailure('', 77).errorClass).toBe('auth');
    expect(classifySpawnFailure('', 75).errorClass).toBe('transient');
    expect(classifySpawnFailure('', 64).errorClass).toBe('invalid_request');
    // An unknown class, garbage or another code: unclassified (the exit code still counts).
    expect(classifySpawnFailure('{"error": "meteor"}', 1).errorClass).toBe('unclassified');
    expect(classifySpawnFailure('{"error": "meteor"}', 80).errorClass).toBe('quota');
    expect(classifySpawnFailure('{not json', 2).errorClass).toBe('unclassified');
    expect(classifySpawnFailure('x', null).errorClass).toBe('unclassified');
    expect(classifySpawnFailure(`{"error":"quota","message":"${'m'.repeat(1000)}"}`, 1).message).toHaveLength(300);
  });
});

describe('spawn circuit breaker (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('breaker');
  const input: ConfigInput = {
    groups: [
      { name: 'b', max_vm_total: 4, max_spawn_processes: 4, vm_spawn_min_interval: 0, min_ready: 2, breaker: { failures: 2, backoff: 10, max_backoff: 25 } },
      { name: 'other', max_vm_total: 4, min_ready: 1, vm_spawn_min_interval: 0 },
    ],
  };
  const clock = { now: 1_000_000 };
  let redis: Redis;
  let vmm: VmManager;

  beforeAll(() => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  const snapshot = async (inFlight = 0): Promise<PoolSnapshot> => ({
    vms: [],
    groups: await Promise.all(
      ['b', 'other'].map(async (group) => ({
        group,
        spawnsInFlight: Array.from({ length: group === 'b' ? inFlight : 0 }, (_, i) => ({ spawnId: `s${i}`, startedAt: clock.now })),
        demand: 0,
        lastSpawnStart: null,
        breaker: await vmm.reader.breaker(group),
      })),
    ),
    serverStart: 1,
  });
  const spawns = async (inFlight = 0) => decideStartSpawnIfRequired(await snapshot(inFlight), vmm.config, clock.now).filter((a) => a.type === 'spawn' && a.group === 'b').map((a) => a.type === 'spawn' && a.reason);

  it('opens after repeated failures of one class, backs off longer at each opening, and a probe success closes it', async () => {
    expect(await spawns()).toEqual(['warm_pool', 'warm_pool']);
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'quota', 'quota exceeded')).toBe(false);
    // Another class starts the run again.
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'capacity')).toBe(false);
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'quota', 'quota exceeded')).toBe(false);
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'quota', 'quota exceeded')).toBe(true);
    const opened = await vmm.reader.breaker('b');
    expect(opened).toMatchObject({ open: true, errorClass: 'quota', failures: 2, openings: 1, openUntil: clock.now + 10_000, message: 'quota exceeded' });
    expect(await spawns()).toEqual([]);
    // The other group is not affected.
    expect(await vmm.reader.breaker('other')).toBeNull();
    expect(decideStartSpawnIfRequired(await snapshot(), vmm.config, clock.now).filter((a) => a.type === 'spawn' && a.group === 'other')).toHaveLength(1);

    // The backoff passed: one probe, and only while no spawn is in flight.
    clock.now += 10_000;
    expect(breakerGate(await vmm.reader.breaker('b'), clock.now)).toBe('probe');
    expect(await spawns()).toEqual(['probe']);
    expect(await spawns(1)).toEqual([]);
    // The probe failed: open again for twice as long, then capped at max_backoff.
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'quota')).toBe(true);
    expect((await vmm.reader.breaker('b'))!.openUntil).toBe(clock.now + 20_000);
    clock.now += 20_000;
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'quota')).toBe(true);
    expect((await vmm.reader.breaker('b'))!.openUntil).toBe(clock.now + 25_000);
    // Failures reported while it is open (attempts that were already running) change nothing.
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'quota')).toBe(false);
    expect((await vmm.reader.breaker('b'))!.openUntil).toBe(clock.now + 25_000);
    clock.now += 25_000;
    expect(await spawns()).toEqual(['probe']);
    await vmm.recordSpawnOutcome('b', 'ok');
    expect(await vmm.reader.breaker('b')).toBeNull();
    expect(await spawns()).toEqual(['warm_pool', 'warm_pool']);
  });

  it('is on the metrics, the groups summary and the CLI while open', async () => {
    await vmm.recordSpawnOutcome('b', 'failed', 'rate_limit', 'HTTP 429');
    await vmm.recordSpawnOutcome('b', 'failed', 'rate_limit', 'HTTP 429');
    const registry = createMetricsRegistry({ vmm, queue: (name) => vmm.queue(name) });
    const text = await registry.getSingleMetricAsString('vmpool_provider_breaker_open');
    expect(text).toContain('vmpool_provider_breaker_open{group="b",error_class="rate_limit"} 1');
    expect(text).toContain('vmpool_provider_breaker_open{group="other",error_class=""} 0');
    const [b] = await groupSummaries(vmm);
    expect(b!.breaker).toMatchObject({ errorClass: 'rate_limit', failures: 2, openUntil: clock.now + 10_000, message: 'HTTP 429' });
    let out = '';
    const io = { out: (t: string) => (out += t), err: (t: string) => (out += t), env: { REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', VMPOOL_PREFIX: prefix }, now: () => clock.now };
    const file = writeConfigFile(input);
    expect(await runCli(['--config', file, 'breaker'], io)).toBe(0);
    // The CLI runs on the real clock, past this test's injected one: the probe is due.
    expect(out).toContain('group b: spawn breaker OPEN (rate_limit, 2 failures in a row: HTTP 429), probe due');
    out = '';
    expect(await runCli(['--config', file, 'breaker', 'reset', 'b'], io)).toBe(0);
    expect(out).toContain('breaker of group b closed');
    expect(await vmm.reader.breaker('b')).toBeNull();
  });

  it('stays open until an operator resets it for auth and invalid_request', async () => {
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'auth', 'token expired')).toBe(true);
    const b = await vmm.reader.breaker('b');
    expect(b).toMatchObject({ open: true, errorClass: 'auth', openUntil: null });
    clock.now += 86_400_000;
    expect(breakerGate(b, clock.now)).toBe('none');
    expect(await spawns()).toEqual([]);
    await vmm.resetBreaker('b');
    expect(await spawns()).toEqual(['warm_pool', 'warm_pool']);
    expect(await vmm.recordSpawnOutcome('b', 'failed', 'invalid_request')).toBe(true);
    expect((await vmm.reader.breaker('b'))!.openUntil).toBeNull();
    await vmm.resetBreaker('b');
  });
});

describe('breaker config', () => {
  it('takes optional settings and refuses bad fallback groups', () => {
    const cfg = parseConfig({ groups: [{ name: 'a', fallback_groups: ['b'] }, { name: 'b' }] }, {});
    expect(cfg.groups[0]!.fallback_groups).toEqual(['b']);
    expect('breaker' in cfg.groups[1]!).toBe(false);
    expect(() => parseConfig({ groups: [{ name: 'a', fallback_groups: ['a'] }] }, {})).toThrow(/another group than this one/);
    expect(() => parseConfig({ groups: [{ name: 'a', fallback_groups: ['zz'] }] }, {})).toThrow(/"zz" is none; groups: a/);
    expect(() => parseConfig({ groups: [{ name: 'a', breaker: { failures: 0 } }] }, {})).toThrow();
  });
});

describe('fallback groups (pure)', () => {
  const groups = parseConfig({ groups: [{ name: 'spot', fallback_groups: ['ondemand', 'big'] }, { name: 'ondemand' }, { name: 'big', max_vm_total: 1 }] }, {}).groups;

  it('adds the fallbacks of a blocked group after it, each once, unless the request is strict', () => {
    expect(withFallbacks(groups, ['spot'], new Set())).toEqual(['spot']);
    expect(withFallbacks(groups, ['spot'], new Set(['spot']))).toEqual(['spot', 'ondemand', 'big']);
    expect(withFallbacks(groups, ['spot', 'big'], new Set(['spot']))).toEqual(['spot', 'ondemand', 'big']);
    expect(withFallbacks(groups, ['spot'], new Set(['spot']), true)).toEqual(['spot']);
  });

  it('counts demand in the blocked group asked for and in the first serving group that is not blocked', () => {
    expect(demandGroupsOf(['spot'], ['spot'], new Set())).toEqual(['spot']);
    expect(demandGroupsOf(['spot'], ['spot', 'ondemand', 'big'], new Set(['spot']))).toEqual(['spot', 'ondemand']);
    expect(demandGroupsOf(['spot'], ['spot', 'ondemand', 'big'], new Set(['spot', 'ondemand']))).toEqual(['spot', 'big']);
    expect(demandGroupsOf(['spot'], ['spot', 'ondemand', 'big'], new Set(['spot', 'ondemand', 'big']))).toEqual(['spot']);
    expect(demandByGroup([{ jobId: 'a', groups: ['spot'] }, { jobId: 'a', groups: ['spot'] }, { jobId: 'b', groups: ['ondemand'] }], ['spot', 'ondemand', 'big'], (r) => demandGroupsOf(r.groups, withFallbacks(groups, r.groups, new Set(['spot'])), new Set(['spot'])))).toEqual([1, 2, 0]);
  });

  it('blocks a group with an open breaker or at max_vm_total', () => {
    const open = { errorClass: 'quota', failures: 3, openings: 1, open: true, openedAt: 1, openUntil: 10_000, message: null };
    expect([...blockedGroups(groups, [{ group: 'spot', breaker: open, active: 0 }, { group: 'ondemand', breaker: null, active: 7 }, { group: 'big', active: 1 }], 5_000)]).toEqual(['spot', 'big']);
    // Past its backoff the breaker still blocks new demand until its probe closes it.
    expect([...blockedGroups(groups, [{ group: 'spot', breaker: open, active: 0 }], 20_000)]).toEqual(['spot']);
  });

  it("blocks a group whose next spawn does not fit a resource limit (reconcile's quota_full marker)", () => {
    expect([...blockedGroups(groups, [{ group: 'spot', breaker: null, active: 0, quotaFull: true }, { group: 'ondemand', breaker: null, active: 0, quotaFull: false }], 5_000)]).toEqual(['spot']);
    expect(withFallbacks(groups, ['spot'], blockedGroups(groups, [{ group: 'spot', active: 0, quotaFull: true }], 5_000))).toEqual(['spot', 'ondemand', 'big']);
  });
});
