import type { Redis } from 'ioredis';
import { poolKeys, type PoolKeys } from './keys.js';
import { sharedMetricKey, sharedMetrics } from '../metrics/shared.js';
import { ALL_VM_STATES, descriptorFromHash, recordFromHash, type LeasedVm, type VmDescriptor, type VmRecord, type VmState } from './types.js';

/** A spawn in flight: registered by reconcile, finished by its spawn job. */
export interface SpawnInFlight {
  spawnId: string;
  startedAt: number;
}

/** What the orphan pass keeps between passes (name -> epoch ms): machines unknown to the pool, pool VMs the provider missed. */
export interface OrphanPassState {
  unknown: Record<string, string>;
  missing: Record<string, string>;
}

/**
 * The pool's read model: every read of the pool's Redis keys that is not a script, for VmManager and
 * for those who have only a connection and a prefix (VmPoolClient). Reads never change the pool.
 * Each read is one round trip (pipelined where it reads many keys), never a scan of the pool.
 */
/** Where a waiting request stands in one group's line (PoolReader.lineStanding). */
export interface LineStanding {
  /** 0-based rank among its owner's waiting requests in the group; null when not in the line. */
  ownerRank: number | null;
  /** Owners ahead of its owner in the round-robin; null while its owner is blocked (at max_vm_per_user). */
  ownersAhead: number | null;
  blocked: boolean;
  /** Owners in the round-robin (not blocked). */
  owners: number;
  /** Requests waiting in the group. */
  waiting: number;
  /** The best (lowest) priority waiting in the group. */
  bestPriority: number | null;
  ownerVms: number;
  readyDirty: number;
  readyClean: number;
}

export class PoolReader {
  private readonly keys: PoolKeys;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    this.keys = poolKeys(prefix);
  }

  /** Whether Redis answers a PING. */
  async ping(): Promise<boolean> {
    return (await this.redis.ping()) === 'PONG';
  }

  /** One VM with its bookkeeping fields, or null when it is not in the pool. */
  async vmRecord(vmName: string): Promise<VmRecord | null> {
    return this.readVm(vmName, recordFromHash);
  }

  /** One VM as Copr's descriptor, or null when it is not in the pool. */
  async vmDescriptor(vmName: string): Promise<VmDescriptor | null> {
    return this.readVm(vmName, descriptorFromHash);
  }

  /** Many VMs with their bookkeeping fields in one round trip, skipping any that disappeared meanwhile; sorted by name. */
  async vmRecords(names: readonly string[]): Promise<VmRecord[]> {
    return this.readVms(names, recordFromHash);
  }

  /** vmRecords, as Copr's descriptors. */
  async vmDescriptors(names: readonly string[]): Promise<VmDescriptor[]> {
    return this.readVms(names, descriptorFromHash);
  }

  /** Names of every VM of the pool. */
  async allVmNames(): Promise<string[]> {
    return this.redis.smembers(this.keys.allVms);
  }

  private async readVm<T>(vmName: string, decode: (hash: Record<string, string>) => T): Promise<T | null> {
    const hash = await this.redis.hgetall(this.keys.vm(vmName));
    return hash.state ? decode(hash) : null;
  }

  private async readVms<T extends VmDescriptor>(names: readonly string[], decode: (hash: Record<string, string>) => T): Promise<T[]> {
    if (names.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const name of names) pipeline.hgetall(this.keys.vm(name));
    const replies = (await pipeline.exec()) ?? [];
    const vms: T[] = [];
    for (const [err, hash] of replies) {
      if (err) throw err;
      const h = hash as Record<string, string>;
      if (h.state) vms.push(decode(h));
    }
    return vms.sort((a, b) => a.vmName.localeCompare(b.vmName));
  }

  async vmNamesByIp(vmIp: string): Promise<string[]> {
    return this.redis.smembers(this.keys.ip(vmIp));
  }

  /** Names of the VMs in any of the states, in any of the groups (the state indexes). */
  async vmNamesByGroupsAndStates(groups: readonly number[], states: readonly VmState[]): Promise<string[]> {
    const stateKeys = groups.flatMap((g) => states.map((s) => this.keys.state(g, s)));
    return stateKeys.length === 0 ? [] : this.redis.sunion(...stateKeys);
  }

  /** The name of the VM the task holds, as the task index says (check the VM's task_id). */
  async vmNameOfTask(taskId: string): Promise<string | null> {
    return this.redis.get(this.keys.task(taskId));
  }

  /**
   * The VM a task holds now, with its lease; null when it holds none. With `holder`, null also when
   * the VM is bound to another owner or sandbox (a task's VM is handed only to its own).
   */
  async leasedVmOfTask(taskId: string, holder?: { owner: string; sandbox: string }): Promise<LeasedVm | null> {
    const name = await this.vmNameOfTask(taskId);
    if (!name) return null;
    const [state, ip, group, task, leaseId, expires, owner, sandbox] = await this.redis.hmget(
      this.keys.vm(name),
      'state',
      'vm_ip',
      'group',
      'task_id',
      'lease_id',
      'lease_expires_at',
      'owner',
      'sandbox',
    );
    if (state !== 'in_use' || task !== taskId || !leaseId) return null;
    if (holder && (owner !== holder.owner || sandbox !== holder.sandbox)) return null;
    return { vmName: name, vmIp: ip ?? '', group: Number(group), leaseId, leaseExpiresAt: Number(expires) };
  }

  /** Whether the VM is in_use under that lease. */
  async holdsLease(vmName: string, leaseId: string): Promise<boolean> {
    const [state, held] = await this.redis.hmget(this.keys.vm(vmName), 'state', 'lease_id');
    return state === 'in_use' && held === leaseId;
  }

  /** VMs per state of each group (index = position in `groups`), from the state indexes (SCARD). */
  async stateCounts(groups: readonly number[]): Promise<Record<VmState, number>[]> {
    const pipeline = this.redis.pipeline();
    for (const g of groups) for (const s of ALL_VM_STATES) pipeline.scard(this.keys.state(g, s));
    const counts = await this.numbers(pipeline);
    return groups.map((_, i) => Object.fromEntries(ALL_VM_STATES.map((s, j) => [s, counts[i * ALL_VM_STATES.length + j]!])) as Record<VmState, number>);
  }

  /** Number of VMs of the group bound to the owner (any state). */
  async ownerVmCount(group: number, owner: string): Promise<number> {
    return Number((await this.redis.hget(this.keys.ownerVms(group), owner)) ?? 0);
  }

  /** Spawns in flight of a group, oldest first. */
  async spawnsInFlight(group: number): Promise<SpawnInFlight[]> {
    const flat = await this.redis.zrange(this.keys.spawning(group), 0, '-1', 'WITHSCORES');
    const out: SpawnInFlight[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ spawnId: flat[i]!, startedAt: Number(flat[i + 1]) });
    return out;
  }

  /** Number of spawns in flight of each group (index = position in `groups`). */
  async spawnCounts(groups: readonly number[]): Promise<number[]> {
    const pipeline = this.redis.pipeline();
    for (const g of groups) pipeline.zcard(this.keys.spawning(g));
    return this.numbers(pipeline);
  }

  /** Time (epoch ms) of the last server start, or null before the first. */
  async serverStart(): Promise<number | null> {
    return numberOrNull(await this.redis.get(this.keys.serverStart));
  }

  /** Place of the last server start in the check sequence, or null before the first. */
  async serverStartSeq(): Promise<number | null> {
    return numberOrNull(await this.redis.get(this.keys.serverStartSeq));
  }

  /** Job ids of the acquire requests waiting in the group's line whose deadline is after `now`, at most `limit`. */
  async demandJobIds(group: number, now: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.keys.demand(group), `(${now}`, '+inf', 'LIMIT', 0, limit);
  }

  /** Number of acquire requests waiting in the group's line whose deadline is after `now`. */
  async countDemand(group: number, now: number): Promise<number> {
    return this.redis.zcount(this.keys.demand(group), `(${now}`, '+inf');
  }

  /**
   * Where a waiting request stands in a group's line (commands/includes/acquireLine.lua): its rank
   * among its owner's requests, its owner's rank in the round-robin (null while the owner is
   * blocked at max_vm_per_user, or not in the line), the number of owners there, the number of
   * requests waiting, the best priority waiting, the owner's VM count, and the ready VMs it could take.
   */
  async lineStanding(group: number, owner: string, sandbox: string, member: string): Promise<LineStanding> {
    const k = this.keys;
    const [ownerRank, ownersAhead, blocked, ringSize, waiting, head, ownerVms, readyDirty, readyClean] = (await this.redis
      .pipeline()
      .zrank(k.ownerLine(group, owner), member)
      .zrank(k.lineOwners(group), owner)
      .zscore(k.lineBlocked(group), owner)
      .zcard(k.lineOwners(group))
      .zcard(k.waiters(group))
      .zrange(k.waiters(group), '0', '0', 'WITHSCORES')
      .hget(k.ownerVms(group), owner)
      .zcard(k.readyDirty(group, owner, sandbox))
      .zcard(k.readyClean(group))
      .exec())!.map(([err, value]) => {
      if (err) throw err;
      return value;
    }) as [number | null, number | null, string | null, number, number, string[], string | null, number, number];
    return {
      ownerRank,
      ownersAhead,
      blocked: blocked !== null,
      owners: ringSize,
      waiting,
      bestPriority: head.length >= 2 ? Number(head[1]) : null,
      ownerVms: Number(ownerVms ?? 0),
      readyDirty,
      readyClean,
    };
  }

  /** The mean duration (ms) of the group's successful spawns so far (shared metrics), or null before the first. */
  async meanSpawnMs(group: number): Promise<number | null> {
    const field = JSON.stringify([String(group), 'ok']);
    const [sum, count] = await this.redis.hmget(sharedMetricKey(this.prefix, sharedMetrics.spawnDuration), `${field}\tsum`, `${field}\tcount`);
    return Number(count) > 0 ? (Number(sum) / Number(count)) * 1000 : null;
  }

  /** Job ids of requests the acquire line gave a VM before `before` (epoch ms) that have not collected it, at most `limit`. */
  async acquireAssignedBefore(before: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.keys.acquireAssigned, '-inf', before, 'LIMIT', 0, limit);
  }

  /** Whether the acquire line gave the job a VM that it has not collected yet. */
  async isAcquireAssigned(jobId: string): Promise<boolean> {
    return (await this.redis.zscore(this.keys.acquireAssigned, jobId)) !== null;
  }

  /** One field of the group's pool info (Copr's vm pool info). */
  async groupInfo(group: number, field: string): Promise<string | null> {
    return this.redis.hget(this.keys.groupInfo(group), field);
  }

  /** What the group's last orphan pass left for the next one. */
  async orphanPassState(group: number): Promise<OrphanPassState> {
    const [unknown, missing] = await Promise.all([this.redis.hgetall(this.keys.orphanUnknown(group)), this.redis.hgetall(this.keys.orphanMissing(group))]);
    return { unknown, missing };
  }

  private async numbers(pipeline: ReturnType<Redis['pipeline']>): Promise<number[]> {
    return ((await pipeline.exec()) ?? []).map(([err, n]) => {
      if (err) throw err;
      return Number(n);
    });
  }
}

function numberOrNull(value: string | null): number | null {
  return value === null ? null : Number(value);
}
