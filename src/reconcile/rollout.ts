/**
 * Rolling a group over to its current launch configuration, and max_ready_age: pure decisions (a
 * snapshot, the config and now in; actions out), as decisions.ts. VmMaster publishes each group's
 * launch fingerprint first (publishLaunch) and gives each group's `launch` in the snapshot.
 *
 * The rule is a Deployment's rolling update with maxUnavailable 0: the spawn decision does not
 * count outdated or aged VMs as supply, so their replacements are spawned first (a surge, within
 * max_vm_total and max_spawn_processes); this decision retires a clean ready outdated or aged VM
 * only while the clean ready VMs that stay still cover the warm pool. A bound (dirty) ready VM of an
 * old launch is never reused: it goes at once. A VM in use is never touched; released, it is
 * retired as a bound outdated one. A group at max_vm_total with no spawn in flight could never
 * surge: it retires one old VM at a time (maxUnavailable 1), so that the roll still ends.
 */
import { VmStates, type VmRecord } from '../pool/types.js';
import type { PublishedLaunch } from '../pool/poolReader.js';
import type { TerminationReason } from '../../queues/terminate.js';
import { configOfGroup, countGroup, warmPoolOf, type GroupSnapshot, type PoolSnapshot, type ReconcileAction, type ReconcileConfig } from './decisions.js';

/** A group's launch state in a snapshot (VmMaster.readSnapshot). */
export interface GroupLaunch {
  /**
   * Whether this process's config of the group is the published one. False: another process's
   * newer config is current, and this one makes no spawn, rollout or retire decision for the group.
   */
  current: boolean;
  /** Names of the group's outdated VMs (not terminating): their fingerprint is not the current one. */
  outdated: readonly string[];
  /** Names of the group's clean, unheld ready VMs ready for longer than max_ready_age. */
  aged: readonly string[];
  /** Clean ready VMs of the current launch (ready_clean), aged ones included. */
  readyCurrent: number;
}

/** Whether a group may make decisions: no launch known (not published by this process) counts as current. */
export function decidesForGroup(group: Pick<GroupSnapshot, 'launch'>): boolean {
  return group.launch?.current ?? true;
}

/**
 * Whether a process's launch config of a group is superseded by the published one, by
 * publishLaunch's rule: another fingerprint is current, and this one has a lower launch_revision,
 * or the same one and was current once and replaced. A config never published (newer than the
 * published one: its reconcile processes are not restarted yet) is not superseded.
 */
export function launchSuperseded(published: PublishedLaunch | null, own: { fingerprint: string; launchRevision: number }): boolean {
  if (published === null || published.fingerprint === own.fingerprint) return false;
  if (own.launchRevision !== published.launchRevision) return own.launchRevision < published.launchRevision;
  return published.superseded.includes(own.fingerprint);
}

const isIdleReady = (vm: VmRecord | undefined): vm is VmRecord => vm !== undefined && vm.state === VmStates.READY && vm.heldBy === null;

/**
 * rollOut: per group whose launch is current here, the outdated and aged VMs to retire (reasons
 * `rollout`, `max_ready_age`), by the rule of this module's header. Outdated VMs go before aged
 * ones, the oldest first.
 */
export function decideRollOut(snapshot: PoolSnapshot, config: ReconcileConfig, now: number): ReconcileAction[] {
  const actions: ReconcileAction[] = [];
  const byName = new Map(snapshot.vms.map((vm) => [vm.vmName, vm]));
  for (const group of snapshot.groups) {
    const g = configOfGroup(config, group.group);
    const launch = group.launch;
    if (!g || !launch?.current) continue;
    const retire = (vm: VmRecord, reason: TerminationReason) => actions.push({ type: 'terminate', vmName: vm.vmName, allowedPreState: VmStates.READY, reason });
    const outdated = launch.outdated.map((n) => byName.get(n)).filter(isIdleReady).filter((vm) => vm.group === group.group);
    for (const vm of outdated) if (vm.owner !== null) retire(vm, 'rollout');
    const oldest = (a: VmRecord, b: VmRecord) => (a.firstReadyAt ?? a.addedAt ?? 0) - (b.firstReadyAt ?? b.addedAt ?? 0) || a.vmName.localeCompare(b.vmName);
    const outdatedClean = outdated.filter((vm) => vm.owner === null).sort(oldest);
    const outdatedNames = new Set(launch.outdated);
    const agedAfter = g.max_ready_age === undefined ? null : now - g.max_ready_age * 1000;
    const aged = launch.aged
      .map((n) => byName.get(n))
      .filter(isIdleReady)
      .filter((vm) => vm.group === group.group && vm.owner === null && !outdatedNames.has(vm.vmName))
      // Re-checked here: the snapshot may name VMs for other reasons.
      .filter((vm) => agedAfter !== null && vm.firstReadyAt != null && vm.firstReadyAt < agedAfter)
      .sort(oldest);
    const replaceable: [VmRecord, TerminationReason][] = [...outdatedClean.map((vm) => [vm, 'rollout'] as [VmRecord, TerminationReason]), ...aged.map((vm) => [vm, 'max_ready_age'] as [VmRecord, TerminationReason])];
    if (replaceable.length === 0) continue;
    const kept = Math.max(0, launch.readyCurrent - aged.length);
    const target = warmPoolOf(config, group, now);
    let n = Math.min(replaceable.length, Math.max(0, kept + replaceable.length - target));
    if (n === 0 && cannotSurge(snapshot, group, g.max_vm_total, now, g.vm_spawn_stale_timeout, kept)) n = 1;
    for (const [vm, reason] of replaceable.slice(0, n)) retire(vm, reason);
  }
  return actions;
}

/**
 * The group cannot spawn a replacement before an old VM goes: at max_vm_total, with no spawn in
 * flight and no new VM on its way to ready (one old VM at a time, then, each after its replacement).
 */
function cannotSurge(snapshot: PoolSnapshot, group: GroupSnapshot, maxVmTotal: number, now: number, staleSeconds: number, readyKept: number): boolean {
  if (group.drained || maxVmTotal === 0) return false;
  const counts = group.counts ?? countGroup(snapshot.vms, group.group);
  const inFlight = group.spawnsInFlight.filter((s) => now - s.startedAt <= staleSeconds * 1000).length;
  const booting = counts.coming - readyKept;
  return inFlight === 0 && booting <= 0 && counts.active >= maxVmTotal;
}
