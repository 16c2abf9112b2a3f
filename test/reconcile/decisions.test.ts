import { describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import type { VmRecord, VmState } from '../../src/pool/types.js';
import {
  decideCheckVmsHealth,
  decideFinalizeLongHealthChecks,
  decideRecheckAfterServerStart,
  decideRemoveOldDirtyVms,
  decideRetireSurplus,
  decideStartSpawnIfRequired,
  decideTerminateAgain,
  type GroupSnapshot,
  type PoolSnapshot,
  type ReconcileAction,
} from '../../src/reconcile/decisions.js';

const NOW = 1_750_000_000_000;
const S = 1000;

type GroupInput = NonNullable<ConfigInput['groups']>[number];
function config(...groups: Partial<GroupInput>[]) {
  return parseConfig({ groups: groups.map((g, i) => ({ name: `g${i}`, ...g })) }, {});
}

let seq = 0;
function vm(state: VmState, fields: Partial<VmRecord> = {}): VmRecord {
  seq += 1;
  return {
    vmName: `vm${seq}`,
    vmIp: `10.0.0.${seq % 250}`,
    group: 'g0',
    state,
    owner: null,
    boundToUser: null,
    sandbox: null,
    usedByWorker: null,
    taskId: null,
    buildId: null,
    chroot: null,
    inUseSince: null,
    lastHealthCheck: NOW - S,
    checkFails: 0,
    lastRelease: null,
    buildsCount: 0,
    terminatingSince: null,
    addedAt: null,
    boundSince: null,
    leaseId: null,
    leaseExpiresAt: null,
    heldBy: null,
    heldSince: null,
    heldUntil: null,
    holdReason: null,
    ...fields,
  };
}

function group(fields: Partial<GroupSnapshot> = {}): GroupSnapshot {
  return { group: 'g0', spawnsInFlight: [], demand: 0, lastSpawnStart: null, ...fields };
}

function snap(vms: VmRecord[], groups: GroupSnapshot[] = [group()], serverStart: number | null = null): PoolSnapshot {
  return { vms, groups, serverStart };
}

const names = (actions: ReconcileAction[]) => actions.map((a) => ('vmName' in a ? a.vmName : undefined));

describe('decideRemoveOldDirtyVms', () => {
  const cfg = config({ vm_dirty_terminating_timeout: 120 });
  const dirty = (lastRelease: number, extra: Partial<VmRecord> = {}) =>
    vm('ready', { owner: 'alice', sandbox: 'sb', lastRelease, boundSince: lastRelease, buildsCount: 1, ...extra });

  it('keeps a dirty VM released exactly the timeout ago and terminates it 1 ms later (strict, as Copr)', () => {
    const atBoundary = dirty(NOW - 120 * S);
    const past = dirty(NOW - 120 * S - 1);
    const actions = decideRemoveOldDirtyVms(snap([atBoundary, past]), cfg, NOW);
    expect(actions).toEqual([{ type: 'terminate', vmName: past.vmName, allowedPreState: 'ready', reason: 'dirty_timeout' }]);
  });

  it('leaves clean VMs, VMs in use and VMs never released alone', () => {
    const clean = vm('ready', { lastRelease: NOW - 1000 * S });
    const inUse = vm('in_use', { owner: 'alice', sandbox: 'sb', lastRelease: NOW - 1000 * S });
    const neverReleased = vm('ready', { owner: 'alice', sandbox: 'sb', lastRelease: null });
    expect(decideRemoveOldDirtyVms(snap([clean, inUse, neverReleased]), cfg, NOW)).toEqual([]);
  });

  it('retires a dirty VM at reuse_max_count builds, not one build before', () => {
    const c = config({ vm_dirty_terminating_timeout: 120, reuse_max_count: 3 });
    const below = dirty(NOW, { buildsCount: 2 });
    const at = dirty(NOW, { buildsCount: 3 });
    const actions = decideRemoveOldDirtyVms(snap([below, at]), c, NOW);
    expect(actions).toEqual([{ type: 'terminate', vmName: at.vmName, allowedPreState: 'ready', reason: 'reuse_limit' }]);
  });

  it('retires a dirty VM once bound for reuse_max_time, not 1 ms before', () => {
    const c = config({ vm_dirty_terminating_timeout: 120, reuse_max_time: 600 });
    const before = dirty(NOW, { boundSince: NOW - 600 * S + 1 });
    const at = dirty(NOW, { boundSince: NOW - 600 * S });
    expect(names(decideRemoveOldDirtyVms(snap([before, at]), c, NOW))).toEqual([at.vmName]);
  });

  it('has no reuse limits when they are 0', () => {
    const old = dirty(NOW, { buildsCount: 10_000, boundSince: NOW - 1e9 });
    expect(decideRemoveOldDirtyVms(snap([old]), cfg, NOW)).toEqual([]);
  });

  it('names the dirty timeout when both rules apply', () => {
    const c = config({ vm_dirty_terminating_timeout: 120, reuse_max_count: 1 });
    const both = dirty(NOW - 121 * S, { buildsCount: 5 });
    expect(decideRemoveOldDirtyVms(snap([both]), c, NOW)[0]).toMatchObject({ reason: 'dirty_timeout' });
  });

  it('leaves a VM an operator holds alone', () => {
    const held = dirty(NOW - 1000 * S, { heldBy: 'ops', heldSince: NOW - 10 * S } as Partial<VmRecord>);
    expect(decideRemoveOldDirtyVms(snap([held]), cfg, NOW)).toEqual([]);
  });

  it('uses each group its own timeout', () => {
    const c = config({ vm_dirty_terminating_timeout: 120 }, { vm_dirty_terminating_timeout: 10 });
    const g0 = dirty(NOW - 60 * S);
    const g1 = dirty(NOW - 60 * S, { group: 'g1' });
    expect(names(decideRemoveOldDirtyVms(snap([g0, g1]), c, NOW))).toEqual([g1.vmName]);
  });
});

describe('decideCheckVmsHealth', () => {
  const cfg = config({ vm_health_check_period: 120 });

  it('checks a VM whose last check is 1 ms past the period, not one exactly at it', () => {
    const at = vm('ready', { lastHealthCheck: NOW - 120 * S });
    const past = vm('ready', { lastHealthCheck: NOW - 120 * S - 1 });
    expect(decideCheckVmsHealth(snap([at, past]), cfg, NOW)).toEqual([{ type: 'enqueueHealth', vmName: past.vmName }]);
  });

  it('checks never-checked VMs in every checked state, and never terminating or check_health VMs', () => {
    const states: VmState[] = ['got_ip', 'ready', 'in_use', 'check_health_failed', 'check_health', 'terminating'];
    const vms = states.map((s) => vm(s, { lastHealthCheck: null }));
    expect(names(decideCheckVmsHealth(snap(vms), cfg, NOW))).toEqual(vms.slice(0, 4).map((v) => v.vmName));
  });

  it('checks stale VMs in got_ip, in_use and check_health_failed too', () => {
    const vms = (['got_ip', 'in_use', 'check_health_failed'] as VmState[]).map((s) => vm(s, { lastHealthCheck: NOW - 121 * S }));
    expect(decideCheckVmsHealth(snap(vms), cfg, NOW)).toHaveLength(3);
  });

  it('keeps Copr\'s rule only: a VM checked before the server start, within the period, is not its business', () => {
    const serverStart = NOW - 10 * S;
    const before = vm('ready', { lastHealthCheck: serverStart - 1 });
    expect(decideCheckVmsHealth(snap([before], [group()], serverStart), cfg, NOW)).toEqual([]);
  });
});

describe('decideRecheckAfterServerStart', () => {
  const cfg = config({ vm_health_check_period: 120 });

  // A check in the start's own millisecond may have run just before it (acquire orders such ties by
  // sequence), so it is checked again; a check in a later millisecond is not.
  it('checks a ready VM last checked before or at the server start, but not one checked after it', () => {
    const serverStart = NOW - 10 * S;
    const before = vm('ready', { lastHealthCheck: serverStart - 1 });
    const at = vm('ready', { lastHealthCheck: serverStart });
    const after = vm('ready', { lastHealthCheck: serverStart + 1 });
    const inUseBefore = vm('in_use', { lastHealthCheck: serverStart - 1 });
    expect(names(decideRecheckAfterServerStart(snap([before, at, after, inUseBefore], [group()], serverStart), cfg, NOW))).toEqual(
      [before.vmName, at.vmName].sort(),
    );
  });

  it('orders a check in the server start millisecond by check_seq when known', () => {
    const serverStart = NOW - 10 * S;
    const checkedBefore = vm('ready', { lastHealthCheck: serverStart, checkSeq: 4 });
    const checkedAfter = vm('ready', { lastHealthCheck: serverStart, checkSeq: 6 });
    const snapshot = { ...snap([checkedBefore, checkedAfter], [group()], serverStart), serverStartSeq: 5 };
    expect(names(decideRecheckAfterServerStart(snapshot, cfg, NOW))).toEqual([checkedBefore.vmName]);
  });

  it('leaves VMs that checkVmsHealth checks anyway (past the period) to it, and does nothing without a server start', () => {
    const serverStart = NOW - 10 * S;
    const stale = vm('ready', { lastHealthCheck: NOW - 121 * S });
    expect(decideRecheckAfterServerStart(snap([stale], [group()], serverStart), cfg, NOW)).toEqual([]);
    expect(decideRecheckAfterServerStart(snap([vm('ready', { lastHealthCheck: NOW - 20 * S })], [group()], null), cfg, NOW)).toEqual([]);
  });
});

describe('decideFinalizeLongHealthChecks', () => {
  const cfg = config({ vm_health_check_max_time: 300 });

  it('marks a check running 1 ms past the max time, not one exactly at it', () => {
    const at = vm('check_health', { lastHealthCheck: NOW - 300 * S });
    const past = vm('check_health', { lastHealthCheck: NOW - 300 * S - 1 });
    expect(decideFinalizeLongHealthChecks(snap([at, past]), cfg, NOW)).toEqual([{ type: 'markCheckFailed', vmName: past.vmName }]);
  });

  it('only looks at check_health; a missing start counts as long ago', () => {
    const other = vm('ready', { lastHealthCheck: NOW - 1e9 });
    const noStart = vm('check_health', { lastHealthCheck: null });
    expect(names(decideFinalizeLongHealthChecks(snap([other, noStart]), cfg, NOW))).toEqual([noStart.vmName]);
  });
});

describe('decideTerminateAgain', () => {
  const cfg = config({ vm_terminating_timeout: 600 });

  it('requests again 1 ms past the timeout, not exactly at it', () => {
    const at = vm('terminating', { terminatingSince: NOW - 600 * S });
    const past = vm('terminating', { terminatingSince: NOW - 600 * S - 1 });
    expect(decideTerminateAgain(snap([at, past]), cfg, NOW)).toEqual([
      { type: 'terminate', vmName: past.vmName, allowedPreState: 'terminating', reason: 'terminate_again' },
    ]);
  });

  it('only removes the stale record when another VM has the same IP', () => {
    const stale = vm('terminating', { vmIp: '10.9.9.9', terminatingSince: NOW - 601 * S });
    const fresh = vm('ready', { vmIp: '10.9.9.9' });
    expect(decideTerminateAgain(snap([stale, fresh]), cfg, NOW)).toEqual([{ type: 'removeStaleRecord', vmName: stale.vmName }]);
  });

  it('of two stale records sharing an IP, removes one and terminates the other (Copr sequential)', () => {
    const a = vm('terminating', { vmName: 'a-vm', vmIp: '10.8.8.8', terminatingSince: NOW - 601 * S });
    const b = vm('terminating', { vmName: 'b-vm', vmIp: '10.8.8.8', terminatingSince: NOW - 601 * S });
    expect(decideTerminateAgain(snap([b, a]), cfg, NOW)).toEqual([
      { type: 'removeStaleRecord', vmName: 'a-vm' },
      { type: 'terminate', vmName: 'b-vm', allowedPreState: 'terminating', reason: 'terminate_again' },
    ]);
  });

  it('ignores VMs not terminating and treats a missing terminating_since as long ago', () => {
    const ready = vm('ready');
    const noSince = vm('terminating', { terminatingSince: null });
    expect(names(decideTerminateAgain(snap([ready, noSince]), cfg, NOW))).toEqual([noSince.vmName]);
  });
});

describe('decideStartSpawnIfRequired', () => {
  const base = { max_vm_total: 4, max_spawn_processes: 2, vm_spawn_min_interval: 30, min_ready: 1 };
  const spawns = (actions: { type: string }[]) => actions.filter((a) => a.type === 'spawn');

  it('spawns nothing without warm pool or demand (Copr spawned blindly; we do not)', () => {
    const cfg = config({ ...base, min_ready: 0 });
    expect(decideStartSpawnIfRequired(snap([]), cfg, NOW)).toEqual([]);
  });

  it('fills the warm pool, one spawn per cycle when the interval is above 0', () => {
    const cfg = config({ ...base, min_ready: 3 });
    expect(decideStartSpawnIfRequired(snap([]), cfg, NOW)).toEqual([{ type: 'spawn', group: 'g0', reason: 'warm_pool' }]);
  });

  it('spawns for demand beyond the warm pool', () => {
    const cfg = config({ ...base, min_ready: 0 });
    expect(decideStartSpawnIfRequired(snap([], [group({ demand: 2 })]), cfg, NOW)).toEqual([{ type: 'spawn', group: 'g0', reason: 'demand' }]);
  });

  it('counts clean ready, unbound got_ip/check_health and spawns in flight as coming supply', () => {
    const cfg = config({ ...base, min_ready: 3, max_vm_total: 10, max_spawn_processes: 5 });
    const vms = [vm('ready'), vm('got_ip'), vm('check_health')];
    expect(decideStartSpawnIfRequired(snap(vms), cfg, NOW)).toEqual([]);
    const dirtyReady = vm('ready', { owner: 'bob' });
    const boundCheck = vm('check_health', { owner: 'bob' });
    expect(spawns(decideStartSpawnIfRequired(snap([dirtyReady, boundCheck, vm('in_use')]), cfg, NOW))).toHaveLength(1);
    const inFlight = [1, 2, 3].map((i) => ({ spawnId: `s${i}`, startedAt: NOW - S }));
    expect(decideStartSpawnIfRequired(snap([], [group({ spawnsInFlight: inFlight })]), cfg, NOW)).toEqual([]);
  });

  it('does not count a held clean VM as supply', () => {
    const cfg = config({ ...base, min_ready: 1 });
    const held = vm('ready', { heldBy: 'ops', heldSince: NOW } as Partial<VmRecord>);
    expect(spawns(decideStartSpawnIfRequired(snap([held]), cfg, NOW))).toHaveLength(1);
    expect(decideStartSpawnIfRequired(snap([vm('ready')]), cfg, NOW)).toEqual([]);
  });

  it('waits vm_spawn_min_interval: not 1 ms before, yes exactly at it', () => {
    const cfg = config(base);
    const before = group({ lastSpawnStart: NOW - 30 * S + 1 });
    const at = group({ lastSpawnStart: NOW - 30 * S });
    expect(decideStartSpawnIfRequired(snap([], [before]), cfg, NOW)).toEqual([]);
    expect(spawns(decideStartSpawnIfRequired(snap([], [at]), cfg, NOW))).toHaveLength(1);
  });

  it('stops at active + in flight = max_vm_total, and ignores terminating and failed VMs there', () => {
    const cfg = config({ ...base, max_spawn_processes: 10, vm_spawn_min_interval: 0, min_ready: 0 });
    const busy = (n: number) => Array.from({ length: n }, () => vm('in_use', { owner: 'u' }));
    const demand = group({ demand: 10 });
    expect(decideStartSpawnIfRequired(snap(busy(4), [demand]), cfg, NOW)).toEqual([]);
    expect(spawns(decideStartSpawnIfRequired(snap(busy(3), [demand]), cfg, NOW))).toHaveLength(1);
    const oneInFlight = group({ demand: 10, spawnsInFlight: [{ spawnId: 'x', startedAt: NOW }] });
    expect(decideStartSpawnIfRequired(snap(busy(3), [oneInFlight]), cfg, NOW)).toEqual([]);
    // Terminating VMs do not count; failed ones do (Copr counts every state but terminating).
    const gone = [vm('terminating'), vm('terminating')];
    expect(spawns(decideStartSpawnIfRequired(snap([...busy(3), ...gone], [demand]), cfg, NOW))).toHaveLength(1);
    expect(decideStartSpawnIfRequired(snap([...busy(3), vm('check_health_failed')], [demand]), cfg, NOW)).toEqual([]);
  });

  it('stops at max_spawn_processes spawns in flight', () => {
    const cfg = config({ ...base, max_vm_total: 10, vm_spawn_min_interval: 0, min_ready: 0 });
    const inFlight = (n: number) => Array.from({ length: n }, (_, i) => ({ spawnId: `s${i}`, startedAt: NOW }));
    expect(decideStartSpawnIfRequired(snap([], [group({ demand: 9, spawnsInFlight: inFlight(2) })]), cfg, NOW)).toEqual([]);
    expect(spawns(decideStartSpawnIfRequired(snap([], [group({ demand: 9, spawnsInFlight: inFlight(1) })]), cfg, NOW))).toHaveLength(1);
  });

  it('stops at 2 × max_vm_total VMs in the group, whatever their state', () => {
    const cfg = config({ ...base, max_spawn_processes: 10, vm_spawn_min_interval: 0, min_ready: 0 });
    const dead = (n: number) => Array.from({ length: n }, () => vm('terminating'));
    expect(decideStartSpawnIfRequired(snap(dead(8), [group({ demand: 1 })]), cfg, NOW)).toEqual([]);
    expect(spawns(decideStartSpawnIfRequired(snap(dead(7), [group({ demand: 1 })]), cfg, NOW))).toHaveLength(1);
  });

  it('with interval 0, starts several spawns in one cycle up to the limits', () => {
    const cfg = config({ ...base, max_vm_total: 10, max_spawn_processes: 3, vm_spawn_min_interval: 0, min_ready: 2 });
    const actions = decideStartSpawnIfRequired(snap([], [group({ demand: 5 })]), cfg, NOW);
    expect(actions).toEqual([
      { type: 'spawn', group: 'g0', reason: 'warm_pool' },
      { type: 'spawn', group: 'g0', reason: 'warm_pool' },
      { type: 'spawn', group: 'g0', reason: 'demand' },
    ]);
    const few = decideStartSpawnIfRequired(snap([], [group({ demand: 0 })]), cfg, NOW);
    expect(spawns(few)).toHaveLength(2);
  });

  it('drops spawns in flight 1 ms past vm_spawn_stale_timeout and no longer counts them', () => {
    const cfg = config({ ...base, vm_spawn_stale_timeout: 1800, max_spawn_processes: 1 });
    const at = { spawnId: 'at', startedAt: NOW - 1800 * S };
    const stale = { spawnId: 'stale', startedAt: NOW - 1800 * S - 1 };
    expect(decideStartSpawnIfRequired(snap([], [group({ spawnsInFlight: [at] })]), cfg, NOW)).toEqual([]);
    expect(decideStartSpawnIfRequired(snap([], [group({ spawnsInFlight: [stale] })]), cfg, NOW)).toEqual([
      { type: 'dropStaleSpawn', group: 'g0', spawnId: 'stale' },
      { type: 'spawn', group: 'g0', reason: 'warm_pool' },
    ]);
  });

  it('decides each group on its own figures', () => {
    const cfg = config({ ...base, min_ready: 0 }, { ...base, min_ready: 1 });
    const vms = [vm('in_use', { group: 'g1', owner: 'u' })];
    const actions = decideStartSpawnIfRequired(snap(vms, [group({ group: 'g0', demand: 1 }), group({ group: 'g1', lastSpawnStart: NOW })]), cfg, NOW);
    expect(actions).toEqual([{ type: 'spawn', group: 'g0', reason: 'demand' }]);
  });
});

describe('snapshots of only the due VMs (counts and IPs from the indexes)', () => {
  it('terminateAgain takes the IP sharers from vmsByIp, not only from the VMs read', () => {
    const cfg = config({ vm_terminating_timeout: 600 });
    const stale = vm('terminating', { vmName: 'stale', vmIp: '10.9.9.7', terminatingSince: NOW - 601 * S });
    // The VM that now has the IP is not due, so it is not in vms; the ip index names it.
    const alone = snap([stale]);
    expect(decideTerminateAgain(alone, cfg, NOW)).toEqual([{ type: 'terminate', vmName: 'stale', allowedPreState: 'terminating', reason: 'terminate_again' }]);
    const withIps: PoolSnapshot = { ...alone, vmsByIp: new Map([['10.9.9.7', ['stale', 'other']]]) };
    expect(decideTerminateAgain(withIps, cfg, NOW)).toEqual([{ type: 'removeStaleRecord', vmName: 'stale' }]);
  });

  it('spawn decisions use the group counts when given, whatever vms holds', () => {
    const cfg = config({ min_ready: 2, max_vm_total: 3, vm_spawn_min_interval: 0, max_spawn_processes: 5 });
    // No VM is due, yet the group has 3 VMs, 2 of them coming: at max_vm_total, nothing spawns.
    expect(decideStartSpawnIfRequired(snap([], [group({ counts: { active: 3, all: 3, coming: 2 } })]), cfg, NOW)).toEqual([]);
    // 1 VM, coming 1: one spawn fills the warm pool.
    expect(decideStartSpawnIfRequired(snap([], [group({ counts: { active: 1, all: 1, coming: 1 } })]), cfg, NOW)).toEqual([{ type: 'spawn', group: 'g0', reason: 'warm_pool' }]);
  });
});

describe('a group removed from the config (it drains)', () => {
  // Its config is the one reconcile last published; the snapshot marks it removed.
  const cfg = config({ min_ready: 3, max_vm_total: 5, vm_spawn_min_interval: 0 });

  it('spawns nothing, whatever min_ready and its demand ask', () => {
    expect(decideStartSpawnIfRequired(snap([], [group({ demand: 2 })]), cfg, NOW)).not.toEqual([]);
    expect(decideStartSpawnIfRequired(snap([], [group({ demand: 2, removed: true })]), cfg, NOW)).toEqual([]);
  });

  it('keeps no warm pool: its idle clean VMs beyond its waiting requests retire, longest idle first; bound, in-use and held ones stay', () => {
    const idle = [vm('ready', { addedAt: 3 }), vm('ready', { addedAt: 1 }), vm('ready', { addedAt: 2 })];
    const others = [vm('ready', { owner: 'alice', sandbox: 'a' }), vm('in_use', { owner: 'bob' }), vm('ready', { heldBy: 'ops' })];
    const all = [...idle, ...others];
    expect(decideRetireSurplus(snap(all, [group()]), cfg, NOW)).toEqual([]);
    expect(names(decideRetireSurplus(snap(all, [group({ removed: true })]), cfg, NOW))).toEqual([idle[1]!.vmName, idle[2]!.vmName, idle[0]!.vmName]);
    expect(names(decideRetireSurplus(snap(all, [group({ removed: true, demand: 1 })]), cfg, NOW))).toEqual([idle[1]!.vmName, idle[2]!.vmName]);
  });

  it('still retires its dirty VMs by the dirty timeout', () => {
    const old = vm('ready', { owner: 'alice', sandbox: 'a', lastRelease: NOW - 10_000 * S, boundSince: NOW - 10_000 * S });
    expect(names(decideRemoveOldDirtyVms(snap([old], [group({ removed: true })]), cfg, NOW))).toEqual([old.vmName]);
  });
});
