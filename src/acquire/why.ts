import type { Queue } from 'bullmq';
import type { Config } from '../config/index.js';
import type { VmManager } from '../pool/vmManager.js';
import type { LineStanding } from '../pool/poolReader.js';
import { QueueNames } from '../../queues/names.js';
import { breakerOpen } from '../reconcile/breaker.js';
import { activeVmCount } from '../pool/types.js';
import { ownerLimitIsResources, ownerOverLimit, ownerUsageLimited, ownerUsageSpec, ownerVmLimit, type Resources } from '../reconcile/quota.js';

/**
 * Why a waiting acquire request waits, in one group:
 * - owner_limit: its owner is at the group's max_vm_per_user, and no VM bound to its owner and
 *   sandbox is ready;
 * - owner_resources: the same, but the owner's limit there is its group's max_resources_per_owner
 *   (it holds fewer VMs than max_vm_per_user); or one more VM of the group would pass the owner's
 *   limits across groups (the top-level or its account's max_resources_per_owner: `ownerLimit`
 *   says which, and the units);
 * - held_back_by_priority: requests of a better (lower) BullMQ priority wait in the group;
 * - spawning: a VM is on its way (etaMs from the group's measured spawn time);
 * - provider_failing: the group's spawn circuit breaker is open, or its last spawn attempts failed;
 * - quota_full: the group's next spawn does not fit its max_resources or its account's limits
 *   (configured, or the cloud's quota from quota_cmd); reconcile spawns once usage drops;
 * - group_full: the group is at max_vm_total;
 * - no_ready_vm: none of the above; no VM is ready for it (reconcile spawns for the demand).
 */
export const WAIT_REASONS = ['owner_limit', 'owner_resources', 'held_back_by_priority', 'spawning', 'provider_failing', 'quota_full', 'group_full', 'no_ready_vm'] as const;
export type WaitReason = (typeof WAIT_REASONS)[number];

export interface GroupWait {
  /** The group's name. */
  group: string;
  /** The same as `group` (kept: the job progress had it when `group` was the index). */
  groupName: string;
  /** The group's index in the config's list, null once it left the config. */
  groupIndex: number | null;
  reason: WaitReason;
  /**
   * Estimated place in the group's line (1 = next): owners ahead in the round-robin, plus a full
   * round for each of its owner's requests ahead of it. Null while its owner is blocked (owner_limit).
   */
  position: number | null;
  /** Place among its own owner's requests in the group (1 = its owner's next). */
  ownerPosition: number | null;
  /** Requests waiting in the group. */
  waiting: number;
  ownerVms: number;
  /** The VMs its owner may have bound in the group: max_vm_per_user, or fewer by max_resources_per_owner. */
  maxVmPerUser: number;
  /** spawning: when the next VM should be ready, in ms from updatedAt. */
  etaMs?: number;
  /** quota_full: whose limit (the group's max_resources, or its account's) and the units it would pass. */
  quota?: { limit: 'group' | 'account'; units: string[] };
  /**
   * owner_resources by a limit across groups: its scope (`all`: the top-level max_resources_per_owner,
   * over every group; `account`: that account's, over its groups) and the units one more VM would pass.
   */
  ownerLimit?: { scope: 'all' | 'account'; account?: string; units: string[] };
}

/** What a waiting request's job shows as its progress, and GET /api/v1/requests/:id as `waiting`. */
export interface WaitStatus {
  /** The reason in the request's first group (its preferred one). */
  reason: WaitReason;
  groups: GroupWait[];
  /** Epoch ms. */
  updatedAt: number;
  /** A set's wait (an acquire-set job): how many VMs it asks for; its groups are those of all its VMs. */
  set?: number;
  /**
   * A set's wait: its VMs that cannot be had now, each by its place in the request's `vms` (index,
   * 1-based) with the groups that VM could use (its own, and fallback groups it spills to). Empty when
   * every VM could be had but the set waits for its turn in the line (requests ahead of it).
   */
  unavailableVms?: UnavailableVm[];
}

/** One VM of a waiting set that cannot be had now (WaitStatus.unavailableVms). */
export interface UnavailableVm {
  /** Its place in the request's `vms`, 1-based. */
  index: number;
  /** The groups it could use, in the order they are tried. */
  groups: string[];
}

export interface WaitingRequest {
  owner: string;
  sandbox: string;
  /** BullMQ priority (0 first). */
  priority: number;
  /** The waiter member (acquireWaiterMember). */
  member: string;
  groups: readonly string[];
}

/** How far back failed spawn jobs count as "the provider is failing". */
const PROVIDER_FAILING_WINDOW_MS = 10 * 60 * 1000;

/** Whether the group's latest finished spawn jobs (the last few, newest first) failed, with none succeeding since. */
async function providerFailing(spawnQueue: Queue, group: string, now: number): Promise<boolean> {
  const [failed, completed] = await Promise.all([spawnQueue.getJobs(['failed'], 0, 4, false), spawnQueue.getJobs(['completed'], 0, 4, false)]);
  const ofGroup = (j: { data?: { group?: unknown } }) => j.data?.group === group;
  const lastFailed = Math.max(0, ...failed.filter(ofGroup).map((j) => j.finishedOn ?? 0));
  const lastOk = Math.max(0, ...completed.filter(ofGroup).map((j) => j.finishedOn ?? 0));
  return lastFailed > lastOk && now - lastFailed < PROVIDER_FAILING_WINDOW_MS;
}

/** The reason of one group, from where the request stands and what the group has. */
export function groupWaitReason(
  standing: LineStanding,
  request: Pick<WaitingRequest, 'priority'>,
  limits: { maxVmPerUser: number; maxVmTotal: number; ownerLimitIsResources?: boolean; ownerOverLimitAcross?: boolean },
  supply: { vms: number; spawning: number; providerFailing: boolean },
): WaitReason {
  if (standing.ownerVms >= limits.maxVmPerUser && standing.readyDirty === 0) return limits.ownerLimitIsResources ? 'owner_resources' : 'owner_limit';
  if (limits.ownerOverLimitAcross && standing.readyDirty === 0) return 'owner_resources';
  if (standing.bestPriority !== null && standing.bestPriority < request.priority) return 'held_back_by_priority';
  if (supply.spawning > 0) return 'spawning';
  if (supply.providerFailing) return 'provider_failing';
  if (supply.vms + supply.spawning >= limits.maxVmTotal) return 'group_full';
  return 'no_ready_vm';
}

/** Why a waiting request waits, in each of its groups: read from the pool, the line and the spawn queue. */
export async function explainWait(vmm: VmManager, config: Config, request: WaitingRequest, now: number): Promise<WaitStatus> {
  const counts = await vmm.reader.stateCounts(request.groups);
  const spawns = await vmm.reader.spawnCounts(request.groups);
  const groups: GroupWait[] = [];
  // The owner's usage across groups, read once for every scope its groups' limits name.
  const specs = request.groups.map((group) => ownerUsageSpec(config, vmm.groupConfig(group)));
  const scopes = [...new Set(specs.flatMap((spec) => (ownerUsageLimited(spec) ? spec.s.filter((x) => x.m).map((x) => x.n) : [])))];
  const usage: ReadonlyMap<string, Resources> = scopes.length > 0 ? await vmm.reader.ownerUsage(request.owner, scopes) : new Map();
  for (const [i, group] of request.groups.entries()) {
    const gc = vmm.groupConfig(group);
    const standing = await vmm.reader.lineStanding(group, request.owner, request.sandbox, request.member);
    const vms = activeVmCount(counts[i]!);
    const spawning = spawns[i]!;
    const cheap = { vms, spawning, providerFailing: false };
    const across = ownerOverLimit(specs[i]!, usage);
    let reason = groupWaitReason(
      standing,
      request,
      { maxVmPerUser: ownerVmLimit(gc), maxVmTotal: gc.max_vm_total, ownerLimitIsResources: ownerLimitIsResources(gc), ownerOverLimitAcross: across !== null },
      cheap,
    );
    // The provider's record is read only when nothing before it in the order explains the wait.
    let quota: GroupWait['quota'];
    if (reason === 'group_full' || reason === 'no_ready_vm') {
      const [full] = await vmm.quotas.full([group]).catch(() => [null]);
      if (full) {
        reason = 'quota_full';
        quota = { limit: full.limit, units: full.units };
      }
    }
    if (reason === 'group_full' || reason === 'no_ready_vm') {
      // The group's spawn circuit breaker first (open: its provider failed repeatedly), then the recent spawn jobs.
      const breaker = await vmm.reader.breaker(group).catch(() => null);
      if (breakerOpen(breaker, now) || (await providerFailing(vmm.queue(QueueNames.SPAWN), group, now).catch(() => false))) reason = 'provider_failing';
    }
    const wait: GroupWait = {
      group,
      groupName: gc.name,
      groupIndex: vmm.groupIndex(group),
      reason,
      position:
        standing.ownerRank === null || standing.ownersAhead === null ? null : standing.ownersAhead + 1 + standing.ownerRank * Math.max(1, standing.owners),
      ownerPosition: standing.ownerRank === null ? null : standing.ownerRank + 1,
      waiting: standing.waiting,
      ownerVms: standing.ownerVms,
      maxVmPerUser: ownerVmLimit(gc),
    };
    if (quota) wait.quota = quota;
    if (reason === 'owner_resources' && across && standing.ownerVms < ownerVmLimit(gc)) {
      wait.ownerLimit = across.scope === 'all' ? { scope: 'all', units: across.units } : { scope: 'account', account: across.scope.slice('account:'.length), units: across.units };
    }
    if (reason === 'spawning') {
      const inFlight = await vmm.reader.spawnsInFlight(group);
      const mean = (await vmm.reader.meanSpawnMs(group)) ?? null;
      const oldest = inFlight[0]?.startedAt;
      if (mean !== null && oldest !== undefined) wait.etaMs = Math.max(0, Math.round(oldest + mean - now));
    }
    groups.push(wait);
  }
  return { reason: groups[0]?.reason ?? 'no_ready_vm', groups, updatedAt: now };
}

/**
 * One line for people: `owner_limit in base(0), about 3 in line of 10`; a set's adds which of its VMs
 * cannot be had now: `; VM 3 of 3 (arm) cannot be had now`.
 */
export function describeWait(status: WaitStatus): string {
  const line = status.groups
    .map((g) => {
      const eta = g.etaMs !== undefined ? `, ETA ${Math.ceil(g.etaMs / 1000)} s` : '';
      const pos = g.position !== null ? `, about ${g.position} in line of ${g.waiting}` : `, ${g.waiting} waiting`;
      const across = g.ownerLimit ? ` (the owner's ${g.ownerLimit.units.join(', ')} ${g.ownerLimit.scope === 'all' ? 'over all groups' : `over account ${g.ownerLimit.account}`})` : '';
      return `${g.reason}${across} in ${g.group}(${g.groupIndex ?? 'removed'})${pos}${eta}`;
    })
    .join('; ');
  const unavailable = describeUnavailableVms(status);
  return unavailable ? `${line}; ${unavailable}` : line;
}

/**
 * A waiting set's VMs that cannot be had now, for people: `VM 3 of 3 (arm) cannot be had now`, VMs
 * with the same groups together (`VMs 1, 2 of 3 (base) cannot be had now`); when every VM could be
 * had, that the set waits for its turn. '' for a single request, or a set's wait written without them.
 */
export function describeUnavailableVms(status: Pick<WaitStatus, 'set' | 'unavailableVms'>): string {
  const { set, unavailableVms } = status;
  if (set === undefined || !Array.isArray(unavailableVms)) return '';
  if (unavailableVms.length === 0) return `${set === 1 ? 'its VM' : `all ${set} VMs`} could be had now: the set waits for its turn in the line`;
  const byGroups = new Map<string, number[]>();
  for (const vm of unavailableVms) {
    const groups = vm.groups.join(', ');
    byGroups.set(groups, [...(byGroups.get(groups) ?? []), vm.index]);
  }
  return [...byGroups]
    .map(([groups, indexes]) => `${indexes.length === 1 ? 'VM' : 'VMs'} ${indexes.join(', ')} of ${set} (${groups || 'no group'}) cannot be had now`)
    .join('; ');
}
