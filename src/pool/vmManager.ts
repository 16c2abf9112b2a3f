import { randomUUID } from 'node:crypto';
import { Job, type Queue } from 'bullmq';
import { isParsedConfig, parseConfig, type Config, type ConfigInput, type GroupConfig } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { assertPrefixFits, producerConnectionFrom, replicaWaitOf, waitForReplicas, type RedisConnection, type RedisTarget } from '../redis.js';
import {
  TERMINATE_QUEUE,
  addTerminateJob,
  terminateJobId,
  type TerminationReason,
} from '../../queues/terminate.js';
import { HEALTH_QUEUE, addHealthJob } from '../../queues/health.js';
import { QueueNames, type QueueName } from '../../queues/names.js';
import { QueueSet } from '../../queues/queueSet.js';
import type { AcquireRequestData } from '../../queues/acquire.js';
import { poolKeys, type PoolKeys } from './keys.js';
import { PoolReader, type SpawnInFlight, type VmPage, type VmPageQuery } from './poolReader.js';
import { PoolScripts, type PoolStateCheck, type PoolStateSeen } from './poolScripts.js';
import { formatPoolInfo } from './info.js';
import { arrivalRateFromBuckets, type TargetWaitMeasure } from '../reconcile/targetWait.js';
import { breakerPolicy, needsOperator } from '../reconcile/breaker.js';
import { blockedGroups } from '../acquire/fallback.js';
import { UNCLASSIFIED, type SpawnFailureClass } from '../providers/spawnErrors.js';
import { poolIdOf } from './poolId.js';
import { HISTORY_SAMPLES, parseHistory, type AcquireWaitMark, type HistorySample } from '../reconcile/history.js';
import {
  ALL_VM_STATES,
  InvalidVmRequest,
  NoVmAvailable,
  UnknownGroup,
  VmDescriptorNotFound,
  VmStates,
  isValidVmIp,
  isValidVmName,
  isVmState,
  activeVmCount,
  type AcquireAttempt,
  type AcquireWaiter,
  type ExpiredLease,
  type HealthCheckRecord,
  type SpawnAttemptStart,
  type VmDescriptor,
  type VmRecord,
  type VmState,
} from './types.js';

export { acquireWaiterMember } from './types.js';
export type { AcquireAttempt, AcquireWaiter, ExpiredLease, HealthCheckOutcome, HealthCheckRecord } from './types.js';

export type Clock = () => number;

/**
 * How long a spawn's record (what its attempts printed and added) outlives its last attempt's
 * start: far longer than any retry or stalled-job recovery of its job.
 */
export const SPAWN_RECORD_TTL_MS = 24 * 3600 * 1000;

/** Pool info field of a group drained at run time: when (epoch ms). See VmManager.drainGroup. */
export const DRAINED_SINCE = 'drained_since';

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
 * What acquireVm needs: an acquire job's payload (AcquireRequestData) with its groups resolved (no
 * arch), the worker that asks, and optionally the lease id. The acquire processor passes the payload
 * itself; Copr-style callers build one.
 */
export interface AcquireRequest extends Pick<AcquireRequestData, 'owner' | 'sandbox'> {
  groups: number[];
  /** Numbers are taken too (a pid, Copr's numeric build ids) and stored as text. */
  workerId: string | number;
  taskId?: string | number | null;
  buildId?: string | number | null;
  chroot?: string | null;
  /** Lease id of the assignment; a random one when not given. */
  leaseId?: string;
}

/**
 * The VM registry and its state machine (Copr's VmManager): the pool's API. Every state transition
 * is one atomic Lua script (poolScripts.ts) over per-group and per-state indexes, so no operation
 * scans the pool; reads go through its read model (`reader`). Its Redis keys are its own.
 */
export interface HoldOptions {
  /** When the hold ends by itself (epoch ms); null or absent: when unheld (or max_hold_age). */
  until?: number | null;
  /** Why the VM is held, shown beside the holder. */
  reason?: string | null;
}

export class VmManager {
  readonly config: Config;
  readonly prefix: string;
  /** The pool's identity (pool_id, else derived from the prefix); its machines carry it. */
  readonly poolId: string;
  readonly logger: Logger;
  readonly clock: Clock;
  /** Reads of the pool that are not transitions: counts, spawns in flight, demand, server start. */
  readonly reader: PoolReader;
  private readonly redis: RedisConnection;
  private readonly keys: PoolKeys;
  private readonly ownsRedis: boolean;
  private readonly scripts: PoolScripts;
  private readonly queues: QueueSet;
  private readonly ownsQueues: boolean;

  /** A parsed Config is taken as it is; a ConfigInput is parsed (without the environment). */
  constructor(config: Config | ConfigInput, options: VmManagerOptions) {
    this.config = isParsedConfig(config) ? config : parseConfig(config, {});
    this.prefix = options.prefix ?? this.config.redis.prefix;
    // On a Cluster the prefix needs a hash tag; refused before any connection is opened.
    assertPrefixFits(options.redis, this.prefix);
    ({ redis: this.redis, owned: this.ownsRedis } = producerConnectionFrom(options.redis));
    this.poolId = poolIdOf(this.config, this.prefix);
    this.logger = options.logger ?? createLogger('vmpool');
    this.clock = options.clock ?? Date.now;
    this.keys = poolKeys(this.prefix);
    this.reader = new PoolReader(this.redis, this.prefix);
    this.scripts = new PoolScripts(this.redis, this.prefix);
    this.ownsQueues = options.queues === undefined;
    this.queues =
      options.queues ?? new QueueSet(this.redis, this.prefix, (err, name) => this.logger.warn({ err: err.message, queue: name }, 'queue error'));
  }

  /** Group ids: indexes into config.groups. */
  get vmGroups(): number[] {
    return this.config.groups.map((_, i) => i);
  }

  /** The config of a group; UnknownGroup when the config has no such group. */
  groupConfig(group: number): GroupConfig {
    const g = Number.isInteger(group) ? this.config.groups[group] : undefined;
    if (!g) throw new UnknownGroup(group, this.config.groups.length);
    return g;
  }

  /** The process's handle of a vmpool queue (the one given in the options, or the manager's own). */
  queue(name: QueueName): Queue {
    return this.queues.get(name);
  }

  /** The queue that terminate jobs go to, sharing the manager's connection and prefix. */
  getTerminateQueue(): Queue {
    return this.queue(TERMINATE_QUEUE);
  }

  /**
   * The manager's Redis connection, for modules that keep keys of their own beside the pool's (the
   * reconcile cycle lock, the job metrics that workers keep in Redis). The pool's keys are not
   * theirs: they read the pool through `reader` and change it through the manager's methods.
   */
  connectionForOwnKeys(): RedisConnection {
    return this.redis;
  }

  /**
   * Adds a VM in got_ip. With `spawnId` (the spawn processor), the VM takes that spawn's slot among
   * the spawns in flight in the same step, so it never counts twice against max_vm_total, and the
   * spawn's record says it was added (a re-run of the spawn then makes no second machine);
   * SpawnSlotLost when the spawn holds no slot any more. `spawnStartedAt` (epoch ms) lets its first
   * passed check measure the group's boot time (target_wait).
   */
  async addVmToPool(vmIp: string, vmName: string, group: number, options: { spawnId?: string; spawnStartedAt?: number } = {}): Promise<VmDescriptor> {
    if (!isValidVmName(vmName)) {
      throw new InvalidVmRequest(`invalid VM name ${JSON.stringify(vmName)}: expected 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
    }
    if (!isValidVmIp(vmIp)) throw new InvalidVmRequest(`invalid IP address ${JSON.stringify(vmIp)} for VM ${vmName}`);
    this.groupConfig(group);
    const { spawnId, spawnStartedAt } = options;
    await this.scripts.addVm(vmName, vmIp, group, this.clock(), spawnId || spawnStartedAt !== undefined ? { spawnId: spawnId ?? '', recordTtlMs: SPAWN_RECORD_TTL_MS, startedAt: spawnStartedAt } : undefined);
    this.logger.info({ vmName, vmIp, group, spawnId }, 'VM added to pool');
    return this.getVmByName(vmName);
  }

  async getVmByName(vmName: string): Promise<VmDescriptor> {
    const vm = typeof vmName === 'string' && vmName !== '' ? await this.reader.vmDescriptor(vmName) : null;
    if (!vm) throw new VmDescriptorNotFound(String(vmName));
    return vm;
  }

  async getVmsByNames(names: readonly string[]): Promise<VmDescriptor[]> {
    return this.reader.vmDescriptors(names);
  }

  async lookupVmsByIp(vmIp: string): Promise<VmDescriptor[]> {
    if (typeof vmIp !== 'string' || vmIp === '') return [];
    return this.getVmsByNames(await this.reader.vmNamesByIp(vmIp));
  }

  async getVmByTaskId(taskId: string | number): Promise<VmDescriptor | null> {
    if (typeof taskId === 'number' && Number.isFinite(taskId)) taskId = String(taskId);
    if (typeof taskId !== 'string' || taskId === '') return null;
    const name = await this.reader.vmNameOfTask(taskId);
    if (!name) return null;
    const [vm] = await this.getVmsByNames([name]);
    return vm && vm.taskId === taskId ? vm : null;
  }

  async getVmsByGroupAndStates(group: number | null, states: readonly VmState[]): Promise<VmDescriptor[]> {
    for (const s of states) if (!isVmState(s)) throw new InvalidVmRequest(`unknown VM state ${JSON.stringify(s)}`);
    if (states.length === 0) return [];
    if (group !== null) this.groupConfig(group);
    return this.getVmsByNames(await this.reader.vmNamesByGroupsAndStates(group === null ? this.vmGroups : [group], states));
  }

  async getAllVmsInGroup(group: number): Promise<VmDescriptor[]> {
    return this.getVmsByGroupAndStates(group, ALL_VM_STATES);
  }

  async getAllVms(): Promise<VmDescriptor[]> {
    return this.getVmsByNames(await this.reader.allVmNames());
  }

  /** Every VM with its bookkeeping fields (bound since, lease), for reconcile snapshots. */
  /** One page of VMs in name order, filtered through the indexes (PoolReader.vmPage). */
  async listVms(query: VmPageQuery): Promise<VmPage> {
    return this.reader.vmPage(query, this.vmGroups);
  }

  async getAllVmRecords(): Promise<VmRecord[]> {
    return this.reader.vmRecords(await this.reader.allVmNames());
  }

  /** One VM with its bookkeeping fields (lease, hold); throws VmDescriptorNotFound. */
  async getVmRecord(vmName: string): Promise<VmRecord> {
    const vm = typeof vmName === 'string' && vmName !== '' ? await this.reader.vmRecord(vmName) : null;
    if (!vm) throw new VmDescriptorNotFound(String(vmName));
    return vm;
  }

  /**
   * Holds a VM out of acquisition (an operator debugging it); it keeps its state otherwise.
   * Returns false when it was already held. A terminating VM cannot be held (VmError).
   * `until` (epoch ms) ends the hold by itself; config max_hold_age (seconds, 0 for none) caps it,
   * and gives a hold without `until` its end.
   */
  async holdVm(vmName: string, by: string, options: HoldOptions = {}): Promise<boolean> {
    if (typeof by !== 'string' || by === '') throw new InvalidVmRequest('holdVm needs who holds the VM');
    const now = this.clock();
    const { until = null, reason = null } = options;
    if (until !== null && (!Number.isFinite(until) || until <= now)) throw new InvalidVmRequest(`a hold must end in the future (until ${JSON.stringify(until)})`);
    if (reason !== null && (typeof reason !== 'string' || reason.length > 1024)) throw new InvalidVmRequest('a hold reason is text of at most 1024 characters');
    const maxAge = this.config.max_hold_age * 1000;
    const end = maxAge > 0 ? Math.min(until ?? Infinity, now + maxAge) : until;
    const held = await this.scripts.holdVm(vmName, by, now, end, reason ?? '');
    if (held) this.logger.info({ vmName, by, until: end, reason }, 'VM held');
    return held;
  }

  /**
   * Puts every VM into the due-time sets its record calls for (indexDueTimes-1.lua), for VMs
   * recorded before those sets existed; the scripts keep them from then on. O(VMs): reconcile runs
   * it once per process start. Returns how many VMs were indexed.
   */
  async backfillDueTimes(batch = 1000): Promise<number> {
    let indexed = 0;
    for (const names of await this.reader.allVmNameBatches(batch)) indexed += await this.scripts.indexDueTimes(names);
    return indexed;
  }

  /** Ends the holds whose end has come (at most `batch` per call); returns the VMs unheld. */
  async expireHolds(batch = 100): Promise<string[]> {
    const ended = await this.scripts.expireHolds(this.clock(), batch);
    for (const vmName of ended) this.logger.info({ vmName }, 'VM hold ended (its time was up)');
    return ended;
  }

  /** Ends a hold; a ready VM can be acquired again. Returns false when it was not held. */
  async unholdVm(vmName: string): Promise<boolean> {
    const unheld = await this.scripts.unholdVm(vmName);
    if (unheld) this.logger.info({ vmName }, 'VM unheld');
    return unheld;
  }

  /** Number of VMs of the group (any state) bound to the owner (Copr's name). */
  async countUserVms(owner: string, group: number): Promise<number> {
    this.groupConfig(group);
    return this.reader.ownerVmCount(group, owner);
  }

  /** Whether the owner is under the group's max_vm_per_user (Copr's name). */
  async canUserAcquireMoreVm(owner: string, group: number): Promise<boolean> {
    const limit = this.groupConfig(group).max_vm_per_user;
    return (await this.countUserVms(owner, group)) < limit;
  }

  async acquireVm(request: AcquireRequest): Promise<VmDescriptor> {
    const attempt = await this.tryAcquireVm(request);
    if (attempt.status === 'acquired' || attempt.status === 'reattached') return attempt.vm;
    throw new NoVmAvailable(`no VM available for owner ${request.owner} in groups [${request.groups.join(', ')}]`);
  }

  /**
   * One acquire attempt (acquireVm's rules). With a waiter, the request is served in line: it does
   * not take a VM that a request ahead could take, and when nothing fits it joins the line (the
   * waiters and demand sets) of its groups; it leaves the line on success, or through leaveAcquireLine.
   * The assignment carries a lease of the group's lease_timeout.
   */
  async tryAcquireVm(request: AcquireRequest, waiter?: AcquireWaiter): Promise<AcquireAttempt> {
    const { groups, owner, sandbox, workerId } = request ?? ({} as AcquireRequest);
    if (!Array.isArray(groups) || groups.length === 0) throw new InvalidVmRequest('acquireVm needs a non-empty list of groups');
    for (const g of groups) this.groupConfig(g);
    if (typeof owner !== 'string' || owner === '') throw new InvalidVmRequest('acquireVm needs an owner');
    if (typeof sandbox !== 'string') throw new InvalidVmRequest('acquireVm needs a sandbox');
    if (workerId === undefined || workerId === null) throw new InvalidVmRequest('acquireVm needs a workerId');
    const attempt = await this.scripts.acquireVm({
      now: this.clock(),
      owner,
      sandbox,
      workerId: asText(workerId, 'workerId'),
      taskId: asText(request.taskId, 'taskId'),
      buildId: asText(request.buildId, 'buildId'),
      chroot: asText(request.chroot, 'chroot'),
      leaseId: request.leaseId || randomUUID(),
      waiter,
      groups: groups.map((group) => {
        const gc = this.groupConfig(group);
        return { group, maxVmPerOwner: gc.max_vm_per_user, leaseTimeoutMs: Math.round(gc.lease_timeout * 1000) };
      }),
    });
    // Requests ahead that this attempt's dispatch served are woken here, whoever the caller is.
    if (attempt.status !== 'cancelled' && attempt.served?.length) this.wakeAcquireJobs(attempt.served);
    if (attempt.status === 'acquired' || attempt.status === 'reattached') {
      // redis.wait_replicas: the assignment is answered only once replicas have it.
      await this.replicated();
      const { vm } = attempt;
      this.logger.info({ vmName: vm.vmName, owner, sandbox, taskId: vm.taskId, reattached: attempt.status === 'reattached' }, 'VM acquired');
    }
    return attempt;
  }

  /**
   * Runs the acquire line's dispatcher for a group: gives the VM named by a ready message (or, for
   * '', the group's clean ready VMs) to the waiting requests next in line. Returns the job ids
   * served, whose parked jobs are to be woken (promoted).
   */
  async dispatchAcquireLine(group: number, vmName = ''): Promise<string[]> {
    this.groupConfig(group);
    const served = await this.scripts.dispatchAcquireLine(group, vmName, this.clock());
    this.wakeAcquireJobs(served);
    return served;
  }

  /**
   * Wakes (promotes) the parked jobs of requests the acquire line gave a VM, so that they collect
   * it. A job that is not delayed (its own attempt runs, or it was never parked) collects its VM at
   * its attempt: that refusal is ignored, as is a job gone. A wake lost here is repaired by the
   * acquire processes' sweep (acquire_assigned).
   */
  wakeAcquireJobs(jobIds: readonly string[]): void {
    if (jobIds.length === 0) return;
    const queue = this.queue(QueueNames.ACQUIRE);
    // A bare Job handle: promote needs only the queue and the id (no read of the job first).
    for (const id of jobIds) void new Job(queue, 'acquire', {}, {}, id).promote().catch(() => undefined);
  }

  /**
   * Withdraws a waiting acquire request: out of the line; its job fails as cancelled (with `reason`)
   * at its next attempt; a VM the line gave it that its job did not collect goes back.
   */
  async cancelAcquire(waiter: Pick<AcquireWaiter, 'member' | 'jobId'>, reason: string, keepMs: number): Promise<number> {
    return this.scripts.cancelAcquire(waiter, reason, keepMs, this.clock());
  }

  /** Takes a waiting request out of the line of its groups (timeout, invalid request, shutdown). */
  async leaveAcquireLine(waiter: AcquireWaiter, groups: readonly number[]): Promise<void> {
    await this.scripts.leaveAcquireLine(waiter, groups);
  }

  /** @deprecated The line of waiting requests is no BullMQ queue: use leaveAcquireLine. */
  async leaveAcquireQueue(waiter: AcquireWaiter, groups: readonly number[]): Promise<void> {
    await this.leaveAcquireLine(waiter, groups);
  }

  /**
   * Releases an in_use VM (false for any other state). With a lease id, only that lease's holder may
   * release: a VM in_use under another lease throws LeaseLost and is left alone.
   */
  async releaseVm(vmName: string, leaseId?: string): Promise<boolean> {
    const released = await this.scripts.releaseVm(vmName, this.clock(), leaseId);
    if (released) await this.replicated();
    if (released) this.logger.info({ vmName }, 'VM released');
    return released;
  }

  /**
   * With redis.wait_replicas, waits until that many replicas have this connection's writes
   * (WriteNotReplicated after redis.wait_timeout); without it, returns at once.
   */
  async replicated(): Promise<void> {
    const wait = replicaWaitOf(this.config.redis);
    if (wait) await waitForReplicas(this.redis, this.prefix, wait);
  }

  /**
   * Moves the VM to `terminating` and enqueues its terminate job. With allowedPreState, acts only
   * from that state; without it, a VM already terminating is left alone. Returns whether it acted.
   */
  async startVmTermination(vmName: string, allowedPreState?: VmState | null, reason: TerminationReason = 'other'): Promise<boolean> {
    if (allowedPreState != null && !isVmState(allowedPreState)) {
      throw new InvalidVmRequest(`unknown VM state ${JSON.stringify(allowedPreState)}`);
    }
    const now = this.clock();
    if (!(await this.scripts.startVmTermination(vmName, allowedPreState ?? '', now, reason))) return false;
    await this.enqueueTermination(vmName, now, reason);
    return true;
  }

  /**
   * Extends the lease of an in_use VM by its lease timeout and returns the new expiry (epoch ms).
   * Throws LeaseLost when the VM is not in_use or holds another lease, VmDescriptorNotFound when gone.
   */
  async renewLease(vmName: string, leaseId: string): Promise<number> {
    return this.scripts.renewLease(vmName, leaseId, this.clock());
  }

  /**
   * Applies each group's on_lease_expiry to VMs whose lease lapsed, at most `batch` per call:
   * `terminate` moves the VM to terminating and enqueues its terminate job (reason lease_expired);
   * `release` ends the build as releaseVm does but moves the VM to check_health (not ready) and
   * enqueues its health job: it is not handed out until that check passes.
   */
  async expireLeases(batch = 100): Promise<ExpiredLease[]> {
    const now = this.clock();
    const expired = await this.scripts.expireLeases(now, batch, this.config.groups.map((g) => g.on_lease_expiry));
    for (const { vmName, action } of expired) {
      this.logger.warn({ vmName, action }, 'lease expired');
      if (action === 'terminate') await this.enqueueTermination(vmName, now, 'lease_expired');
      else await this.enqueueHealthCheck(vmName);
    }
    return expired;
  }

  /** Asks for a health check of the VM (one pending check per VM). Reconcile's periodic check is the fallback. */
  async enqueueHealthCheck(vmName: string): Promise<void> {
    try {
      await addHealthJob(this.queue(HEALTH_QUEUE), vmName);
    } catch (err) {
      this.logger.error({ err, vmName }, 'could not enqueue health job; reconcile will check the VM later');
    }
  }

  /**
   * Enqueues the terminate job of a VM that a script moved to terminating. If this fails, the VM
   * stays terminating and reconcile's terminateAgain requests it again.
   */
  async enqueueTermination(vmName: string, terminatingSince: number, reason: TerminationReason): Promise<void> {
    try {
      await addTerminateJob(this.getTerminateQueue(), { vmName, reason }, terminateJobId(vmName, terminatingSince));
      this.logger.info({ vmName, reason }, 'VM termination requested');
    } catch (err) {
      this.logger.error({ err, vmName, reason }, 'could not enqueue terminate job; reconcile will request it again');
    }
  }

  async removeVmFromPool(vmName: string): Promise<void> {
    await this.scripts.removeVm(vmName);
    this.logger.info({ vmName }, 'VM removed from pool');
  }

  async startVmCheck(vmName: string): Promise<boolean> {
    return this.scripts.startVmCheck(vmName, this.clock());
  }

  async recordHealthCheckResult(vmName: string, ok: boolean): Promise<HealthCheckRecord> {
    const now = this.clock();
    // Every group's threshold goes along, so the script needs no read of the VM's group first.
    const maxFails = this.config.groups.map((g) => g.vm_max_check_fails);
    const record = await this.scripts.recordHealthCheckResult(vmName, ok, now, maxFails);
    const { outcome, vm } = record;
    if (outcome === 'terminating') {
      this.logger.warn({ vmName, checkFails: vm.checkFails, maxFails: maxFails[vm.group] }, 'VM failed too many health checks');
      await this.enqueueTermination(vmName, now, 'health_check_failed');
    } else if (outcome === 'failed') {
      this.logger.warn({ vmName, checkFails: vm.checkFails }, 'VM health check failed');
    }
    return record;
  }

  async markVmCheckFailed(vmName: string): Promise<boolean> {
    return this.scripts.markVmCheckFailed(vmName);
  }

  /**
   * Checks the pool's state marker against what this process saw last (src/runtime/poolStateWatch.ts
   * decides what to do with the answer): one script call, cheap enough for every heartbeat.
   */
  async checkPoolState(known: PoolStateSeen): Promise<PoolStateCheck> {
    return this.scripts.checkPoolState(known, randomUUID(), this.clock());
  }

  /** Accepts the state as current on this Redis run; null when the marker changed since `seen`. */
  async verifyPoolState(seen: PoolStateSeen): Promise<PoolStateSeen | null> {
    return this.scripts.verifyPoolState(seen, this.config.groups.length);
  }

  /**
   * Recovers from a loss of the pool's state (recoverPool-1.lua): a new marker `next`, the server
   * start marked again, and every VM not already terminating terminated (reason state_lost), so
   * that no VM a builder held is handed to another. `seen` is the marker as the caller saw it (null
   * when there was none). Returns the VMs terminated, or null when another process recovered first.
   */
  async recoverPool(seen: PoolStateSeen | null, next: PoolStateSeen): Promise<string[] | null> {
    const now = this.clock();
    const terminated = await this.scripts.recoverPool(seen, next, now, this.config.groups.length);
    if (terminated === null) return null;
    for (const vmName of terminated) await this.enqueueTermination(vmName, now, 'state_lost');
    return terminated;
  }

  /** Records that reconcile swept the group's machines after the recovery of `generation` (VmMaster.sweepAfterLoss). */
  async markLossSwept(group: number, generation: string): Promise<void> {
    this.groupConfig(group);
    await this.redis.hset(this.keys.poolState, `swept:${group}`, generation);
  }

  /** Records the server start: VMs checked before it are not handed out until checked again. */
  async markServerStart(): Promise<void> {
    await this.scripts.markServerStart(this.clock());
  }

  /**
   * Tells the scripts how many events the audit trail keeps (config audit.max_events; without it,
   * their default). Reconcile writes it every cycle, so it comes back after Redis lost its data.
   */
  async writeAuditRetention(): Promise<void> {
    const max = this.config.audit?.max_events;
    if (max === undefined) await this.redis.del(this.keys.auditMaxEvents);
    else await this.redis.set(this.keys.auditMaxEvents, String(max));
  }

  async getServerStart(): Promise<number | null> {
    return this.reader.serverStart();
  }

  /**
   * What target_wait sizes the group's warm pool from: the arrival rate over `windowMs` and the
   * boot time. Minutes older than the window are dropped from the arrivals hash on the way.
   */
  async measureTargetWait(group: number, windowMs: number): Promise<TargetWaitMeasure & { bootSamples: number }> {
    this.groupConfig(group);
    const now = this.clock();
    const [buckets, boot] = await Promise.all([this.reader.arrivals(group), this.reader.bootTime(group)]);
    const firstMinute = Math.floor((now - windowMs) / 60_000) + 1;
    const old = [...buckets.keys()].filter((m) => m < firstMinute);
    if (old.length > 0) await this.redis.hdel(this.keys.arrivals(group), ...old.map(String));
    return { arrivalRate: arrivalRateFromBuckets(buckets, now, windowMs), bootMs: boot.emaMs, bootSamples: boot.samples };
  }

  /**
   * Records a spawn attempt's outcome in the group's circuit breaker (recordSpawnOutcome-1.lua):
   * `ok` closes it, a failure counts towards opening it. Returns whether this failure opened it.
   */
  async recordSpawnOutcome(group: number, outcome: 'ok' | 'failed', errorClass: SpawnFailureClass = UNCLASSIFIED, message = ''): Promise<boolean> {
    const g = this.groupConfig(group);
    if (outcome === 'ok') return this.scripts.recordSpawnOutcome(group, 'ok', this.clock());
    const policy = breakerPolicy(g);
    const opened = await this.scripts.recordSpawnOutcome(group, 'failed', this.clock(), {
      errorClass,
      threshold: policy.failures,
      backoffSeconds: policy.backoff,
      maxBackoffSeconds: policy.maxBackoff,
      needsOperator: needsOperator(errorClass),
      message: message.slice(0, 300),
    });
    if (opened) this.logger.warn({ group, errorClass, message: message.slice(0, 300) }, 'spawn circuit breaker opened: no spawns in the group until it closes');
    return opened;
  }

  /**
   * Which of these groups cannot take new demand now (open spawn breaker, or at max_vm_total), so
   * that their fallback_groups serve it (src/acquire/fallback.ts). One pipeline per call.
   */
  async blockedGroups(groups: readonly number[]): Promise<Set<number>> {
    const [counts, breakers] = await Promise.all([this.reader.stateCounts(groups), Promise.all(groups.map((g) => this.reader.breaker(g)))]);
    return blockedGroups(this.config.groups, groups.map((g, i) => ({ group: g, breaker: breakers[i], active: activeVmCount(counts[i]!) })), this.clock());
  }

  /** An operator closes the group's circuit breaker (after fixing credentials or the request). */
  async resetBreaker(group: number): Promise<void> {
    this.groupConfig(group);
    await this.scripts.recordSpawnOutcome(group, 'reset', this.clock());
    this.logger.info({ group }, 'spawn circuit breaker reset');
  }

  /** Counts acquire requests that arrived for the group now (their first group). */
  async countArrivals(group: number, count = 1): Promise<void> {
    this.groupConfig(group);
    await this.redis.hincrby(this.keys.arrivals(group), String(Math.floor(this.clock() / 60_000)), count);
  }

  async writeVmPoolInfo(group: number, key: string, value: string | number): Promise<void> {
    this.groupConfig(group);
    await this.redis.hset(this.keys.groupInfo(group), key, String(value));
  }

  async readVmPoolInfo(group: number, key: string): Promise<string | null> {
    this.groupConfig(group);
    return this.reader.groupInfo(group, key);
  }

  /**
   * Drains a group at run time (`vmpool drain`), as `max_vm_total: 0` does in the config: reconcile
   * spawns nothing for it, its VMs are still served and retired by their timeouts. Kept in the
   * group's pool info as DRAINED_SINCE. Returns false when it was already drained.
   */
  async drainGroup(group: number): Promise<boolean> {
    this.groupConfig(group);
    return (await this.redis.hsetnx(this.keys.groupInfo(group), DRAINED_SINCE, String(this.clock()))) === 1;
  }

  /** Ends a run-time drain (`vmpool undrain`). Returns false when the group was not drained. */
  async undrainGroup(group: number): Promise<boolean> {
    this.groupConfig(group);
    return (await this.redis.hdel(this.keys.groupInfo(group), DRAINED_SINCE)) === 1;
  }

  /** When the group was drained at run time (epoch ms), or null (the config's max_vm_total: 0 is not this). */
  async drainedSince(group: number): Promise<number | null> {
    const value = await this.readVmPoolInfo(group, DRAINED_SINCE);
    return value !== null && /^\d+$/.test(value) ? Number(value) : null;
  }

  /**
   * The SSH host key kept for a VM (accept-new): the offered one when the VM had none yet, else the
   * one its first check saw; null when no VM of that name has that IP. Kept in the VM's record, so
   * every health replica sees it and it goes when the VM is removed.
   */
  async rememberHostKey(vmName: string, vmIp: string, offered: string): Promise<string | null> {
    return this.scripts.rememberHostKey(vmName, vmIp, offered);
  }

  /** Records a spawn in flight, in Redis, so that a restarted process does not forget it. */
  async registerSpawn(group: number, spawnId: string): Promise<void> {
    this.groupConfig(group);
    await this.redis.zadd(this.keys.spawning(group), this.clock(), spawnId);
  }

  /**
   * Starts one attempt (a run of the spawn job) of a spawn in flight, or tells what an earlier
   * attempt left: its VM in the pool, a machine its hook printed, or nothing and no slot.
   */
  async startSpawnAttempt(group: number, spawnId: string): Promise<SpawnAttemptStart> {
    this.groupConfig(group);
    return this.scripts.startSpawnAttempt(spawnId, group, this.clock(), SPAWN_RECORD_TTL_MS);
  }

  /**
   * Records the machine a spawn's hook printed, as soon as it printed it (hookDone false) and once
   * the hook succeeded (hookDone true), so that a re-run after a crash adopts or terminates it.
   */
  async recordSpawnMachine(spawnId: string, machine: { name: string; ip: string | null }, hookDone: boolean): Promise<void> {
    await this.scripts.recordSpawnMachine(spawnId, machine.name, machine.ip, hookDone, SPAWN_RECORD_TTL_MS);
  }

  /** Forgets the machine an earlier attempt of the spawn printed, once it is terminated. */
  async forgetSpawnMachine(spawnId: string, vmName: string): Promise<void> {
    await this.scripts.forgetSpawnMachine(spawnId, vmName);
  }

  async finishSpawn(group: number, spawnId: string): Promise<void> {
    await this.redis.zrem(this.keys.spawning(group), spawnId);
  }

  /** Spawns in flight of a group, oldest first. */
  async getSpawnsInFlight(group: number): Promise<SpawnInFlight[]> {
    return this.reader.spawnsInFlight(group);
  }

  /**
   * Acquire requests waiting in the group's line (their deadline is after now): those an acquire
   * worker took. Reconcile's demand adds the requests still queued (src/reconcile/demand.ts).
   */
  async countDemand(group: number): Promise<number> {
    return this.reader.countDemand(group, this.clock());
  }

  /**
   * Adds one history sample per group (newest first), keeping the last `keep` of each, and the
   * acquire wait mark the next sample diffs against: one transaction, O(groups).
   */
  async appendHistory(samples: ReadonlyMap<number, HistorySample>, mark: AcquireWaitMark, keep: number): Promise<void> {
    const tx = this.redis.multi();
    for (const [group, sample] of samples) {
      this.groupConfig(group);
      tx.lpush(this.keys.history(group), JSON.stringify(sample)).ltrim(this.keys.history(group), 0, keep - 1);
    }
    tx.set(this.keys.historyAcquire, JSON.stringify(mark));
    await tx.exec();
  }

  /** The group's history samples of the last `sinceMs` (oldest first), for the pool page. */
  async readHistory(group: number, sinceMs: number, limit = HISTORY_SAMPLES): Promise<HistorySample[]> {
    this.groupConfig(group);
    const from = this.clock() - sinceMs;
    return parseHistory(await this.reader.history(group, limit))
      .filter((s) => s.t >= from)
      .reverse();
  }

  /** Replaces what the group's orphan pass keeps for the next one (read it with reader.orphanPassState). */
  async replaceOrphanPassState(
    group: number,
    state: { unknown: Record<string, string | number>; missing: Record<string, string | number>; untagged?: readonly string[] },
  ): Promise<void> {
    const unknownKey = this.keys.orphanUnknown(group);
    const missingKey = this.keys.orphanMissing(group);
    const untaggedKey = this.keys.orphanUntagged(group);
    const tx = this.redis.multi().del(unknownKey, missingKey, untaggedKey);
    if (Object.keys(state.unknown).length > 0) tx.hset(unknownKey, state.unknown);
    if (Object.keys(state.missing).length > 0) tx.hset(missingKey, state.missing);
    if (state.untagged && state.untagged.length > 0) tx.sadd(untaggedKey, ...state.untagged);
    await tx.exec();
  }

  /** A human-readable table per group, as Copr's copr_get_vm_info printed it. */
  async info(): Promise<string> {
    const vms = await this.getAllVms();
    const drained = new Map<number, number>();
    for (const group of this.vmGroups) {
      const since = await this.drainedSince(group);
      if (since !== null) drained.set(group, since);
    }
    return formatPoolInfo(this.config, vms, this.clock(), drained);
  }

  /** Closes what the manager opened itself: its queue handles and its connection (not injected ones). */
  async close(): Promise<void> {
    if (this.ownsQueues) await this.queues.close();
    if (this.ownsRedis) await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

/** Builders often carry numeric ids (Copr's build ids, a worker pid): they are stored as text ('' for none). */
function asText(value: unknown, field: string): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (typeof value !== 'string') throw new InvalidVmRequest(`acquireVm: ${field} must be a string or a number`);
  return value;
}

export { VmStates };
