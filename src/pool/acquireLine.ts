import { randomUUID } from 'node:crypto';
import { MAX_SET_ITEMS, acquireSetRequestId, type AcquireRequestData } from '../../queues/acquire.js';
import type { GroupRef } from '../config/index.js';
import type { Clock, PoolAccess, PoolContext } from './context.js';
import type { PoolJobs } from './jobs.js';
import { ownerUsageSpec, ownerVmLimit } from '../reconcile/quota.js';
import { poolKeys } from './keys.js';
import type { Leases } from './leases.js';
import type { AcquireSetAttempt } from './poolScripts.js';
import { InvalidVmRequest, NoVmAvailable, TooManyWaiting, type AcquireAttempt, type AcquireWaiter, type Lease, type VmDescriptor } from './types.js';

/**
 * What acquireVm needs: an acquire job's payload (AcquireRequestData) with its groups resolved (no
 * arch), the worker that asks, and optionally the lease id. The acquire processor passes the payload
 * itself; Copr-style callers build one.
 */
export interface AcquireRequest extends Pick<AcquireRequestData, 'owner' | 'sandbox'> {
  /** Group names, tried in order; an index in the config's list is an alias (Copr's `group` integer). */
  groups: readonly GroupRef[];
  /** Numbers are taken too (a pid, Copr's numeric build ids) and stored as text. */
  workerId: string | number;
  taskId?: string | number | null;
  buildId?: string | number | null;
  chroot?: string | null;
  /** Lease id of the assignment; a random one when not given. */
  leaseId?: string;
}

/** One VM of a set (acquireVmSet): its groups, tried in order, as a single acquire's. */
export interface AcquireSetItem {
  groups: readonly GroupRef[];
  /** Lease id of this VM's assignment; a random one when not given. */
  leaseId?: string;
}

/** A request for several VMs at once, all or nothing, for one owner and sandbox. */
export interface AcquireSetRequest extends Pick<AcquireRequestData, 'owner' | 'sandbox'> {
  workerId: string | number;
  items: readonly AcquireSetItem[];
  /** Identity of the request (an acquire job id): a re-run with it gets the VMs given before. */
  jobId?: string;
}

/** How often a waiting set tries again (acquireVmSet): it is served outside the line, by retries. */
export const SET_RETRY_MS = 250;

/** A waiting set counts as demand this long after each retry (a set that stopped waiting is no demand soon after). */
export const SET_DEMAND_MS = 4 * SET_RETRY_MS;

/** At most this many VMs in one set: a script call picks them all, in one pass per account. */
export { MAX_SET_ITEMS };

/**
 * The member of item `item` (1-based) of the set request of job `jobId` in its first group's demand
 * set (includes/leaveLines.lua setDemandMember; poolReader.setDemand reads them).
 */
export function setDemandMember(jobId: string, item: number): string {
  return `set|${jobId}|${item}`;
}

/** The job id of a set's demand member (setDemandMember), or null for another member. */
export function setJobIdOfDemandMember(member: string): string | null {
  const last = member.lastIndexOf('|');
  return member.startsWith('set|') && last > 4 ? member.slice(4, last) : null;
}

/** The pub/sub channel of each group on which the scripts say that a VM may be acquirable: channel -> group name. */
export function readyChannels(prefix: string, groups: readonly string[]): Map<string, string> {
  const keys = poolKeys(prefix);
  return new Map(groups.map((g) => [keys.readyChannel(g), g]));
}

/**
 * The requests' side of the line, which needs no config: a task's claim before its request is
 * enqueued, and the withdrawal of a waiting request. VmPoolClient uses it as it is.
 */
export class LineRequests {
  constructor(
    private readonly pool: PoolAccess,
    private readonly clock: Clock,
  ) {}

  /** Claims an owner's task for a sandbox until `deadline` (TaskConflict when another sandbox of the owner holds it; task ids are per owner). */
  async claimTask(taskId: string, owner: string, sandbox: string, deadline: number, now = this.clock()): Promise<void> {
    await this.pool.scripts.claimTask(taskId, owner, sandbox, deadline, now);
  }

  /**
   * Refuses (TooManyWaiting) a request of `owner` for `groups` when the owner has its group's
   * max_waiting_per_owner requests waiting there already (live ones: deadline after now), not
   * counting the request of job `jobId` (a builder that joins its own waiting request again).
   * Read before the request is enqueued; the acquire script checks again, atomically, when it parks.
   */
  async refuseBeyondWaitingCap(owner: string, groups: readonly { group: string; maxWaitingPerOwner: number }[], jobId: string): Promise<void> {
    const keys = this.pool.keys;
    const now = this.clock();
    for (const { group, maxWaitingPerOwner } of groups) {
      const members = (await this.pool.redis.zrange(keys.ownerLine(group, owner), '0', '-1')).filter((m) => !m.endsWith(`|${jobId}`));
      if (members.length < maxWaitingPerOwner) continue;
      const infos = await this.pool.redis.hmget(keys.waiterInfo, ...members);
      const live = infos.filter((raw) => raw !== null && Number((JSON.parse(raw) as { deadline?: unknown }).deadline) > now).length;
      if (live >= maxWaitingPerOwner) throw new TooManyWaiting(owner, group, maxWaitingPerOwner);
    }
  }

  /**
   * Withdraws a waiting acquire request: out of the line; its job fails as cancelled (with `reason`)
   * at its next attempt; a VM the line gave it that its job did not collect goes back.
   */
  async cancel(waiter: Pick<AcquireWaiter, 'member' | 'jobId'>, reason: string, keepMs: number): Promise<number> {
    return this.pool.scripts.cancelAcquire(waiter, reason, keepMs, this.clock());
  }
}

/** The acquire line: acquire attempts, the requests that wait in line, and its dispatcher. */
export class AcquireLine {
  readonly requests: LineRequests;

  constructor(
    private readonly ctx: PoolContext,
    private readonly jobs: PoolJobs,
    private readonly leases: Leases,
  ) {
    this.requests = new LineRequests(ctx, ctx.clock);
  }

  async acquireVm(request: AcquireRequest): Promise<VmDescriptor> {
    const attempt = await this.tryAcquireVm(request);
    if (attempt.status === 'acquired' || attempt.status === 'reattached') return attempt.vm;
    throw new NoVmAvailable(`no VM available for owner ${request.owner} in groups [${request.groups.join(', ')}]`);
  }

  /** See VmManager.tryAcquireVm. */
  async tryAcquireVm(request: AcquireRequest, waiter?: AcquireWaiter): Promise<AcquireAttempt> {
    const { owner, sandbox, workerId } = request ?? ({} as AcquireRequest);
    if (!Array.isArray(request?.groups) || request.groups.length === 0) throw new InvalidVmRequest('acquireVm needs a non-empty list of groups');
    const groups = request.groups.map((g) => this.ctx.resolveGroup(g));
    if (typeof owner !== 'string' || owner === '') throw new InvalidVmRequest('acquireVm needs an owner');
    if (typeof sandbox !== 'string') throw new InvalidVmRequest('acquireVm needs a sandbox');
    if (workerId === undefined || workerId === null) throw new InvalidVmRequest('acquireVm needs a workerId');
    const attempt = await this.ctx.scripts.acquireVm({
      now: this.ctx.clock(),
      owner,
      sandbox,
      workerId: asText(workerId, 'workerId'),
      taskId: asText(request.taskId, 'taskId'),
      buildId: asText(request.buildId, 'buildId'),
      chroot: asText(request.chroot, 'chroot'),
      leaseId: request.leaseId || randomUUID(),
      waiter,
      groups: groups.map((group) => {
        const gc = this.ctx.groupConfig(group);
        return {
          group,
          maxVmPerOwner: ownerVmLimit(gc),
          leaseTimeoutMs: Math.round(gc.lease_timeout * 1000),
          maxWaitingPerOwner: gc.max_waiting_per_owner,
          ownerUsage: ownerUsageSpec(this.ctx.config, gc),
        };
      }),
    });
    // Requests ahead that this attempt's dispatch served are woken here, whoever the caller is.
    if (attempt.status !== 'cancelled' && attempt.served?.length) this.jobs.wakeAcquireJobs(attempt.served);
    if (attempt.status === 'acquired' || attempt.status === 'reattached') {
      // redis.wait_replicas: the assignment is answered only once replicas have it.
      await this.leases.replicated();
      const { vm } = attempt;
      this.ctx.logger.info({ vmName: vm.vmName, owner, sandbox, taskId: vm.taskId, reattached: attempt.status === 'reattached' }, 'VM acquired');
    }
    return attempt;
  }

  /** See VmManager.acquireVmSet. */
  async acquireVmSet(request: AcquireSetRequest, options: { timeoutMs: number; signal?: AbortSignal }): Promise<({ vm: VmDescriptor } & Lease)[]> {
    // Counted in attempts, not by the pool's clock (a test's clock stands still while it waits).
    const attempts = Math.max(1, Math.ceil(options.timeoutMs / SET_RETRY_MS));
    // Always an identity: it keys the set's demand while it waits (and a re-run, when the caller gave it).
    const identified = { ...request, jobId: request.jobId || acquireSetRequestId(request.owner) };
    for (let i = 1; ; i += 1) {
      options.signal?.throwIfAborted();
      const attempt = await this.tryAcquireVmSet(identified, { demandForMs: SET_DEMAND_MS });
      if (attempt.status === 'acquired' || attempt.status === 'reattached') return attempt.vms;
      if (i >= attempts) {
        // Which VMs the last try could not have (an empty list: all could, but others waited ahead).
        const missing = attempt.status === 'none' && attempt.missing?.length ? attempt.missing : null;
        const which = missing ? ` (the last try could not have ${missing.length === 1 ? 'VM' : 'VMs'} ${missing.join(', ')} of ${request.items.length})` : '';
        throw new NoVmAvailable(`no set of ${request.items.length} VMs available for owner ${request.owner} within ${options.timeoutMs} ms${which}`);
      }
      await new Promise((resolve) => setTimeout(resolve, SET_RETRY_MS));
    }
  }

  /** See VmManager.tryAcquireVmSet. */
  async tryAcquireVmSet(
    request: AcquireSetRequest,
    options: { demandForMs?: number; waiter?: AcquireWaiter; possibleWith?: readonly (readonly string[])[] } = {},
  ): Promise<AcquireSetAttempt> {
    const { owner, sandbox, workerId, items } = request ?? ({} as AcquireSetRequest);
    if (!Array.isArray(items) || items.length === 0) throw new InvalidVmRequest('acquireVmSet needs a non-empty list of items');
    if (items.length > MAX_SET_ITEMS) throw new InvalidVmRequest(`acquireVmSet takes at most ${MAX_SET_ITEMS} items`);
    if (typeof owner !== 'string' || owner === '') throw new InvalidVmRequest('acquireVmSet needs an owner');
    if (typeof sandbox !== 'string') throw new InvalidVmRequest('acquireVmSet needs a sandbox');
    if (workerId === undefined || workerId === null) throw new InvalidVmRequest('acquireVmSet needs a workerId');
    const resolved = items.map((item, i) => {
      if (!Array.isArray(item?.groups) || item.groups.length === 0) throw new InvalidVmRequest(`acquireVmSet: item ${i} needs a non-empty list of groups`);
      return {
        leaseId: item.leaseId || randomUUID(),
        groups: item.groups.map((ref: GroupRef) => {
          const group = this.ctx.resolveGroup(ref);
          const gc = this.ctx.groupConfig(group);
          return {
            group,
            maxVmPerOwner: ownerVmLimit(gc),
            leaseTimeoutMs: Math.round(gc.lease_timeout * 1000),
            account: gc.account ?? '',
            maxWaitingPerOwner: gc.max_waiting_per_owner,
            ownerUsage: ownerUsageSpec(this.ctx.config, gc),
          };
        }),
      };
    });
    // Judged by the groups each item may ever use (with fallbacks that may serve it later, when given).
    const possible = options.possibleWith
      ? options.possibleWith.map((groups) => ({ groups: groups.map((group) => ({ group, maxVmPerOwner: ownerVmLimit(this.ctx.groupConfig(group)) })) }))
      : resolved;
    refuseImpossibleSet(possible, (group) => this.ctx.groupConfig(group).max_vm_total);
    const attempt = await this.ctx.scripts.acquireVmSet({
      now: this.ctx.clock(),
      owner,
      sandbox,
      workerId: asText(workerId, 'workerId'),
      jobId: asText(request.jobId, 'jobId'),
      demandUntil: options.demandForMs ? this.ctx.clock() + options.demandForMs : 0,
      waiter: options.waiter,
      items: resolved,
    });
    // Requests that this attempt's dispatch served are woken here, whoever the caller is.
    if (attempt.status !== 'cancelled' && attempt.served?.length) this.jobs.wakeAcquireJobs(attempt.served);
    if (attempt.status === 'acquired' || attempt.status === 'reattached') {
      await this.leases.replicated();
      this.ctx.logger.info({ vmNames: attempt.vms.map((v) => v.vm.vmName), owner, sandbox, reattached: attempt.status === 'reattached' }, 'VM set acquired');
    }
    return attempt;
  }

  /** See VmManager.dispatchAcquireLine. */
  async dispatch(group: string, vmName: string): Promise<string[]> {
    await this.ctx.knownGroupConfig(group);
    const served = await this.ctx.scripts.dispatchAcquireLine(group, vmName, this.ctx.clock());
    this.jobs.wakeAcquireJobs(served);
    return served;
  }

  /**
   * Takes a waiting request out of the line of its groups (timeout, invalid request, failure); a VM
   * the line gave it that its job did not collect goes back.
   */
  async leave(waiter: AcquireWaiter, groups: readonly string[]): Promise<void> {
    await this.ctx.scripts.leaveAcquireLine(waiter, groups, this.ctx.clock());
  }

  /** Acquire requests waiting in the group's line (their deadline is after now). */
  async countDemand(group: string): Promise<number> {
    return this.ctx.reader.countDemand(group, this.ctx.clock());
  }
}

/**
 * Refuses (InvalidVmRequest) a set that no pool state could serve under this config: more items
 * that can only use one group than the owner may have there (its owner limit, at most the group's
 * max_vm_total), or more items than all their groups together allow. It would otherwise wait, and
 * keep ready VMs back in the line, until its deadline.
 */
export function refuseImpossibleSet(
  items: readonly { groups: readonly { group: string; maxVmPerOwner: number }[] }[],
  maxVmTotal: (group: string) => number,
): void {
  // A group at max_vm_total 0 drains: its VMs are still served, so only the owner limit counts there.
  const room = (g: { group: string; maxVmPerOwner: number }) => (maxVmTotal(g.group) > 0 ? Math.min(g.maxVmPerOwner, maxVmTotal(g.group)) : g.maxVmPerOwner);
  const onlyIn = new Map<string, { count: number; room: number }>();
  const rooms = new Map<string, number>();
  for (const item of items) {
    for (const g of item.groups) rooms.set(g.group, room(g));
    if (item.groups.length !== 1) continue;
    const g = item.groups[0]!;
    const entry = onlyIn.get(g.group) ?? { count: 0, room: room(g) };
    entry.count += 1;
    onlyIn.set(g.group, entry);
  }
  for (const [group, { count, room: max }] of onlyIn) {
    if (count > max) throw new InvalidVmRequest(`this set asks for ${count} VMs of group ${group}, but one owner may have at most ${max} there`);
  }
  const total = [...rooms.values()].reduce((a, b) => a + b, 0);
  if (items.length > total) throw new InvalidVmRequest(`this set asks for ${items.length} VMs, but its groups allow one owner at most ${total} together`);
}

/** Builders often carry numeric ids (Copr's build ids, a worker pid): they are stored as text ('' for none). */
function asText(value: unknown, field: string): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value !== 'string') throw new InvalidVmRequest(`acquireVm: ${field} must be a string or a number`);
  return value;
}
