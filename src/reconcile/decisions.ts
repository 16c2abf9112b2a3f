/**
 * Reconcile decisions (Copr's VmMaster), as pure functions: a snapshot of the pool, the config
 * and now (epoch ms) go in, actions come out. Nothing here reads Redis or the clock.
 *
 * Boundaries follow Copr, whose timeouts compare `time.time() - t > timeout` (strict) and whose
 * spawn limits block on `>=`:
 * - dirty timeout, health check period, health check max time, terminating timeout, stale spawn:
 *   act when the elapsed time is strictly greater than the timeout;
 * - vm_spawn_min_interval: a spawn may start once the elapsed time is >= the interval;
 * - reuse_max_count: retire once buildsCount >= the limit; reuse_max_time: once the time bound to
 *   the owner and sandbox is >= the limit (resalloc: the VM has been used that long).
 */
import type { Config, GroupConfig } from '../config/index.js';
import { VmStates, type VmRecord, type VmState } from '../pool/types.js';
import type { TerminationReason } from '../../queues/terminate.js';
import { breakerGate, type BreakerState } from './breaker.js';
import { warmPoolSize, warmPoolVaries, type TargetWaitMeasure } from './targetWait.js';
import { decidesForGroup, type GroupLaunch } from './rollout.js';

/**
 * Why a spawn was requested: to keep the warm pool (`min_ready`), for waiting acquire requests, or
 * as the one probe of an open circuit breaker whose backoff passed.
 */
export type SpawnReason = 'warm_pool' | 'demand' | 'probe';

export type ReconcileAction =
  | { type: 'terminate'; vmName: string; allowedPreState: VmState; reason: TerminationReason }
  | { type: 'enqueueHealth'; vmName: string }
  | { type: 'markCheckFailed'; vmName: string }
  | { type: 'removeStaleRecord'; vmName: string }
  | { type: 'spawn'; group: string; reason: SpawnReason }
  | { type: 'dropStaleSpawn'; group: string; spawnId: string };

export interface SpawnInFlight {
  spawnId: string;
  /** When the spawn was registered (epoch ms). */
  startedAt: number;
}

export interface GroupSnapshot {
  group: string;
  spawnsInFlight: readonly SpawnInFlight[];
  /**
   * Acquire requests still waiting that count for this group: in the line or still queued, each
   * request once, for its first group (demand.ts).
   */
  demand: number;
  /** Copr's `last_vm_spawn_start` (epoch ms), or null if the group never spawned. */
  lastSpawnStart: number | null;
  /** The group's spawn circuit breaker, when it has failures on record (null or absent: closed). */
  breaker?: BreakerState | null;
  /** The arrival rate and boot time measured for a group with target_wait. */
  targetWait?: TargetWaitMeasure;
  /** Drained at run time (`vmpool drain`): spawns nothing, as max_vm_total: 0. */
  drained?: boolean;
  /**
   * Removed from the config (the pool still has its VMs; its config is the last one reconcile
   * published): spawns nothing, keeps no warm pool, and its idle clean VMs beyond its demand retire.
   */
  removed?: boolean;
  /**
   * The group's VM counts from the indexes (VmMaster reads them, as `vms` then holds only the VMs
   * that may be due). Absent: counted from `vms`, which must then hold every VM of the group.
   */
  counts?: GroupCounts;
  /**
   * The group's launch as this process published it (rollout.ts). Absent: not published by this
   * process (a decision run alone), taken as current. Not current: no spawn or retire decision.
   */
  launch?: GroupLaunch;
}

/** A group's VM counts, as spawnFigures uses them. */
export interface GroupCounts {
  /** VMs not terminating. */
  active: number;
  /** Every VM, any state. */
  all: number;
  /** Unbound, unheld VMs in ready, got_ip or check_health. */
  coming: number;
}

export interface PoolSnapshot {
  /**
   * The VMs the decisions may act on: VmMaster reads only those the due-time sets name (due for a
   * check, dirty past a timeout or with a reuse limit, checks started too long ago, terminating
   * too long), plus a group's clean ready VMs when it has a surplus to retire. Every decision
   * re-checks its own rule, so extra VMs change nothing. Tests may give every VM.
   */
  vms: readonly VmRecord[];
  /**
   * The VM names of each IP of the terminating VMs in `vms` (the ip index), for terminateAgain.
   * Absent: taken from `vms`.
   */
  vmsByIp?: ReadonlyMap<string, readonly string[]>;
  /** One entry per configured group. */
  groups: readonly GroupSnapshot[];
  /** The last markServerStart (epoch ms), or null. */
  serverStart: number | null;
  /** Its position in the check_seq order (orders checks in the start's own millisecond), when known. */
  serverStartSeq?: number | null;
}

export type ReconcileConfig = Pick<Config, 'groups'> & Partial<Pick<Config, 'vm_cycle_timeout'>>;

const ms = (seconds: number) => seconds * 1000;

/** The config of the named group, or undefined when the config no longer has it (it drains). */
export function configOfGroup(config: Pick<Config, 'groups'>, name: string): GroupConfig | undefined {
  return config.groups.find((g) => g.name === name);
}

/** The warm pool a group keeps now: min_ready, by schedule, or sized by target_wait. */
export function warmPoolOf(config: ReconcileConfig, group: GroupSnapshot, now: number): number {
  if (group.removed) return 0;
  return warmPoolSize(configOfGroup(config, group.group)!, group.targetWait, now, config.vm_cycle_timeout ?? 10);
}

/** An operator holds the VM out of acquisition (hold/unhold): reconcile neither retires nor counts it. */
function isHeld(vm: VmRecord): boolean {
  return ((vm as { heldBy?: string | null }).heldBy ?? null) !== null;
}

/** VMs whose group is configured, with that group's config (a VM of a removed group is left alone). */
function withGroupConfig(snapshot: PoolSnapshot, config: ReconcileConfig, states: readonly VmState[]): [VmRecord, GroupConfig][] {
  const out: [VmRecord, GroupConfig][] = [];
  for (const vm of snapshot.vms) {
    const g = configOfGroup(config, vm.group);
    if (g && states.includes(vm.state)) out.push([vm, g]);
  }
  return out;
}

/**
 * removeOldDirtyVms: a `ready` VM bound to an owner is terminated when it was not re-acquired within
 * vm_dirty_terminating_timeout of its last release (Copr), or when it reached a reuse limit
 * (resalloc's reuse_max_count / reuse_max_time). VMs in use, and VMs an operator holds, are left alone.
 */
export function decideRemoveOldDirtyVms(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  for (const [vm, g] of withGroupConfig(snapshot, config, [VmStates.READY])) {
    if (vm.owner === null || isHeld(vm)) continue;
    let reason: TerminationReason | null = null;
    if (vm.lastRelease !== null && now - vm.lastRelease > ms(g.vm_dirty_terminating_timeout)) {
      reason = 'dirty_timeout';
    } else if (g.reuse_max_count > 0 && vm.buildsCount >= g.reuse_max_count) {
      reason = 'reuse_limit';
    } else if (g.reuse_max_time > 0 && vm.boundSince !== null && now - vm.boundSince >= ms(g.reuse_max_time)) {
      reason = 'reuse_limit';
    }
    if (reason) actions.push({ type: 'terminate', vmName: vm.vmName, allowedPreState: VmStates.READY, reason });
  }
  return actions;
}

const HEALTH_CHECKED_STATES: readonly VmState[] = [
  VmStates.GOT_IP,
  VmStates.READY,
  VmStates.IN_USE,
  VmStates.CHECK_HEALTH_FAILED,
];

/**
 * Whether the VM's last check came before the last server start, so acquire will not hand it out.
 * Within the start's own millisecond, check_seq tells the order (as acquireVm does); without it,
 * such a check counts as before.
 */
function checkedBeforeServerStart(vm: VmRecord, snapshot: PoolSnapshot): boolean {
  const start = snapshot.serverStart;
  const last = vm.lastHealthCheck;
  if (start === null || last === null) return false;
  if (last !== start) return last < start;
  const startSeq = snapshot.serverStartSeq ?? null;
  const seq = vm.checkSeq ?? null;
  return startSeq === null || seq === null || seq < startSeq;
}

/** Copr's rule: never checked, or last checked more than vm_health_check_period ago. */
function healthCheckDue(vm: VmRecord, g: GroupConfig, now: number): boolean {
  return vm.lastHealthCheck === null || now - vm.lastHealthCheck > ms(g.vm_health_check_period);
}

/**
 * checkVmsHealth (Copr): a health job for every VM in got_ip, ready, in_use or check_health_failed
 * that was never checked or whose last check is older than vm_health_check_period.
 */
export function decideCheckVmsHealth(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  for (const [vm, g] of withGroupConfig(snapshot, config, HEALTH_CHECKED_STATES)) {
    if (healthCheckDue(vm, g, now)) actions.push({ type: 'enqueueHealth', vmName: vm.vmName });
  }
  return actions;
}

/**
 * recheckAfterServerStart (beyond Copr): a health job for a ready VM last checked before the server
 * start and not due under checkVmsHealth's rule. Acquire does not hand such a VM out until it is
 * checked again, so it would otherwise sit unusable for up to a whole period after a restart.
 */
export function decideRecheckAfterServerStart(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  for (const [vm, g] of withGroupConfig(snapshot, config, [VmStates.READY])) {
    if (!healthCheckDue(vm, g, now) && checkedBeforeServerStart(vm, snapshot)) actions.push({ type: 'enqueueHealth', vmName: vm.vmName });
  }
  return actions;
}

/**
 * finalizeLongHealthChecks: a VM still in check_health longer than vm_health_check_max_time after
 * its check started (a checker that died) is marked failed. A missing start time counts as 0 (Copr).
 */
export function decideFinalizeLongHealthChecks(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  for (const [vm, g] of withGroupConfig(snapshot, config, [VmStates.CHECK_HEALTH])) {
    if (now - (vm.lastHealthCheck ?? 0) > ms(g.vm_health_check_max_time)) {
      actions.push({ type: 'markCheckFailed', vmName: vm.vmName });
    }
  }
  return actions;
}

/**
 * terminateAgain: a VM terminating for longer than vm_terminating_timeout gets its termination
 * requested again. If another pool VM has the same IP, the machine is gone (the provider reused its
 * address), so only the stale record is removed. Records are taken in name order and a removed one
 * no longer counts, as in Copr's sequential loop: of two stale records sharing an IP, one is
 * removed and the other terminated again.
 */
export function decideTerminateAgain(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  const removed = new Set<string>();
  const namesByIp = new Map<string, string[]>();
  if (snapshot.vmsByIp) {
    for (const [ip, names] of snapshot.vmsByIp) namesByIp.set(ip, [...names]);
  } else {
    for (const vm of snapshot.vms) {
      const names = namesByIp.get(vm.vmIp) ?? [];
      names.push(vm.vmName);
      namesByIp.set(vm.vmIp, names);
    }
  }
  const candidates = withGroupConfig(snapshot, config, [VmStates.TERMINATING]).sort(([a], [b]) => a.vmName.localeCompare(b.vmName));
  for (const [vm, g] of candidates) {
    if (now - (vm.terminatingSince ?? 0) <= ms(g.vm_terminating_timeout)) continue;
    const others = (namesByIp.get(vm.vmIp) ?? []).filter((n) => n !== vm.vmName && !removed.has(n));
    if (others.length > 0) {
      removed.add(vm.vmName);
      actions.push({ type: 'removeStaleRecord', vmName: vm.vmName });
    } else {
      actions.push({ type: 'terminate', vmName: vm.vmName, allowedPreState: VmStates.TERMINATING, reason: 'terminate_again' });
    }
  }
  return actions;
}

/** The figures startSpawnIfRequired decides on, per group (also logged). */
export interface SpawnFigures {
  group: string;
  /** VMs not terminating (Copr counts failed ones too). */
  active: number;
  /** Every VM of the group, any state. */
  all: number;
  /** Spawns in flight that are not stale. */
  inFlight: number;
  /** Clean ready VMs, plus unbound VMs on their way to ready (got_ip, check_health), plus spawns in flight; held VMs excluded. */
  comingSupply: number;
  /** min_ready plus waiting acquire requests. */
  wanted: number;
}

/** A group's counts from VM records (every VM of the group must be given). */
export function countGroup(vms: readonly VmRecord[], group: string): GroupCounts {
  const of = vms.filter((vm) => vm.group === group);
  return {
    // Copr's _check_total_running_vm_limit: every state but terminating (failed VMs still exist).
    active: of.filter((vm) => vm.state !== VmStates.TERMINATING).length,
    all: of.length,
    coming: of.filter(
      (vm) =>
        vm.owner === null &&
        !isHeld(vm) &&
        (vm.state === VmStates.READY || vm.state === VmStates.GOT_IP || vm.state === VmStates.CHECK_HEALTH),
    ).length,
  };
}

export function spawnFigures(snapshot: PoolSnapshot, config: ReconcileConfig, group: GroupSnapshot, now: number): SpawnFigures {
  const g = configOfGroup(config, group.group)!;
  const inFlight = group.spawnsInFlight.filter((s) => now - s.startedAt <= ms(g.vm_spawn_stale_timeout)).length;
  const { active, all, coming } = group.counts ?? countGroup(snapshot.vms, group.group);
  return {
    group: group.group,
    active,
    all,
    inFlight,
    comingSupply: coming + inFlight,
    wanted: warmPoolOf(config, group, now) + Math.max(0, group.demand),
  };
}

/**
 * startSpawnIfRequired, per group. Spawns in flight older than vm_spawn_stale_timeout are dropped
 * (their job died). Then a spawn starts while Copr's limits all hold:
 * - active VMs + spawns in flight < max_vm_total;
 * - spawns in flight < max_spawn_processes;
 * - now - last spawn start >= vm_spawn_min_interval;
 * - all VMs of the group < 2 × max_vm_total;
 * and, beyond Copr, while the coming supply is below min_ready + demand (Copr spawned blindly up
 * to max_vm_total), and while the group's circuit breaker is closed (an open one whose backoff
 * passed allows one probe spawn when none is in flight). A spawn counts as the last spawn start, so
 * with an interval above 0 at most one spawn per group starts per cycle; with 0, several may start,
 * up to the limits. A group drained at run time (`vmpool drain`) counts as max_vm_total 0: it
 * spawns nothing.
 */
export function decideStartSpawnIfRequired(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  for (const group of snapshot.groups) {
    const g = configOfGroup(config, group.group);
    // Another process's newer launch config is current: that process decides for the group.
    if (!g || !decidesForGroup(group)) continue;
    for (const s of group.spawnsInFlight) {
      if (now - s.startedAt > ms(g.vm_spawn_stale_timeout)) {
        actions.push({ type: 'dropStaleSpawn', group: group.group, spawnId: s.spawnId });
      }
    }
    const gate = breakerGate(group.breaker, now);
    if (gate === 'none') continue;
    const f = spawnFigures(snapshot, config, group, now);
    let { inFlight, comingSupply } = f;
    const maxVmTotal = group.drained || group.removed ? 0 : g.max_vm_total;
    if (gate === 'probe') {
      // One spawn tests the provider; its outcome closes the breaker or opens it for longer.
      if (inFlight === 0 && f.active < maxVmTotal && comingSupply < f.wanted) actions.push({ type: 'spawn', group: group.group, reason: 'probe' });
      continue;
    }
    let lastStart = group.lastSpawnStart;
    for (;;) {
      if (f.active + inFlight >= maxVmTotal) break;
      if (inFlight >= g.max_spawn_processes) break;
      if (lastStart !== null && now - lastStart < ms(g.vm_spawn_min_interval)) break;
      if (f.all >= 2 * g.max_vm_total) break;
      if (comingSupply >= f.wanted) break;
      // Clean ready VMs and VMs on their way count first against the warm pool.
      const reason: SpawnReason = comingSupply < f.wanted - Math.max(0, group.demand) ? 'warm_pool' : 'demand';
      actions.push({ type: 'spawn', group: group.group, reason });
      inFlight += 1;
      comingSupply += 1;
      lastStart = now;
    }
  }
  return actions;
}

/**
 * retireSurplus (beyond Copr and every peer's fixed pool): when a group's min_ready follows a
 * schedule and a period ends, or target_wait sizes a smaller pool, the clean ready VMs above the
 * value now in force plus the waiting
 * demand are retired, the longest-idle first. Only idle VMs go: never one in use, bound to an
 * owner, held, or on its way to ready. A fixed min_ready retires nothing (Copr keeps what it has).
 */
export function decideRetireSurplus(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  for (const group of snapshot.groups) {
    const g = configOfGroup(config, group.group);
    if (!g || !(warmPoolVaries(g) || group.removed) || !decidesForGroup(group)) continue;
    const idle = snapshot.vms
      .filter((vm) => vm.group === group.group && vm.state === VmStates.READY && vm.owner === null && !isHeld(vm))
      .sort((a, b) => (a.lastRelease ?? a.addedAt ?? 0) - (b.lastRelease ?? b.addedAt ?? 0) || a.vmName.localeCompare(b.vmName));
    const keep = warmPoolOf(config, group, now) + Math.max(0, group.demand);
    for (const vm of idle.slice(0, Math.max(0, idle.length - keep))) {
      actions.push({ type: 'terminate', vmName: vm.vmName, allowedPreState: VmStates.READY, reason: 'surplus' });
    }
  }
  return actions;
}
