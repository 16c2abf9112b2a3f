import type { Queue } from 'bullmq';
import type { ProviderGroup } from '../providers/types.js';
import { renameGroup, type GroupRename } from './groupNames.js';
import { isGroupName, isParsedConfig, launchFingerprint, parseConfig, type Config, type ConfigInput, type GroupConfig, type GroupRef } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { assertPrefixFits, producerConnectionFrom, replicaWaitOf, type RedisConnection, type RedisTarget } from '../redis.js';
import { TERMINATE_QUEUE, type TerminationReason } from '../../queues/terminate.js';
import type { QueueName } from '../../queues/names.js';
import { QueueSet } from '../../queues/queueSet.js';
import type { TargetWaitMeasure } from '../reconcile/targetWait.js';
import type { SpawnFailureClass } from '../providers/spawnErrors.js';
import type { AcquireWaitMark, HistorySample } from '../reconcile/history.js';
import { formatPoolInfo } from '../text/poolInfo.js';
import { AcquireLine, type AcquireRequest, type AcquireSetRequest } from './acquireLine.js';
import { Breaker } from './breaker.js';
import { PoolContext, type Clock } from './context.js';
import { GroupState } from './groupState.js';
import { Health } from './health.js';
import { Holds, type HoldOptions } from './holds.js';
import { PoolJobs } from './jobs.js';
import { Leases } from './leases.js';
import { CycleLock } from './locks.js';
import type { LaunchState, PoolReader, SpawnInFlight, VmPage, VmPageQuery } from './poolReader.js';
import type { AcquireSetAttempt, LaunchPublication, PoolStateCheck, PoolStateSeen } from './poolScripts.js';
import { poolIdOf } from './poolId.js';
import { Spawns } from './spawns.js';
import { Quotas } from './quota.js';
import { Autoholds, releaseOutcomeOf, type ReleaseOptions } from './autohold.js';
import type { Resources } from '../reconcile/quota.js';
import { StateLoss } from './stateLoss.js';
import { Telemetry } from './telemetry.js';
import { PoolVms } from './vms.js';
import {
  InvalidVmRequest,
  UnknownGroup,
  VmError,
  VmStates,
  type AcquireAttempt,
  type AcquireWaiter,
  type ExpiredLease,
  type Lease,
  type HealthCheckRecord,
  type SpawnAttemptStart,
  type VmDescriptor,
  type VmRecord,
  type VmState,
} from './types.js';

export { acquireWaiterMember } from './types.js';
export type { AcquireAttempt, AcquireWaiter, ExpiredLease, HealthCheckOutcome, HealthCheckRecord } from './types.js';
export type { AcquireRequest, AcquireSetItem, AcquireSetRequest } from './acquireLine.js';
export type { AcquireSetAttempt } from './poolScripts.js';
export type { Clock } from './context.js';
export type { HoldOptions } from './holds.js';
export { SPAWN_RECORD_TTL_MS } from './spawns.js';
export { DRAINED_SINCE } from './groupState.js';

export interface VmManagerOptions {
  /**
   * An ioredis instance, Redis or Cluster (shared, not closed by the manager), or where Redis is (owned
   * and closed): a URL (redis://, redis+cluster://, redis+sentinel://) or a config's redis section.
   */
  redis: RedisConnection | RedisTarget;
  /** Key prefix of the pool and of its BullMQ queues. Defaults to config.redis.prefix. */
  prefix?: string;
  logger?: Logger;
  clock?: Clock;
  /**
   * The process's queue handles (a JobContext's), on the same prefix, to add health and terminate
   * jobs to; not closed by the manager. Without it, the manager opens its own and close() closes them.
   */
  queues?: QueueSet;
}

/**
 * The VM registry and its state machine (Copr's VmManager): the pool's API. A facade over the
 * pool's parts, one module per concern (vms, leases, acquireLine, holds, health, spawns, breaker,
 * groupState, stateLoss, telemetry, locks). Every state transition is one atomic Lua script
 * (poolScripts.ts) over per-group and per-state indexes, so no operation scans the pool; reads go
 * through its read model (`reader`). Its Redis keys are its own.
 *
 * Methods marked "Public API (Copr)" carry the names of Copr's VmManager, for callers ported from it.
 */
export class VmManager {
  readonly config: Config;
  readonly prefix: string;
  /** The pool's identity (pool_id, else derived from the prefix); its machines carry it. */
  readonly poolId: string;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Reads of the pool that are not transitions: counts, spawns in flight, demand, server start. */
  readonly reader: PoolReader;
  private readonly ctx: PoolContext;
  private readonly ownsRedis: boolean;
  private readonly queues: QueueSet;
  private readonly ownsQueues: boolean;
  private readonly jobs: PoolJobs;
  private readonly vms: PoolVms;
  private readonly leases: Leases;
  private readonly line: AcquireLine;
  private readonly holds: Holds;
  private readonly health: Health;
  private readonly spawns: Spawns;
  private readonly breaker: Breaker;
  private readonly groups: GroupState;
  private readonly stateLoss: StateLoss;
  private readonly telemetry: Telemetry;
  /** Resource limits: quota_cmd's cached answers, and groups whose spawns wait for resources. */
  readonly quotas: Quotas;
  /** Autohold rules: add, list, delete (the release script applies them). */
  readonly autoholds: Autoholds;

  /** A parsed Config is taken as it is; a ConfigInput is parsed (without the environment). */
  constructor(config: Config | ConfigInput, options: VmManagerOptions) {
    this.config = isParsedConfig(config) ? config : parseConfig(config, {});
    this.prefix = options.prefix ?? this.config.redis.prefix;
    // On a Cluster the prefix needs a hash tag; refused before any connection is opened.
    assertPrefixFits(options.redis, this.prefix);
    const { redis, owned } = producerConnectionFrom(options.redis);
    this.ownsRedis = owned;
    this.poolId = poolIdOf(this.config, this.prefix);
    this.logger = options.logger ?? createLogger('vmpool');
    this.clock = options.clock ?? Date.now;
    this.ctx = new PoolContext(redis, this.prefix, this.config, this.logger, this.clock);
    this.reader = this.ctx.reader;
    this.ownsQueues = options.queues === undefined;
    this.queues = options.queues ?? new QueueSet(redis, this.prefix, (err, name) => this.logger.warn({ err: err.message, queue: name }, 'queue error'));
    this.jobs = new PoolJobs(this.queues, this.logger);
    this.vms = new PoolVms(this.ctx, this.jobs);
    this.leases = new Leases(this.ctx, this.clock, replicaWaitOf(this.config.redis));
    this.line = new AcquireLine(this.ctx, this.jobs, this.leases);
    this.holds = new Holds(this.ctx);
    this.health = new Health(this.ctx, this.jobs);
    this.spawns = new Spawns(this.ctx);
    this.groups = new GroupState(this.ctx);
    this.stateLoss = new StateLoss(this.ctx, this.jobs);
    this.telemetry = new Telemetry(this.ctx);
    this.quotas = new Quotas(this.ctx);
    this.breaker = new Breaker(this.ctx, this.quotas);
    this.autoholds = new Autoholds(this.ctx);
  }

  // --- Groups and queue handles ---

  /** The names of the config's groups, in config order (groups are identified by name). */
  get vmGroups(): string[] {
    return this.ctx.vmGroups;
  }

  /** The config of a group by name; UnknownGroup when the config has no such group. */
  groupConfig(group: string): GroupConfig {
    return this.ctx.groupConfig(group);
  }

  /** Public API. The name of the group an input names: its name, or its index in the config (Copr's `group` integer); UnknownGroup when none. */
  resolveGroup(ref: GroupRef): string {
    return this.ctx.resolveGroup(ref);
  }

  /** A group of a public (Copr) call: a number is an index in the config's list; a string is a name, as it is (a group removed from the config still has its VMs). */
  private named(group: GroupRef): string {
    return typeof group === 'number' ? this.ctx.resolveGroup(group) : group;
  }

  /** The group's index in the config's list (the API's alias), or null when the config no longer has it. */
  groupIndex(group: string): number | null {
    return this.ctx.groupIndex(group);
  }

  /** What a provider or health check of the group is given: its config, its index (null once removed), the pool's identity. */
  providerGroup(group: string): ProviderGroup {
    return { index: this.groupIndex(group), config: this.groupConfig(group), poolId: this.poolId };
  }

  /**
   * The group a job payload names: a name as it is; a number is the index that a version-1
   * producer wrote, read through the map that the migration to data format 2 recorded (never
   * through this process's config, whose list may have been reordered). UnknownGroup when the
   * pool recorded no such index.
   */
  async payloadGroup(ref: string | number): Promise<string> {
    if (typeof ref === 'string') return ref;
    const name = await this.reader.legacyGroupName(ref);
    if (name === null) throw new UnknownGroup(ref, `group index ${ref} of a version-1 job: the pool recorded no group under that index (keys.legacyGroupNames)`);
    return name;
  }

  /** The process's handle of a vmpool queue (the one given in the options, or the manager's own). */
  queue(name: QueueName): Queue {
    return this.jobs.queue(name);
  }

  /** The queue that terminate jobs go to, sharing the manager's connection and prefix. */
  getTerminateQueue(): Queue {
    return this.queue(TERMINATE_QUEUE);
  }

  /** The reconcile cycle lock of this pool, on the manager's connection (locks.ts). */
  cycleLock(ttlMs: number): CycleLock {
    return new CycleLock(this.ctx.redis, this.prefix, ttlMs);
  }

  // --- VMs and lookups (vms.ts) ---

  /**
   * Public API (Copr). Adds a VM in got_ip. With `spawnId` (the spawn processor), the VM takes that
   * spawn's slot among the spawns in flight in the same step, so it never counts twice against
   * max_vm_total, and the spawn's record says it was added (a re-run of the spawn then makes no
   * second machine); SpawnSlotLost when the spawn holds no slot any more. `spawnStartedAt` (epoch
   * ms) lets its first passed check measure the group's boot time (target_wait).
   */
  async addVmToPool(vmIp: string, vmName: string, group: GroupRef, options: { spawnId?: string; spawnStartedAt?: number } = {}): Promise<VmDescriptor> {
    return this.vms.addVmToPool(vmIp, vmName, this.named(group), options);
  }

  /** Public API (Copr). One VM; throws VmDescriptorNotFound. */
  async getVmByName(vmName: string): Promise<VmDescriptor> {
    return this.vms.getVmByName(vmName);
  }

  async getVmsByNames(names: readonly string[]): Promise<VmDescriptor[]> {
    return this.vms.getVmsByNames(names);
  }

  /** Public API (Copr). The VMs with that IP. */
  async lookupVmsByIp(vmIp: string): Promise<VmDescriptor[]> {
    return this.vms.lookupVmsByIp(vmIp);
  }

  /**
   * Public API (Copr). The VM the owner's task holds, or null. Task ids are per owner: without the
   * owner, the first in-use VM (by name) of any owner with that task id (reads every in-use VM).
   */
  async getVmByTaskId(taskId: string | number, owner?: string): Promise<VmDescriptor | null> {
    return this.vms.getVmByTaskId(taskId, owner);
  }

  /** Public API (Copr). The VMs of a group (null: every group) in these states. */
  async getVmsByGroupAndStates(group: GroupRef | null, states: readonly VmState[]): Promise<VmDescriptor[]> {
    return this.vms.getVmsByGroupAndStates(group === null ? null : this.named(group), states);
  }

  /** Public API (Copr). */
  async getAllVmsInGroup(group: GroupRef): Promise<VmDescriptor[]> {
    return this.vms.getAllVmsInGroup(this.named(group));
  }

  /** Public API (Copr). */
  async getAllVms(): Promise<VmDescriptor[]> {
    return this.vms.getAllVms();
  }

  /** One page of VMs in name order, filtered through the indexes (PoolReader.vmPage). */
  async listVms(query: VmPageQuery): Promise<VmPage> {
    return this.vms.listVms(query);
  }

  /** Every VM with its bookkeeping fields (lease, hold), for reconcile snapshots. */
  async getAllVmRecords(): Promise<VmRecord[]> {
    return this.vms.getAllVmRecords();
  }

  /** One VM with its bookkeeping fields (lease, hold); throws VmDescriptorNotFound. */
  async getVmRecord(vmName: string): Promise<VmRecord> {
    return this.vms.getVmRecord(vmName);
  }

  /** Number of VMs of the group (any state) that belong to the owner. */
  async countOwnerVms(owner: string, group: GroupRef): Promise<number> {
    return this.vms.countOwnerVms(owner, this.named(group));
  }

  /**
   * Public API (Copr). Whether the owner is under the group's max_vm_per_user and
   * max_resources_per_owner, and one more VM of the group fits its limits across groups (the
   * top-level and its account's max_resources_per_owner).
   */
  async canUserAcquireMoreVm(owner: string, group: GroupRef): Promise<boolean> {
    return this.vms.ownerMayAcquireMore(owner, this.named(group));
  }

  /**
   * Puts every VM into the due-time sets its record calls for (indexDueTimes-1.lua), for VMs
   * recorded before those sets existed; the scripts keep them from then on. O(VMs): reconcile runs
   * it once per process start. Returns how many VMs were indexed.
   */
  async backfillDueTimes(batch = 1000): Promise<number> {
    return this.vms.backfillDueTimes(batch);
  }

  /**
   * Counts the VMs bound to an owner before owners' usage across groups was counted
   * (countOwnerUsage-1.lua), by their group's resources in this config (a removed group's last
   * published config), for the top-level and accounts' max_resources_per_owner; the scripts count
   * every binding from then on. Idempotent, O(VMs): reconcile runs it once per process start.
   * Returns how many VMs were counted.
   */
  async backfillOwnerUsage(batch = 1000): Promise<number> {
    return this.vms.backfillOwnerUsage(batch);
  }

  /**
   * Public API (Copr). Moves the VM to `terminating` and enqueues its terminate job. With
   * allowedPreState, acts only from that state; without it, a VM already terminating is left alone.
   * Returns whether it acted.
   */
  async startVmTermination(vmName: string, allowedPreState?: VmState | null, reason: TerminationReason = 'other'): Promise<boolean> {
    return this.vms.startVmTermination(vmName, allowedPreState, reason);
  }

  /** Public API (Copr). */
  async removeVmFromPool(vmName: string): Promise<void> {
    return this.vms.removeVmFromPool(vmName);
  }

  // --- Holds (holds.ts) ---

  /**
   * Holds a VM out of acquisition (an operator debugging it); it keeps its state otherwise.
   * Returns false when it was already held. A terminating VM cannot be held (VmError).
   * `until` (epoch ms) ends the hold by itself; config max_hold_age (seconds, 0 for none) caps it,
   * and gives a hold without `until` its end.
   */
  async holdVm(vmName: string, by: string, options: HoldOptions = {}): Promise<boolean> {
    return this.holds.hold(vmName, by, options);
  }

  /** Ends a hold; a ready VM can be acquired again. Returns false when it was not held. */
  async unholdVm(vmName: string): Promise<boolean> {
    return this.holds.unhold(vmName);
  }

  /** Ends the holds whose end has come (at most `batch` per call); returns the VMs unheld. */
  async expireHolds(batch = 100): Promise<string[]> {
    return this.holds.expire(batch);
  }

  // --- The acquire line (acquireLine.ts) ---

  /** Public API (Copr). Acquires a VM at once, or throws NoVmAvailable (no waiting in line). */
  async acquireVm(request: AcquireRequest): Promise<VmDescriptor> {
    return this.line.acquireVm(request);
  }

  /**
   * One acquire attempt (acquireVm's rules). With a waiter, the request is served in line: it does
   * not take a VM that a request ahead could take, and when nothing fits it joins the line (the
   * waiters and demand sets) of its groups; it leaves the line on success, or through leaveAcquireLine.
   * The assignment carries a lease of the group's lease_timeout.
   */
  async tryAcquireVm(request: AcquireRequest, waiter?: AcquireWaiter): Promise<AcquireAttempt> {
    return this.line.tryAcquireVm(request, waiter);
  }

  /**
   * One attempt at several VMs at once, all or nothing (acquireVmSet-1.lua): one VM per item, each
   * from its own groups and under its own lease, or none at all ('none': nothing assigned to it;
   * `missing` names the items, 1-based, that cannot have a VM now). Prefers one account (provider)
   * for all items. With a jobId, a re-run gets the VMs given before. Without a waiter it is served outside the acquire line, and with a jobId and demandForMs a set
   * not served counts as demand of each item's first group for that long (so that reconcile spawns
   * VMs for it). With a waiter (an acquire-set job: the acquire processor), the set waits in the
   * line as one request, and the line gives it all its VMs at once when its turn comes and they can
   * all be had. A set that no pool could serve under this config (more items than its groups allow
   * one owner) is refused with InvalidVmRequest; `possibleWith` gives each item's groups to judge
   * that by, when they may grow (fallback groups that may serve it later).
   */
  async tryAcquireVmSet(
    request: AcquireSetRequest,
    options: { demandForMs?: number; waiter?: AcquireWaiter; possibleWith?: readonly (readonly string[])[] } = {},
  ): Promise<AcquireSetAttempt> {
    return this.line.tryAcquireVmSet(request, options);
  }

  /**
   * Several VMs at once, waiting up to `timeoutMs` (NoVmAvailable then): tryAcquireVmSet again
   * every SET_RETRY_MS until the whole set can be had. Nothing is held while it waits. A direct
   * call (as acquireVm without a waiter) is served outside the acquire line: it gets no place in it
   * (an acquire-set job, VmPoolClient.acquireSet, POST /acquire-set, waits in the line instead).
   * Pass a jobId to make a retry after a crash get the same VMs.
   */
  async acquireVmSet(request: AcquireSetRequest, options: { timeoutMs: number; signal?: AbortSignal }): Promise<({ vm: VmDescriptor } & Lease)[]> {
    return this.line.acquireVmSet(request, options);
  }

  /**
   * Runs the acquire line's dispatcher for a group: gives the VM named by a ready message (or, for
   * '', the group's clean ready VMs) to the waiting requests next in line. Returns the job ids
   * served, whose parked jobs are to be woken (promoted).
   */
  async dispatchAcquireLine(group: string, vmName = ''): Promise<string[]> {
    return this.line.dispatch(group, vmName);
  }

  /**
   * Wakes (promotes) the parked jobs of requests the acquire line gave a VM, so that they collect
   * it; a wake lost here is repaired by the acquire processes' sweep (acquire_assigned).
   */
  wakeAcquireJobs(jobIds: readonly string[]): void {
    this.jobs.wakeAcquireJobs(jobIds);
  }

  /**
   * Withdraws a waiting acquire request: out of the line; its job fails as cancelled (with `reason`)
   * at its next attempt; a VM the line gave it that its job did not collect goes back.
   */
  async cancelAcquire(waiter: Pick<AcquireWaiter, 'member' | 'jobId'>, reason: string, keepMs: number): Promise<number> {
    return this.line.requests.cancel(waiter, reason, keepMs);
  }

  /**
   * Takes a waiting request out of the line of its groups (timeout, invalid request, failure): its
   * job gives up. A VM the line gave it that its job did not collect (a set's: all its VMs) goes
   * back at once (its `released` event has reason 'abandoned').
   */
  async leaveAcquireLine(waiter: AcquireWaiter, groups: readonly string[]): Promise<void> {
    return this.line.leave(waiter, groups);
  }

  /**
   * Acquire requests waiting in the group's line (their deadline is after now): those an acquire
   * worker took. Reconcile's demand adds the requests not yet taken (src/reconcile/demand.ts).
   */
  async countDemand(group: string): Promise<number> {
    return this.line.countDemand(group);
  }

  // --- Leases (leases.ts) ---

  /**
   * Public API (Copr). Releases an in_use VM (false for any other state). With a lease id, only that
   * lease's holder may release: a VM in_use under another lease throws LeaseLost and is left alone.
   * With `outcome: 'failed'`, an autohold rule that matches holds the VM (Autoholds).
   */
  async releaseVm(vmName: string, leaseId?: string, options: ReleaseOptions = {}): Promise<boolean> {
    const { released, autohold } = await this.leases.release(vmName, leaseId, releaseOutcomeOf(options.outcome));
    if (released) this.logger.info({ vmName, outcome: options.outcome, autohold }, autohold === null ? 'VM released' : 'VM released and held by an autohold rule');
    return released;
  }

  /**
   * With redis.wait_replicas, waits until that many replicas have this connection's writes
   * (WriteNotReplicated after redis.wait_timeout); without it, returns at once.
   */
  async replicated(): Promise<void> {
    return this.leases.replicated();
  }

  /**
   * Extends the lease of an in_use VM by its lease timeout and returns the new expiry (epoch ms).
   * Throws LeaseLost when the VM is not in_use or holds another lease, VmDescriptorNotFound when gone.
   */
  async renewLease(vmName: string, leaseId: string): Promise<number> {
    return this.leases.renew(vmName, leaseId);
  }

  /**
   * Renews every lease of a set (tryAcquireVmSet's VMs) and returns the earliest new expiry. Each
   * lease is renewed on its own: LeaseLost names the first VM whose lease is gone (the others are
   * renewed all the same, so a builder that lost one VM still holds the rest while it decides).
   */
  async renewLeases(leases: readonly { vmName: string; leaseId: string }[]): Promise<number> {
    const results = await Promise.allSettled(leases.map(({ vmName, leaseId }) => this.leases.renew(vmName, leaseId)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return Math.min(...results.map((r) => (r as PromiseFulfilledResult<number>).value));
  }

  /**
   * Applies each group's on_lease_expiry to VMs whose lease lapsed, at most `batch` per call:
   * `terminate` moves the VM to terminating and enqueues its terminate job (reason lease_expired);
   * `release` ends the build as releaseVm does but moves the VM to check_health (not ready) and
   * enqueues its health job: it is not handed out until that check passes.
   */
  async expireLeases(batch = 100): Promise<ExpiredLease[]> {
    const now = this.clock();
    const expired = await this.leases.expire(now, batch, new Map(this.allGroupConfigs().map((g) => [g.name, g.on_lease_expiry])));
    for (const { vmName, action } of expired) {
      this.logger.warn({ vmName, action }, 'lease expired');
      if (action === 'terminate') await this.jobs.enqueueTermination(vmName, now, 'lease_expired');
      else await this.jobs.enqueueHealthCheck(vmName);
    }
    return expired;
  }

  /** Asks for a health check of the VM (one pending check per VM). Reconcile's periodic check is the fallback. */
  async enqueueHealthCheck(vmName: string): Promise<void> {
    return this.jobs.enqueueHealthCheck(vmName);
  }

  /**
   * Enqueues the terminate job of a VM that a script moved to terminating. If this fails, the VM
   * stays terminating and reconcile's terminateAgain requests it again.
   */
  async enqueueTermination(vmName: string, terminatingSince: number, reason: TerminationReason): Promise<void> {
    return this.jobs.enqueueTermination(vmName, terminatingSince, reason);
  }

  // --- Health (health.ts) ---

  async startVmCheck(vmName: string): Promise<boolean> {
    return this.health.startVmCheck(vmName);
  }

  async recordHealthCheckResult(vmName: string, ok: boolean): Promise<HealthCheckRecord> {
    return this.health.recordHealthCheckResult(vmName, ok);
  }

  /**
   * Takes back a VM that failed its group's check_on_acquire right after the acquire gave it under
   * `leaseId` (to the acquire job `jobId`, '' for none): its lease ends, the job's assignment record
   * goes, and the VM is terminated. False (nothing changed) when the VM is no longer in_use under
   * that lease. The acquire processor calls it; see processors/acquire.ts.
   */
  async failCheckOnAcquire(vmName: string, leaseId: string, jobId: string, detail: string): Promise<boolean> {
    return this.health.failCheckOnAcquire(vmName, leaseId, jobId, detail);
  }

  /** Public API (Copr). */
  async markVmCheckFailed(vmName: string): Promise<boolean> {
    return this.health.markVmCheckFailed(vmName);
  }

  /**
   * The SSH host key kept for a VM (accept-new): the offered one when the VM had none yet, else the
   * one its first check saw; null when no VM of that name has that IP. Kept in the VM's record, so
   * every health replica sees it and it goes when the VM is removed.
   */
  async rememberHostKey(vmName: string, vmIp: string, offered: string): Promise<string | null> {
    return this.health.rememberHostKey(vmName, vmIp, offered);
  }

  /** Public API (Copr). Records the server start: VMs checked before it are not handed out until checked again. */
  async markServerStart(): Promise<void> {
    return this.health.markServerStart();
  }

  /** Public API (Copr: read_server_start). */
  async getServerStart(): Promise<number | null> {
    return this.health.serverStart();
  }

  // --- State loss (stateLoss.ts) ---

  /**
   * Checks the pool's state marker against what this process saw last (src/runtime/poolStateWatch.ts
   * decides what to do with the answer): one script call, cheap enough for every heartbeat.
   */
  async checkPoolState(known: PoolStateSeen): Promise<PoolStateCheck> {
    return this.stateLoss.check(known);
  }

  /** Accepts the state as current on this Redis run; null when the marker changed since `seen`. */
  async verifyPoolState(seen: PoolStateSeen): Promise<PoolStateSeen | null> {
    return this.stateLoss.verify(seen);
  }

  /**
   * Recovers from a loss of the pool's state (recoverPool-1.lua): a new marker `next`, the server
   * start marked again, and every VM not already terminating terminated (reason state_lost), so
   * that no VM a builder held is handed to another. `seen` is the marker as the caller saw it (null
   * when there was none). Returns the VMs terminated, or null when another process recovered first.
   */
  async recoverPool(seen: PoolStateSeen | null, next: PoolStateSeen): Promise<string[] | null> {
    return this.stateLoss.recover(seen, next);
  }

  /** Records that reconcile swept the group's machines after the recovery of `generation` (VmMaster.sweepAfterLoss). */
  async markLossSwept(group: string, generation: string): Promise<void> {
    return this.stateLoss.markSwept(group, generation);
  }

  // --- The breaker (breaker.ts) ---

  /**
   * Records a spawn attempt's outcome in the group's circuit breaker (recordSpawnOutcome-1.lua):
   * `ok` closes it, a failure counts towards opening it. Returns whether this failure opened it.
   */
  async recordSpawnOutcome(group: string, outcome: 'ok' | 'failed', errorClass?: SpawnFailureClass, message = ''): Promise<boolean> {
    return this.breaker.recordSpawnOutcome(group, outcome, errorClass, message);
  }

  /**
   * Which of these groups cannot take new demand now (open spawn breaker, at max_vm_total, or
   * quota_full: its next spawn does not fit a resource limit), so that their fallback_groups serve
   * it (src/acquire/fallback.ts). One pipeline per call.
   */
  async blockedGroups(groups: readonly string[]): Promise<Set<string>> {
    return this.breaker.blockedGroups(groups);
  }

  /** An operator closes the group's circuit breaker (after fixing credentials or the request). */
  async resetBreaker(group: string): Promise<void> {
    return this.breaker.reset(group);
  }

  // --- Group state (groupState.ts) ---

  /** Public API (Copr). */
  async writeVmPoolInfo(group: GroupRef, key: string, value: string | number): Promise<void> {
    return this.groups.writeInfo(this.named(group), key, value);
  }

  /** Public API (Copr). */
  async readVmPoolInfo(group: GroupRef, key: string): Promise<string | null> {
    return this.groups.readInfo(this.named(group), key);
  }

  /**
   * Drains a group at run time (`vmpool drain`), as `max_vm_total: 0` does in the config: reconcile
   * spawns nothing for it, its VMs are still served and retired by their timeouts. Kept in the
   * group's pool info as DRAINED_SINCE. Returns false when it was already drained.
   */
  async drainGroup(group: string): Promise<boolean> {
    return this.groups.drain(group);
  }

  /** Ends a run-time drain (`vmpool undrain`). Returns false when the group was not drained. */
  async undrainGroup(group: string): Promise<boolean> {
    return this.groups.undrain(group);
  }

  /** When the group was drained at run time (epoch ms), or null (the config's max_vm_total: 0 is not this). */
  async drainedSince(group: string): Promise<number | null> {
    return this.groups.drainedSince(group);
  }

  // --- Spawns (spawns.ts) ---

  /**
   * Records a spawn in flight, in Redis, so that a restarted process does not forget it. With
   * `accountLimits` (or a group with max_resources or an account), only if one more VM fits them
   * as the pool is now; else returns the limit and unit it would pass (and null once recorded).
   */
  async registerSpawn(group: string, spawnId: string, accountLimits?: Resources): Promise<{ limit: string; unit: string } | null> {
    return this.spawns.register(group, spawnId, this.quotas.spawnLimits(group, accountLimits));
  }

  /**
   * Starts one attempt (a run of the spawn job) of a spawn in flight, or tells what an earlier
   * attempt left: its VM in the pool, a machine its hook printed, or nothing and no slot.
   */
  async startSpawnAttempt(group: string, spawnId: string): Promise<SpawnAttemptStart> {
    return this.spawns.startAttempt(group, spawnId);
  }

  /**
   * Records the machine a spawn's hook printed, as soon as it printed it (hookDone false) and once
   * the hook succeeded (hookDone true), so that a re-run after a crash adopts or terminates it.
   */
  async recordSpawnMachine(spawnId: string, machine: { name: string; ip: string | null }, hookDone: boolean): Promise<void> {
    return this.spawns.recordMachine(spawnId, machine, hookDone);
  }

  /** Forgets the machine an earlier attempt of the spawn printed, once it is terminated. */
  async forgetSpawnMachine(spawnId: string, vmName: string): Promise<void> {
    return this.spawns.forgetMachine(spawnId, vmName);
  }

  /** Ends a spawn in flight: its slot goes (one its VM took already is gone). */
  async finishSpawn(group: string, spawnId: string): Promise<void> {
    return this.spawns.finish(group, spawnId);
  }

  /** Spawns in flight of a group, oldest first. */
  async getSpawnsInFlight(group: string): Promise<SpawnInFlight[]> {
    return this.spawns.inFlight(group);
  }

  // --- Launch configurations (publishLaunch-1.lua; the rollout: src/reconcile/rollout.ts) ---

  private readonly launchFingerprints = new Map<string, string>();

  /** The fingerprint of this manager's launch config of the group (config/fingerprint.ts; the config does not change). */
  launchFingerprint(group: string): string {
    let fingerprint = this.launchFingerprints.get(group);
    if (fingerprint === undefined) {
      fingerprint = launchFingerprint(this.groupConfig(group));
      this.launchFingerprints.set(group, fingerprint);
    }
    return fingerprint;
  }

  /**
   * Publishes this process's launch config of the group as the current one, unless a newer one is
   * published (a higher launch_revision, or one published after `process.startedAt`, or this
   * fingerprint was current once and superseded: a revision only moves forward): see the
   * script's header for the rule (and launchOrphanedAfterMs). A superseded process is listed in
   * launchStates' `deferring`.
   */
  async publishLaunch(group: string, process: { startedAt: number; processId: string }): Promise<LaunchPublication> {
    const g = this.groupConfig(group);
    const maxReadyAgeMs = g.max_ready_age === undefined ? undefined : Math.round(g.max_ready_age * 1000);
    return this.ctx.scripts.publishLaunch(group, { fingerprint: this.launchFingerprint(group), launchRevision: g.launch_revision, maxReadyAgeMs, ...process }, this.clock(), {
      deferringTtlMs: LAUNCH_DEFERRING_MEMORY_MS,
      orphanedAfterMs: launchOrphanedAfterMs(this.config.vm_cycle_timeout),
    });
  }

  /** Each group's published launch, its count of outdated VMs, and the processes that defer to it. */
  async launchStates(groups: readonly string[] = this.vmGroups): Promise<LaunchState[]> {
    return this.reader.launchStates(groups, this.clock() - LAUNCH_DEFERRING_MEMORY_MS);
  }

  // --- History and telemetry (telemetry.ts) ---

  /**
   * Tells the scripts how many events the audit trail keeps (config audit.max_events; without it,
   * their default). Reconcile writes it every cycle, so it comes back after Redis lost its data.
   */
  async writeAuditRetention(): Promise<void> {
    return this.telemetry.writeAuditRetention();
  }

  /**
   * What target_wait sizes the group's warm pool from: the arrival rate over `windowMs` and the
   * boot time. Minutes older than the window are dropped from the arrivals hash on the way.
   */
  async measureTargetWait(group: string, windowMs: number): Promise<TargetWaitMeasure & { bootSamples: number }> {
    return this.telemetry.measureTargetWait(group, windowMs);
  }
  /**
   * Bounds the arrivals that the acquire scripts count in a group without target_wait (nothing reads
   * them there): at most a day of minutes, plus an hour of slack before a trim. Returns the minutes
   * dropped. Reconcile calls it every cycle for such groups.
   */
  async trimUnmeasuredArrivals(group: string): Promise<number> {
    return this.telemetry.trimUnmeasuredArrivals(group);
  }


  /**
   * Adds one history sample per group (newest first), keeping the last `keep` of each, and the
   * acquire wait mark the next sample diffs against: one transaction, O(groups).
   */
  async appendHistory(samples: ReadonlyMap<string, HistorySample>, mark: AcquireWaitMark, keep: number): Promise<void> {
    return this.telemetry.appendHistory(samples, mark, keep);
  }

  /** The group's history samples of the last `sinceMs` (oldest first), for the pool page. */
  async readHistory(group: string, sinceMs: number, limit?: number): Promise<HistorySample[]> {
    return this.telemetry.readHistory(group, sinceMs, limit);
  }

  /** Replaces what the group's orphan pass keeps for the next one (read it with reader.orphanPassState). */
  async replaceOrphanPassState(
    group: string,
    state: { unknown: Record<string, string | number>; missing: Record<string, string | number>; untagged?: readonly string[] },
  ): Promise<void> {
    return this.telemetry.replaceOrphanPassState(group, state);
  }

  /** Records the config's groups in the pool's registry of known groups, with their published configs (reconcile, every cycle; O(groups)). */
  async registerConfigGroups(): Promise<void> {
    return this.groups.registerConfigGroups();
  }

  /** Reads again the groups removed from the config that the pool still has (they drain), with their published configs. */
  async refreshRemovedGroups(): Promise<ReadonlyMap<string, GroupConfig>> {
    return this.ctx.refreshRemovedGroups();
  }

  /** The groups removed from the config that drain, as last read (refreshRemovedGroups). */
  get removedGroups(): ReadonlyMap<string, GroupConfig> {
    return this.ctx.removedGroups;
  }

  /** The config's groups, then the removed groups that drain (their published configs). */
  allGroupConfigs(): GroupConfig[] {
    return [...this.config.groups, ...this.ctx.removedGroups.values()];
  }

  /** A group's config, the config's or a removed group's (read again when not known yet); UnknownGroup otherwise. */
  async knownGroupConfig(group: string): Promise<GroupConfig> {
    return this.ctx.knownGroupConfig(group);
  }

  /**
   * Renames a group in place, with its VMs, under the reconcile cycle lock (groupNames.ts,
   * renameGroup): its keys, VM and spawn records, waiting requests and metrics move to the new
   * name. Deploy the config with the new name next: while a config still names the old group, it
   * is a new, empty group again (it spawns its warm pool), and the renamed one drains as removed.
   * `to` must match GROUP_NAME_PATTERN and be new to the pool; InvalidVmRequest otherwise.
   */
  async renameGroup(from: string, to: string, lockTtlMs = 60_000): Promise<GroupRename> {
    if (!isGroupName(to)) throw new InvalidVmRequest(`invalid group name ${JSON.stringify(to)}: a letter or digit, then up to 63 letters, digits or . _ -, not only digits`);
    if (from === to) throw new InvalidVmRequest('rename to another name');
    const ran = await this.cycleLock(lockTtlMs).run(() => renameGroup(this.ctx, from, to));
    if (!ran.acquired) throw new VmError('a reconcile cycle holds the pool; try again in a moment');
    const renamed = ran.value;
    this.logger.info({ from, to, vms: renamed.vms }, 'group renamed');
    return renamed;
  }

  /** Forgets a removed group once it has no VM, spawn or waiting request: its keys go, and it leaves the registry. */
  async forgetGroupIfEmpty(group: string): Promise<boolean> {
    return this.groups.forgetIfEmpty(group);
  }

  /** The groups the pool has known (config groups, and groups removed from the config that still drain). */
  async knownGroups(): Promise<string[]> {
    return this.groups.knownGroups();
  }

  /** Public API (Copr: copr_get_vm_info). A human-readable table per group. */
  async info(): Promise<string> {
    const vms = await this.getAllVms();
    return formatPoolInfo(this.config, vms, this.clock(), await this.groups.drained());
  }

  /** Closes what the manager opened itself: its queue handles and its connection (not injected ones). */
  async close(): Promise<void> {
    if (this.ownsQueues) await this.queues.close();
    const { redis } = this.ctx;
    if (this.ownsRedis) await redis.quit().catch(() => redis.disconnect());
  }
}

/** How long a process that defers to another launch config is listed without being seen again. */
export const LAUNCH_DEFERRING_MEMORY_MS = 5 * 60_000;

/**
 * After how long without a cycle of a process running it a group's published launch config is
 * orphaned, and any process takes over: 30 cycles, at least 5 minutes (a rolling restart's
 * replicas take turns at the cycle lock, so the current config's are not that long without one).
 */
export function launchOrphanedAfterMs(cycleSeconds: number): number {
  return Math.max(5 * 60_000, Math.round(30 * cycleSeconds * 1000));
}

export { VmStates };
