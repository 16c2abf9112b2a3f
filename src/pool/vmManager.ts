import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { parseConfig, type Config, type ConfigInput, type GroupConfig } from '../config.js';
import { createLogger, type Logger } from '../logger.js';
import { createProducerConnection } from '../redis.js';
import {
  TERMINATE_QUEUE,
  terminateJobId,
  terminateJobOptions,
  type TerminateJobData,
  type TerminationReason,
} from '../../queues/terminate.js';
import { poolKeys, type PoolKeys } from './keys.js';
import { loadScripts } from './scripts.js';
import { formatPoolInfo } from './info.js';
import {
  ALL_VM_STATES,
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
  workerId: string;
  taskId?: string | null;
  buildId?: string | null;
  chroot?: string | null;
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
  private terminateQueue: Queue | undefined;

  constructor(config: Config | ConfigInput, options: VmManagerOptions) {
    this.config = parseConfig(config, {});
    if (typeof options.redis === 'string') {
      this.redis = createProducerConnection(options.redis);
      this.ownsRedis = true;
    } else {
      this.redis = options.redis;
      this.ownsRedis = false;
    }
    this.prefix = options.prefix ?? this.config.redis.prefix;
    this.logger = options.logger ?? createLogger('vmpool');
    this.clock = options.clock ?? Date.now;
    this.keys = poolKeys(this.prefix);
    this.runScript = loadScripts(this.redis);
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
    this.terminateQueue ??= new Queue(TERMINATE_QUEUE, { connection: this.redis, prefix: this.prefix });
    return this.terminateQueue;
  }

  async addVmToPool(vmIp: string, vmName: string, group: number): Promise<VmDescriptor> {
    if (!isValidVmName(vmName)) {
      throw new VmError(`invalid VM name ${JSON.stringify(vmName)}: expected 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
    }
    if (!isValidVmIp(vmIp)) throw new VmError(`invalid IP address ${JSON.stringify(vmIp)} for VM ${vmName}`);
    this.groupConfig(group);
    const added = await this.runScript('addVm', [this.keys.base], [vmName, vmIp, group]);
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

  async getVmByTaskId(taskId: string): Promise<VmDescriptor | null> {
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
    const { groups, owner, sandbox, workerId } = request ?? ({} as AcquireRequest);
    if (!Array.isArray(groups) || groups.length === 0) throw new VmError('acquireVm needs a non-empty list of groups');
    for (const g of groups) this.groupConfig(g);
    if (typeof owner !== 'string' || owner === '') throw new VmError('acquireVm needs an owner');
    if (typeof sandbox !== 'string') throw new VmError('acquireVm needs a sandbox');
    if (typeof workerId !== 'string') throw new VmError('acquireVm needs a workerId');
    const optional = (v: string | null | undefined, field: string): string => {
      if (v === undefined || v === null) return '';
      if (typeof v !== 'string') throw new VmError(`acquireVm: ${field} must be a string`);
      return v;
    };
    const args: (string | number)[] = [
      this.clock(),
      owner,
      sandbox,
      workerId,
      optional(request.taskId, 'taskId'),
      optional(request.buildId, 'buildId'),
      optional(request.chroot, 'chroot'),
      groups.length,
    ];
    for (const g of groups) args.push(g, this.groupConfig(g).max_vm_per_user);
    const reply = (await this.runScript('acquireVm', [this.keys.base], args)) as [string, string[] | string];
    const [status, payload] = reply;
    if (status === 'acquired' || status === 'reattached') {
      const vm = descriptorFromHash(payload as string[]);
      this.logger.info({ vmName: vm.vmName, owner, sandbox, taskId: vm.taskId, reattached: status === 'reattached' }, 'VM acquired');
      return vm;
    }
    if (status === 'task_conflict') {
      throw new VmError(`task ${request.taskId} already holds VM ${String(payload)} for another owner or sandbox`);
    }
    throw new NoVmAvailable(`no VM available for owner ${owner} in groups [${groups.join(', ')}]`);
  }

  async releaseVm(vmName: string): Promise<boolean> {
    const result = await this.runScript('releaseVm', [this.keys.base], [vmName, this.clock()]);
    if (result === -1) throw new VmDescriptorNotFound(vmName);
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
   * Enqueues the terminate job of a VM that a script moved to terminating. If this fails, the VM
   * stays terminating and reconcile's terminateAgain requests it again.
   */
  private async enqueueTermination(vmName: string, terminatingSince: number, reason: TerminationReason): Promise<void> {
    try {
      const data: TerminateJobData = { vmName, reason };
      await this.getTerminateQueue().add('terminate', data, {
        ...terminateJobOptions,
        jobId: terminateJobId(vmName, terminatingSince),
      });
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
    const hash = await this.redis.hget(this.keys.vm(vmName), 'group');
    if (hash === null) throw new VmDescriptorNotFound(vmName);
    const maxFails = this.config.groups[Number(hash)]?.vm_max_check_fails ?? 0;
    const now = this.clock();
    const reply = (await this.runScript('recordHealthCheckResult', [this.keys.base], [vmName, ok ? '1' : '0', maxFails, now])) as [
      string,
      string[]?,
    ];
    if (reply[0] === 'missing') throw new VmDescriptorNotFound(vmName);
    const outcome = reply[0] as HealthCheckOutcome;
    const vm = descriptorFromHash(reply[1] ?? []);
    if (outcome === 'terminating') {
      this.logger.warn({ vmName, checkFails: vm.checkFails, maxFails }, 'VM failed too many health checks');
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
    await this.redis.set(this.keys.serverStart, String(this.clock()));
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
    const flat = await this.redis.zrange(this.keys.spawning(group), 0, -1, 'WITHSCORES');
    const out: { spawnId: string; startedAt: number }[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ spawnId: flat[i]!, startedAt: Number(flat[i + 1]) });
    return out;
  }

  /** Acquire requests of the group still waiting (their deadline is after now). */
  async countDemand(group: number): Promise<number> {
    return this.redis.zcount(this.keys.demand(group), `(${this.clock()}`, '+inf');
  }

  /** A human-readable table per group, as Copr's copr_get_vm_info printed it. */
  async info(): Promise<string> {
    const vms = await this.getAllVms();
    return formatPoolInfo(this.config, vms, this.clock());
  }

  async close(): Promise<void> {
    await this.terminateQueue?.close();
    this.terminateQueue = undefined;
    if (this.ownsRedis) await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

export { VmStates };
