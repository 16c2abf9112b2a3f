/** What the operator surfaces (HTTP API, pool page, CLI) show of the pool. */
import { groupNameOf, type Config } from './config/index.js';
import { isScheduled, minReadyAt } from './reconcile/minReady.js';
import { ownerVmLimit } from './reconcile/quota.js';
import { targetOf, targetWaitDecision } from './reconcile/targetWait.js';
import { ALL_VM_STATES, UnknownGroup, type VmRecord, type VmState } from './pool/types.js';

export { UnknownGroup };
import type { VmManager } from './pool/vmManager.js';
import type { LaunchState } from './pool/poolReader.js';

/** The name of a group given by name or by index (digits); UnknownGroup otherwise. */
export function resolveGroup(config: Config, value: string): string {
  const name = groupNameOf(config.groups, value);
  if (name !== null) return name;
  throw new UnknownGroup(value, `unknown group ${JSON.stringify(value)}; groups: ${config.groups.map((g, i) => `${i} (${g.name})`).join(', ')}`);
}

/** A VM record without what only the pool needs (its lease id and check sequence). */
export function withoutLease(vm: VmRecord): Omit<VmRecord, 'leaseId' | 'checkSeq'> {
  const { leaseId: _leaseId, checkSeq: _checkSeq, ...rest } = vm;
  return rest;
}

export interface GroupSummary {
  /** The group's index in the config's list: an alias (groups are identified by name); null for a group removed from the config. */
  id: number | null;
  name: string;
  /** The group left the config and drains: it spawns nothing; its VMs are served to requests that name it until they retire. */
  removedFromConfig: boolean;
  archs: string[];
  tags: string[];
  /** owner_vm_limit: the VMs one owner may have bound, max_vm_per_user or fewer by max_resources_per_owner. */
  limits: { max_vm_total: number; max_vm_per_user: number; max_spawn_processes: number; owner_vm_limit: number };
  /** Warm pool target: clean ready VMs kept waiting. */
  minReady: number;
  counts: Record<VmState, number>;
  total: number;
  held: number;
  /** Whether min_ready follows a schedule (minReady is then the value in force now). */
  minReadyScheduled: boolean;
  /** Ready VMs bound to nobody (what min_ready counts). */
  readyClean: number;
  demand: number;
  spawnsInFlight: number;
  /**
   * Whether the group spawns nothing: drained at run time (`vmpool drain`, drainedSince) or by its
   * config (max_vm_total: 0). Its VMs are still served and retired by their timeouts.
   */
  drained: boolean;
  /** When `vmpool drain` drained it (epoch ms), or null. */
  drainedSince: number | null;
  /** The spawn circuit breaker while it is open (null: closed, spawning as usual). */
  breaker: BreakerSummary | null;
  /**
   * While its spawns wait for resources (quota_full): whose limit (the group's max_resources or its
   * account's) and the units one more VM would pass; null otherwise.
   */
  quotaFull: { limit: 'group' | 'account'; units: string[]; account: string | null; since: number } | null;
  /** For a group with target_wait: the decision that sized its warm pool (minReady is its result). */
  targetWait?: TargetWaitSummary;
  /** The group's launch configuration: current fingerprint, and VMs still on older ones (a rollout). */
  launch: LaunchSummary;
}

/** A group's launch configuration as the pool has it (docs/operating.md, "Rolling out a new image"). */
export interface LaunchSummary {
  /** The fingerprint of this process's config of the group. */
  configured: string;
  /** The group's current fingerprint, published by a reconcile process; null before the first cycle. */
  current: string | null;
  /** How many times the current fingerprint changed (null before the first). */
  revision: number | null;
  launchRevision: number | null;
  publishedAt: number | null;
  /** The process that published it (host:pid:random). */
  publishedBy: string | null;
  /** VMs of the group, not terminating, on an older launch (replaced as the rollout goes). */
  outdated: number;
  /** Processes seen in the last minutes running another launch config of the group: they make no decision for it. */
  deferring: { process: string; fingerprint: string }[];
}

export interface BreakerSummary {
  errorClass: string;
  failures: number;
  openings: number;
  /** When it opened (epoch ms). */
  openedAt: number | null;
  /** When its probe spawn may run (epoch ms); null: until an operator runs `vmpool breaker reset`. */
  openUntil: number | null;
  /** The hook's own message, as it gave it. */
  message: string | null;
}

/** The group's breaker as operators see it: while open, else null. */
export async function breakerSummary(vmm: VmManager, group: string): Promise<BreakerSummary | null> {
  const b = await vmm.reader.breaker(group);
  if (!b || !b.open) return null;
  return { errorClass: b.errorClass, failures: b.failures, openings: b.openings, openedAt: b.openedAt, openUntil: b.openUntil, message: b.message };
}

export interface TargetWaitSummary {
  /** The target, as configured: `p95 30s`. */
  target: string;
  arrivalsPerMinute: number;
  bootSeconds: number;
  /** False while no VM of the group has become ready yet (bootSeconds is then the default guess). */
  bootMeasured: boolean;
  minReady: number;
}

/** Per-group summary: limits from the config, counts from the state indexes, demand and spawns from Redis. */
async function indexCounts(vmm: VmManager, names: readonly string[]) {
  const [states, held, supply] = await Promise.all([vmm.reader.stateCounts(names), vmm.reader.heldCounts(names), vmm.reader.supplyCounts(names)]);
  return { states, held, supply };
}

export async function groupSummaries(vmm: VmManager, records?: VmRecord[]): Promise<GroupSummary[]> {
  // Without records, the counts come from the indexes (state sets, ready_clean, held): no VM is read.
  // The config's groups, then those removed from it that still drain (read from the registry).
  await vmm.refreshRemovedGroups();
  const names = [...vmm.vmGroups, ...vmm.removedGroups.keys()];
  const fromIndexes = records === undefined ? await indexCounts(vmm, names) : null;
  const launches = await vmm.launchStates(names);
  const quotaFull = await vmm.quotas.full(names);
  const out: GroupSummary[] = [];
  for (const [i, id] of names.entries()) {
    const g = vmm.groupConfig(id);
    const index = vmm.groupIndex(id);
    const mine = records ? records.filter((v) => v.group === id) : [];
    let counts = Object.fromEntries(ALL_VM_STATES.map((s) => [s, 0])) as Record<VmState, number>;
    if (fromIndexes) counts = fromIndexes.states[i]!;
    else for (const v of mine) counts[v.state] += 1;
    const tw = g.target_wait ? await targetWaitSummary(vmm, id) : undefined;
    const drainedSince = await vmm.drainedSince(id);
    out.push({
      id: index,
      name: g.name,
      removedFromConfig: index === null,
      archs: g.archs,
      tags: g.tags,
      limits: { max_vm_total: g.max_vm_total, max_vm_per_user: g.max_vm_per_user, max_spawn_processes: g.max_spawn_processes, owner_vm_limit: ownerVmLimit(g) },
      minReady: tw ? tw.minReady : minReadyAt(g.min_ready, vmm.clock()),
      minReadyScheduled: isScheduled(g.min_ready),
      counts,
      total: fromIndexes ? Object.values(counts).reduce((a, b) => a + b, 0) : mine.length,
      held: fromIndexes ? fromIndexes.held[i]! : mine.filter((v) => v.heldBy !== null).length,
      readyClean: fromIndexes ? fromIndexes.supply[i]!.readyClean : mine.filter((v) => v.state === 'ready' && v.owner === null && v.heldBy === null).length,
      demand: await vmm.countDemand(id),
      spawnsInFlight: (await vmm.getSpawnsInFlight(id)).length,
      breaker: await breakerSummary(vmm, id),
      quotaFull: quotaFull[i] ? { limit: quotaFull[i].limit, units: quotaFull[i].units, account: g.account ?? null, since: quotaFull[i].at } : null,
      ...(tw ? { targetWait: tw } : {}),
      drained: drainedSince !== null || g.max_vm_total === 0,
      drainedSince,
      launch: launchSummary(vmm.launchFingerprint(id), launches[i]!),
    });
  }
  return out;
}

function launchSummary(configured: string, state: LaunchState): LaunchSummary {
  const p = state.published;
  return {
    configured,
    current: p?.fingerprint ?? null,
    revision: p?.revision ?? null,
    launchRevision: p?.launchRevision ?? null,
    publishedAt: p?.publishedAt ?? null,
    publishedBy: p?.publishedBy ?? null,
    outdated: state.outdated,
    deferring: state.deferring,
  };
}

/** The target-wait decision of a group, from what the pool measured (as reconcile decides it). */
export async function targetWaitSummary(vmm: VmManager, group: string): Promise<TargetWaitSummary | undefined> {
  const g = vmm.groupConfig(group);
  if (!g.target_wait) return undefined;
  const measure = await vmm.measureTargetWait(group, g.target_wait.window * 1000);
  const d = targetWaitDecision(g, measure, vmm.config.vm_cycle_timeout)!;
  const t = targetOf(g.target_wait);
  return {
    target: `${t.name} ${t.seconds}s`,
    arrivalsPerMinute: Math.round(d.arrivalsPerMinute * 100) / 100,
    bootSeconds: Math.round(d.bootSeconds * 10) / 10,
    bootMeasured: d.bootMeasured,
    minReady: d.minReady,
  };
}
