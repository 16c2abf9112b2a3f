import { randomUUID } from 'node:crypto';
import type { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { parseConfig, type Config, type ConfigInput, type GroupConfig } from '../config.js';
import { createLogger, type Logger } from '../logger.js';
import { producerConnectionFrom } from '../redis.js';
import {
  TERMINATE_QUEUE,
  addTerminateJob,
  terminateJobId,
  type TerminationReason,
} from '../../queues/terminate.js';
import { HEALTH_QUEUE, addHealthJob } from '../../queues/health.js';
import { QueueSet } from '../../queues/queueSet.js';
import { poolKeys, type PoolKeys } from './keys.js';
import { runRenewLease } from './renewLease.js';
import { loadScripts } from './scripts.js';
import { formatPoolInfo } from './info.js';
import {
  ALL_VM_STATES,
  LeaseLost,
  NoVmAvailable,
  VmDescriptorNotFound,
  VmError,
  VmStates,
  descriptorFromHash,
  recordFromHash,
  isValidVmIp,
  isValidVmName,
  isVmState,
  type VmDescriptor,
  type VmRecord,
  type VmState,
} from './types.js';

export type Clock = () => number;

export interface VmManagerOptions {
  /** An ioredis instance (shared, not closed by the manager) or a Redis URL (owned and closed). */
  redis: Redis | string;
  /** Key prefix of the pool and of its BullMQ queues. Defaults to config.redis.prefix. */
  prefix?: string;
  logger?: Logger;
  clock?: Clock;
}

export interface AcquireRequest {
  groups: number[];
  owner: string;
  sandbox: string;
  /** Numbers are taken too (a pid, Copr's numeric build ids) and stored as text. */
  workerId: string | number;
  taskId?: string | number | null;
  buildId?: string | number | null;
  chroot?: string | null;
  /** Lease id of the assignment; a random one when not given. */
  leaseId?: string;
}

/**
 * A waiting acquire request (an acquire job): its place in the line of each group it asked for.
 * The waiters sorted set is scored by priority; member order (job timestamp first) breaks ties.
 */
export interface AcquireWaiter {
  /** `<job timestamp, 15 digits>|<job id>` (see acquireWaiterMember). */
  member: string;
  /** BullMQ priority: 0 (none) first, then 1, 2, ... */
  priority: number;
  /** Epoch ms after which the request no longer counts as waiting or demand. */
  deadline: number;
  /** The acquire job id: its member in the demand sets. */
  jobId: string;
}

export function acquireWaiterMember(jobTimestamp: number, jobId: string): string {
  return `${String(Math.max(0, Math.trunc(jobTimestamp))).padStart(15, '0')}|${jobId}`;
}

export type AcquireAttempt =
  | { status: 'acquired' | 'reattached'; vm: VmDescriptor; leaseId: string; leaseExpiresAt: number }
  /** none: nothing fits; deferred: a VM fits, but a request ahead in line could take it. */
  | { status: 'none' | 'deferred' };

/** What expireLeases did to one VM: the group's on_lease_expiry. */
export interface ExpiredLease {
  vmName: string;
  action: 'terminate' | 'release';
}

export type HealthCheckOutcome = 'ok' | 'failed' | 'terminating' | 'ignored';

export interface HealthCheckRecord {
  outcome: HealthCheckOutcome;
  vm: VmDescriptor;
}

/**
 * The VM registry and its state machine (Copr's VmManager). Every state transition is one atomic
 * Lua script over per-group and per-state indexes, so no operation scans the pool.
 */
export class VmManager {
  readonly config: Config;
  readonly redis: Redis;
  readonly prefix: string;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly keys: PoolKeys;
  private readonly ownsRedis: boolean;
  private readonly runScript: ReturnType<typeof loadScripts>;
  private readonly queues: QueueSet;

  constructor(config: Config | ConfigInput, options: VmManagerOptions) {
    this.config = parseConfig(config, {});
    ({ redis: this.redis, owned: this.ownsRedis } = producerConnectionFrom(options.redis));
    this.prefix = options.prefix ?? this.config.redis.prefix;
    this.logger = options.logger ?? createLogger('vmpool');
    this.clock = options.clock ?? Date.now;
    this.keys = poolKeys(this.prefix);
    this.runScript = loadScripts(this.redis);
    this.queues = new QueueSet(this.redis, this.prefix, (err, name) => this.logger.warn({ err: err.message, queue: name }, 'queue error'));
  }

  /** Group ids: indexes into config.groups. */
  get vmGroups(): number[] {
    return this.config.groups.map((_, i) => i);
  }

  groupConfig(group: number): GroupConfig {
    const g = Number.isInteger(group) ? this.config.groups[group] : undefined;
    if (!g) throw new VmError(`unknown group ${JSON.stringify(group)}; groups are 0..${this.config.groups.length - 1}`);
    return g;
  }

  /** The queue that terminate jobs go to, sharing the manager's connection and prefix. */
  getTerminateQueue(): Queue {
    return this.queues.get(TERMINATE_QUEUE);
  }

  async addVmToPool(vmIp: string, vmName: string, group: number): Promise<VmDescriptor> {
    if (!isValidVmName(vmName)) {
      throw new VmError(`invalid VM name ${JSON.stringify(vmName)}: expected 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
    }
    if (!isValidVmIp(vmIp)) throw new VmError(`invalid IP address ${JSON.stringify(vmIp)} for VM ${vmName}`);
    this.groupConfig(group);
    const added = await this.runScript('addVm', [this.keys.base], [vmName, vmIp, group, this.clock()]);
    if (added !== 1) throw new VmError(`VM ${vmName} is already in the pool`);
    this.logger.info({ vmName, vmIp, group }, 'VM added to pool');
    return this.getVmByName(vmName);
  }

  async getVmByName(vmName: string): Promise<VmDescriptor> {
    if (typeof vmName !== 'string' || vmName === '') throw new VmDescriptorNotFound(String(vmName));
    const hash = await this.redis.hgetall(this.keys.vm(vmName));
    if (!hash.state) throw new VmDescriptorNotFound(vmName);
    return descriptorFromHash(hash);
  }

  /** Reads many VM hashes in one round trip, skipping any that disappeared meanwhile; sorted by name. */
  private async readVmHashes(names: readonly string[]): Promise<Record<string, string>[]> {
    if (names.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const name of names) pipeline.hgetall(this.keys.vm(name));
    const replies = (await pipeline.exec()) ?? [];
    const hashes: Record<string, string>[] = [];
    for (const [err, hash] of replies) {
      if (err) throw err;
      const h = hash as Record<string, string>;
      if (h.state) hashes.push(h);
    }
    return hashes.sort((a, b) => (a.vm_name ?? '').localeCompare(b.vm_name ?? ''));
  }

  async getVmsByNames(names: readonly string[]): Promise<VmDescriptor[]> {
    return (await this.readVmHashes(names)).map(descriptorFromHash);
  }

  async lookupVmsByIp(vmIp: string): Promise<VmDescriptor[]> {
    if (typeof vmIp !== 'string' || vmIp === '') return [];
    return this.getVmsByNames(await this.redis.smembers(this.keys.ip(vmIp)));
  }

  async getVmByTaskId(taskId: string | number): Promise<VmDescriptor | null> {
    if (typeof taskId === 'number' && Number.isFinite(taskId)) taskId = String(taskId);
    if (typeof taskId !== 'string' || taskId === '') return null;
    const name = await this.redis.get(this.keys.task(taskId));
    if (!name) return null;
    const [vm] = await this.getVmsByNames([name]);
    return vm && vm.taskId === taskId ? vm : null;
  }

  async getVmsByGroupAndStates(group: number | null, states: readonly VmState[]): Promise<VmDescriptor[]> {
    for (const s of states) if (!isVmState(s)) throw new VmError(`unknown VM state ${JSON.stringify(s)}`);
    if (states.length === 0) return [];
    const groups = group === null ? this.vmGroups : [group];
    if (group !== null) this.groupConfig(group);
    const stateKeys = groups.flatMap((g) => states.map((s) => this.keys.state(g, s)));
    const names = await this.redis.sunion(...stateKeys);
    return this.getVmsByNames(names);
  }

  async getAllVmsInGroup(group: number): Promise<VmDescriptor[]> {
    return this.getVmsByGroupAndStates(group, ALL_VM_STATES);
  }

  async getAllVms(): Promise<VmDescriptor[]> {
    return this.getVmsByNames(await this.redis.smembers(this.keys.allVms));
  }

  /** Every VM with its bookkeeping fields (bound since, lease), for reconcile snapshots. */
  async getAllVmRecords(): Promise<VmRecord[]> {
    return (await this.readVmHashes(await this.redis.smembers(this.keys.allVms))).map(recordFromHash);
  }

  /** One VM with its bookkeeping fields (lease, hold); throws VmDescriptorNotFound. */
  async getVmRecord(vmName: string): Promise<VmRecord> {
    if (typeof vmName !== 'string' || vmName === '') throw new VmDescriptorNotFound(String(vmName));
    const hash = await this.redis.hgetall(this.keys.vm(vmName));
    if (!hash.state) throw new VmDescriptorNotFound(vmName);
    return recordFromHash(hash);
  }

  /**
   * Holds a VM out of acquisition (an operator debugging it); it keeps its state otherwise.
   * Returns false when it was already held. A terminating VM cannot be held (VmError).
   */
  async holdVm(vmName: string, by: string): Promise<boolean> {
    if (typeof by !== 'string' || by === '') throw new VmError('holdVm needs who holds the VM');
    const result = await this.runScript('holdVm', [this.keys.base], [vmName, by, this.clock()]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    if (result === -2) throw new VmError(`VM ${vmName} is terminating and cannot be held`);
    if (result === 1) this.logger.info({ vmName, by }, 'VM held');
    return result === 1;
  }

  /** Ends a hold; a ready VM can be acquired again. Returns false when it was not held. */
  async unholdVm(vmName: string): Promise<boolean> {
    const result = await this.runScript('unholdVm', [this.keys.base], [vmName]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    if (result === 1) this.logger.info({ vmName }, 'VM unheld');
    return result === 1;
  }

  /** Number of VMs of the group (any state) bound to the user. */
  async countUserVms(username: string, group: number): Promise<number> {
    this.groupConfig(group);
    return Number((await this.redis.hget(this.keys.userVms(group), username)) ?? 0);
  }

  async canUserAcquireMoreVm(username: string, group: number): Promise<boolean> {
    const limit = this.groupConfig(group).max_vm_per_user;
    return (await this.countUserVms(username, group)) < limit;
  }

  async acquireVm(request: AcquireRequest): Promise<VmDescriptor> {
    const attempt = await this.tryAcquireVm(request);
    if (attempt.status === 'acquired' || attempt.status === 'reattached') return attempt.vm;
    throw new NoVmAvailable(`no VM available for owner ${request.owner} in groups [${request.groups.join(', ')}]`);
  }

  /**
   * One acquire attempt (acquireVm's rules). With a waiter, the request is served in line: it does
   * not take a VM that a request ahead could take, and when nothing fits it joins the waiters and
   * demand sets of its groups (it leaves them on success, or through leaveAcquireQueue).
   * The assignment carries a lease of the group's lease_timeout.
   */
  async tryAcquireVm(request: AcquireRequest, waiter?: AcquireWaiter): Promise<AcquireAttempt> {
    const { groups, owner, sandbox, workerId } = request ?? ({} as AcquireRequest);
    if (!Array.isArray(groups) || groups.length === 0) throw new VmError('acquireVm needs a non-empty list of groups');
    for (const g of groups) this.groupConfig(g);
    if (typeof owner !== 'string' || owner === '') throw new VmError('acquireVm needs an owner');
    if (typeof sandbox !== 'string') throw new VmError('acquireVm needs a sandbox');
    // Builders often carry numeric ids (Copr's build ids, a worker pid): they are stored as text.
    const text = (v: unknown, field: string): string => {
      if (v === undefined || v === null) return '';
      if (typeof v === 'number' && Number.isFinite(v)) return String(v);
      if (typeof v !== 'string') throw new VmError(`acquireVm: ${field} must be a string or a number`);
      return v;
    };
    if (workerId === undefined || workerId === null) throw new VmError('acquireVm needs a workerId');
    const optional = text;
    const args: (string | number)[] = [
      this.clock(),
      owner,
      sandbox,
      text(workerId, 'workerId'),
      optional(request.taskId, 'taskId'),
      optional(request.buildId, 'buildId'),
      optional(request.chroot, 'chroot'),
      request.leaseId || randomUUID(),
      waiter?.member ?? '',
      waiter?.priority ?? 0,
      waiter?.deadline ?? 0,
      waiter?.jobId ?? '',
      groups.length,
    ];
    for (const g of groups) {
      const gc = this.groupConfig(g);
      args.push(g, gc.max_vm_per_user, Math.round(gc.lease_timeout * 1000));
    }
    const reply = (await this.runScript('acquireVm', [this.keys.base], args)) as [string, string[] | string];
    const [status, payload] = reply;
    if (status === 'acquired' || status === 'reattached') {
      const vm = descriptorFromHash(payload as string[]);
      const { leaseId, leaseExpiresAt } = recordFromHash(payload as string[]);
      this.logger.info({ vmName: vm.vmName, owner, sandbox, taskId: vm.taskId, reattached: status === 'reattached' }, 'VM acquired');
      return { status, vm, leaseId: leaseId ?? '', leaseExpiresAt: leaseExpiresAt ?? 0 };
    }
    if (status === 'task_conflict') {
      throw new VmError(`task ${request.taskId} already holds VM ${String(payload)} for another owner or sandbox`);
    }
    return { status: status === 'deferred' ? 'deferred' : 'none' };
  }

  /** Takes a waiting request out of the line of its groups (timeout, invalid request, shutdown). */
  async leaveAcquireQueue(waiter: AcquireWaiter, groups: readonly number[]): Promise<void> {
    await this.runScript('leaveAcquireQueue', [this.keys.base], [waiter.member, waiter.jobId, ...groups]);
  }

  /**
   * Releases an in_use VM (false for any other state). With a lease id, only that lease's holder may
   * release: a VM in_use under another lease throws LeaseLost and is left alone.
   */
  async releaseVm(vmName: string, leaseId?: string): Promise<boolean> {
    const result = await this.runScript('releaseVm', [this.keys.base], [vmName, this.clock(), leaseId ?? '']);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    if (result === -2) throw new LeaseLost(vmName, leaseId ?? '', 'lease_mismatch');
    if (result === 1) this.logger.info({ vmName }, 'VM released');
    return result === 1;
  }

  /**
   * Moves the VM to `terminating` and enqueues its terminate job. With allowedPreState, acts only
   * from that state; without it, a VM already terminating is left alone. Returns whether it acted.
   */
  async startVmTermination(vmName: string, allowedPreState?: VmState | null, reason: TerminationReason = 'other'): Promise<boolean> {
    if (allowedPreState != null && !isVmState(allowedPreState)) {
      throw new VmError(`unknown VM state ${JSON.stringify(allowedPreState)}`);
    }
    const now = this.clock();
    const result = await this.runScript('startVmTermination', [this.keys.base], [vmName, allowedPreState ?? '', now]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    if (result !== 1) return false;
    await this.enqueueTermination(vmName, now, reason);
    return true;
  }

  /**
   * Extends the lease of an in_use VM by its lease timeout and returns the new expiry (epoch ms).
   * Throws LeaseLost when the VM is not in_use or holds another lease, VmDescriptorNotFound when gone.
   */
  async renewLease(vmName: string, leaseId: string): Promise<number> {
    return runRenewLease(this.runScript, this.keys, vmName, leaseId, this.clock());
  }

  /**
   * Applies each group's on_lease_expiry to VMs whose lease lapsed, at most `batch` per call:
   * `terminate` moves the VM to terminating and enqueues its terminate job (reason lease_expired);
   * `release` ends the build as releaseVm does but moves the VM to check_health (not ready) and
   * enqueues its health job: it is not handed out until that check passes.
   */
  async expireLeases(batch = 100): Promise<ExpiredLease[]> {
    const now = this.clock();
    const args: (string | number)[] = [now, batch, this.config.groups.length];
    this.config.groups.forEach((g, i) => args.push(i, g.on_lease_expiry));
    const flat = (await this.runScript('expireLeases', [this.keys.base], args)) as string[];
    const out: ExpiredLease[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const vmName = flat[i]!;
      const action = flat[i + 1] === 'release' ? 'release' : 'terminate';
      out.push({ vmName, action });
      this.logger.warn({ vmName, action }, 'lease expired');
      if (action === 'terminate') await this.enqueueTermination(vmName, now, 'lease_expired');
      else await this.enqueueHealthCheck(vmName);
    }
    return out;
  }

  /** Asks for a health check of the VM (one pending check per VM). Reconcile's periodic check is the fallback. */
  async enqueueHealthCheck(vmName: string): Promise<void> {
    try {
      await addHealthJob(this.queues.get(HEALTH_QUEUE), vmName);
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
    const result = await this.runScript('removeVm', [this.keys.base], [vmName]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    if (result !== 1) throw new VmError(`VM ${vmName} is not terminating; only a terminating VM can be removed`);
    this.logger.info({ vmName }, 'VM removed from pool');
  }

  async startVmCheck(vmName: string): Promise<boolean> {
    const result = await this.runScript('startVmCheck', [this.keys.base], [vmName, this.clock()]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    return result === 1;
  }

  async recordHealthCheckResult(vmName: string, ok: boolean): Promise<HealthCheckRecord> {
    const now = this.clock();
    // Every group's threshold goes along, so the script needs no read of the VM's group first.
    const maxFails = this.config.groups.map((g) => g.vm_max_check_fails);
    const reply = (await this.runScript('recordHealthCheckResult', [this.keys.base], [vmName, ok ? '1' : '0', now, ...maxFails])) as [
      string,
      string[]?,
    ];
    if (reply[0] === 'missing') throw new VmDescriptorNotFound(vmName);
    const outcome = reply[0] as HealthCheckOutcome;
    const vm = descriptorFromHash(reply[1] ?? []);
    if (outcome === 'terminating') {
      this.logger.warn({ vmName, checkFails: vm.checkFails, maxFails: maxFails[vm.group] }, 'VM failed too many health checks');
      await this.enqueueTermination(vmName, now, 'health_check_failed');
    } else if (outcome === 'failed') {
      this.logger.warn({ vmName, checkFails: vm.checkFails }, 'VM health check failed');
    }
    return { outcome, vm };
  }

  async markVmCheckFailed(vmName: string): Promise<boolean> {
    const result = await this.runScript('markVmCheckFailed', [this.keys.base], [vmName]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
    return result === 1;
  }

  /** Records the server start: VMs checked before it are not handed out until checked again. */
  async markServerStart(): Promise<void> {
    await this.runScript('markServerStart', [this.keys.base], [this.clock()]);
  }

  async getServerStart(): Promise<number | null> {
    const value = await this.redis.get(this.keys.serverStart);
    return value === null ? null : Number(value);
  }

  async writeVmPoolInfo(group: number, key: string, value: string | number): Promise<void> {
    this.groupConfig(group);
    await this.redis.hset(this.keys.groupInfo(group), key, String(value));
  }

  async readVmPoolInfo(group: number, key: string): Promise<string | null> {
    this.groupConfig(group);
    return this.redis.hget(this.keys.groupInfo(group), key);
  }

  /** Records a spawn in flight, in Redis, so that a restarted process does not forget it. */
  async registerSpawn(group: number, spawnId: string): Promise<void> {
    this.groupConfig(group);
    await this.redis.zadd(this.keys.spawning(group), this.clock(), spawnId);
  }

  async finishSpawn(group: number, spawnId: string): Promise<void> {
    await this.redis.zrem(this.keys.spawning(group), spawnId);
  }

  /** Spawns in flight of a group, oldest first. */
  async getSpawnsInFlight(group: number): Promise<{ spawnId: string; startedAt: number }[]> {
    const flat = await this.redis.zrange(this.keys.spawning(group), 0, '-1', 'WITHSCORES');
    const out: { spawnId: string; startedAt: number }[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ spawnId: flat[i]!, startedAt: Number(flat[i + 1]) });
    return out;
  }

  /**
   * Acquire requests waiting in the group's line (their deadline is after now): those an acquire
   * worker took. Reconcile's demand adds the requests still queued (src/reconcile/demand.ts).
   */
  async countDemand(group: number): Promise<number> {
    return this.redis.zcount(this.keys.demand(group), `(${this.clock()}`, '+inf');
  }

  /** A human-readable table per group, as Copr's copr_get_vm_info printed it. */
  async info(): Promise<string> {
    const vms = await this.getAllVms();
    return formatPoolInfo(this.config, vms, this.clock());
  }

  async close(): Promise<void> {
    await this.queues.close();
    if (this.ownsRedis) await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

export { VmStates };
