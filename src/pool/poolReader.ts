import { Cluster, type Redis } from 'ioredis';
import type { RedisConnection } from '../redis.js';
import { AUDIT_PAGE_MAX, AUDIT_SCAN_MAX, auditEventFromEntry, auditRangeStart, type AuditEvent, type AuditPage, type AuditQuery } from './audit.js';
import { poolKeys, type PoolKeys } from './keys.js';
import { breakerFromHash, type BreakerState } from '../reconcile/breaker.js';
import { sharedMetrics } from '../metrics/shared.js';
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
  /** Names of unknown machines with no pool id, already reported. */
  untagged: string[];
}

/** The pool's state marker as stored (keys.ts poolState). */
export interface PoolStateMarker {
  generation: string;
  epoch: number;
  /** The Redis run id the state was verified on (null where INFO is not allowed). */
  runId: string | null;
  /** When the pool last recovered from a loss of its state (epoch ms), or null. */
  recoveredAt: number | null;
  /** The generation whose recovery still owes reconcile a sweep of the providers' machines, or null. */
  sweepGeneration: string | null;
  /** Per group id, the generation whose sweep reconcile finished in that group. */
  /** Group name -> the generation whose machines reconcile swept in that group. */
  swept: Record<string, string>;
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

/** The due-time sets of a group (keys.ts), by the name reconcile queries them with. */
const DUE_KEYS = { check: 'dueCheck', dirty: 'dueDirty', checkStarted: 'dueCheckStarted', terminating: 'dueTerminating' } as const;

/** One read of a due-time set: members with a score below `upTo` (or up to it, inclusive); null: every member. */
export interface DueQuery {
  group: string;
  set: keyof typeof DUE_KEYS;
  upTo: number | null;
  inclusive?: boolean;
}

/** A page of GET /vms (PoolReader.vmPage). */
export interface VmPageQuery {
  group?: string;
  state?: VmState;
  owner?: string;
  cursor?: string;
  limit: number;
}

export interface VmPage {
  vms: VmRecord[];
  /** The cursor of the next page (the last name of this one), or null at the end. */
  next: string | null;
}

/** A group's published launch, as a spawn worker compares its own config with it (PoolReader.publishedLaunch). */
export interface PublishedLaunch {
  fingerprint: string;
  launchRevision: number;
  /** Fingerprints that were current before, the most recent last (publishLaunch-1.lua keeps a few). */
  superseded: string[];
}

/** A group's launch as the pool has it (PoolReader.launchStates). */
export interface LaunchState {
  /** The group's current launch configuration, or null before any process published one. */
  published: { fingerprint: string; revision: number; launchRevision: number; publishedAt: number; publishedBy: string } | null;
  /** VMs of the group (not terminating) on an older launch. */
  outdated: number;
  /** Processes seen running another launch config of the group, which defer to the published one. */
  deferring: { process: string; fingerprint: string }[];
}

export class PoolReader {
  private readonly keys: PoolKeys;

  constructor(
    private readonly redis: RedisConnection,
    prefix: string,
  ) {
    this.keys = poolKeys(prefix);
  }

  /** Whether Redis answers a PING. */
  async ping(): Promise<boolean> {
    return (await this.redis.ping()) === 'PONG';
  }

  /** One VM with its bookkeeping fields, or null when it is not in the pool. */
  /**
   * The pool's data format as recorded (keys.dataFormat): its version (0 when none is recorded yet)
   * and the version a migration in progress moves it to (0 when none). A read only: it stamps nothing.
   */
  async recordedDataFormat(): Promise<{ version: number; migrating: number }> {
    const [version, migrating] = await this.redis.hmget(this.keys.dataFormat, 'version', 'migrating');
    return { version: Number(version ?? 0) || 0, migrating: Number(migrating ?? 0) || 0 };
  }

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

  /** Every VM name, in batches of about `batch` (SSCAN), for passes that must not hold one huge reply. */
  async allVmNameBatches(batch: number): Promise<string[][]> {
    const batches: string[][] = [];
    let cursor = '0';
    do {
      const [next, names] = await this.redis.sscan(this.keys.allVms, cursor, 'COUNT', batch);
      if (names.length > 0) batches.push(names);
      cursor = next;
    } while (cursor !== '0');
    return batches;
  }

  /**
   * The names reconcile must look at, from the due-time sets (includes/setVmState: indexDue), one
   * pipeline for every group: each query reads members with a score up to its bound (exclusive
   * unless `inclusive`; null reads the whole set). Returns the names of each query, in order.
   */
  async dueVmNames(queries: readonly DueQuery[]): Promise<string[][]> {
    if (queries.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const q of queries) {
      const key = this.keys[DUE_KEYS[q.set]](q.group);
      if (q.upTo === null) pipeline.zrange(key, 0, '-1');
      else pipeline.zrangebyscore(key, '-inf', q.inclusive ? String(q.upTo) : `(${q.upTo}`);
    }
    const replies = (await pipeline.exec()) ?? [];
    return replies.map(([err, names]) => {
      if (err) throw err;
      return names as string[];
    });
  }

  /** Per group: the coming supply (clean ready VMs, and unbound, unheld VMs in got_ip or check_health) and the clean ready VMs (SCARD + ZCARD, ZCARD). */
  async supplyCounts(groups: readonly string[]): Promise<{ coming: number; readyClean: number }[]> {
    const pipeline = this.redis.pipeline();
    for (const g of groups) pipeline.scard(this.keys.coming(g)).zcard(this.keys.readyClean(g));
    const n = await this.numbers(pipeline);
    return groups.map((_, i) => ({ coming: n[2 * i]! + n[2 * i + 1]!, readyClean: n[2 * i + 1]! }));
  }

  /** Held VMs of each group (SCARD of the held sets). */
  async heldCounts(groups: readonly string[]): Promise<number[]> {
    const pipeline = this.redis.pipeline();
    for (const g of groups) pipeline.scard(this.keys.held(g));
    return this.numbers(pipeline);
  }

  /**
   * Per group, what a rollout decides on: the outdated VMs (the whole `outdated` set: each is due
   * for replacement) and the clean ready VMs first ready before `agedBefore` (null: no max_ready_age).
   */
  async launchDue(groups: readonly { group: string; agedBefore: number | null }[]): Promise<{ outdated: string[]; aged: string[] }[]> {
    const pipeline = this.redis.pipeline();
    for (const { group, agedBefore } of groups) {
      pipeline.smembers(this.keys.outdated(group));
      if (agedBefore !== null) pipeline.zrangebyscore(this.keys.dueReadyAge(group), '-inf', `(${agedBefore}`);
    }
    const replies = ((await pipeline.exec()) ?? []).map(([err, value]) => {
      if (err) throw err;
      return value as string[];
    });
    let i = 0;
    return groups.map(({ agedBefore }) => ({ outdated: replies[i++]!, aged: agedBefore !== null ? replies[i++]! : [] }));
  }

  /** Per group: its published launch (null before the first), how many VMs are outdated, and the processes that defer to it (seen since `deferringSince`). */
  async launchStates(groups: readonly string[], deferringSince: number): Promise<LaunchState[]> {
    const pipeline = this.redis.pipeline();
    for (const g of groups) {
      pipeline.hgetall(this.keys.launch(g)).scard(this.keys.outdated(g)).zrangebyscore(this.keys.launchDeferring(g), deferringSince, '+inf');
    }
    const replies = ((await pipeline.exec()) ?? []).map(([err, value]) => {
      if (err) throw err;
      return value;
    });
    return groups.map((_, i) => {
      const h = replies[3 * i] as Record<string, string>;
      const deferring = (replies[3 * i + 2] as string[]).map((member) => {
        const bar = member.lastIndexOf('|');
        return { process: member.slice(0, bar), fingerprint: member.slice(bar + 1) };
      });
      const published = h.fingerprint
        ? {
            fingerprint: h.fingerprint,
            revision: Number(h.revision ?? 0),
            launchRevision: Number(h.launch_revision ?? 0),
            publishedAt: Number(h.published_at ?? 0),
            publishedBy: h.published_by ?? '',
          }
        : null;
      return { published, outdated: Number(replies[3 * i + 1]), deferring };
    });
  }

  /**
   * The group's published launch as a spawn weighs it (null before the first publication): the
   * current fingerprint, its launch_revision, and the fingerprints it superseded.
   */
  async publishedLaunch(group: string): Promise<PublishedLaunch | null> {
    const [fingerprint, launchRevision, superseded] = await this.redis.hmget(this.keys.launch(group), 'fingerprint', 'launch_revision', 'superseded');
    if (!fingerprint) return null;
    return { fingerprint, launchRevision: Number(launchRevision ?? 0), superseded: (superseded ?? '').split(' ').filter((f) => f !== '') };
  }

  /** Names of the group's clean ready VMs (not held). */
  async readyCleanNames(group: string): Promise<string[]> {
    return this.redis.zrange(this.keys.readyClean(group), 0, '-1');
  }

  /**
   * One page of VMs in name order, after `cursor` (a VM name; exclusive), at most `limit`, through
   * the indexes: a group or state reads its state sets, else the VM list (names only). An owner
   * filter reads records in chunks until the page is full. `next` is the cursor of the next page,
   * or null at the end.
   */
  async vmPage(query: VmPageQuery, allGroups: readonly string[]): Promise<VmPage> {
    const { group, state, owner, cursor, limit } = query;
    let names: string[];
    if (group === undefined && state === undefined) names = await this.allVmNames();
    else names = await this.vmNamesByGroupsAndStates(group === undefined ? allGroups : [group], state === undefined ? ALL_VM_STATES : [state]);
    names = names.filter((n) => cursor === undefined || n > cursor).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const vms: VmRecord[] = [];
    let i = 0;
    while (i < names.length && vms.length < limit) {
      const chunk = names.slice(i, i + (owner === undefined ? limit - vms.length : Math.max(limit - vms.length, 200)));
      i += chunk.length;
      // readVms sorts with localeCompare; the page keeps the code-unit order of the cursor.
      const byName = new Map((await this.vmRecords(chunk)).map((v) => [v.vmName, v]));
      for (const name of chunk) {
        const v = byName.get(name);
        if (!v || (owner !== undefined && v.owner !== owner)) continue;
        if (vms.length === limit) break;
        vms.push(v);
      }
    }
    const last = vms.at(-1);
    const more = last !== undefined && names.some((n) => n > last.vmName);
    return { vms, next: more ? last.vmName : null };
  }

  /** Which of the names are pool VMs (SMISMEMBER on the VM list). */
  async knownVmNames(names: readonly string[]): Promise<Set<string>> {
    if (names.length === 0) return new Set();
    const found = await this.redis.smismember(this.keys.allVms, ...names);
    return new Set(names.filter((_, i) => found[i] === 1));
  }

  /** The VM names of each IP, in one round trip. */
  async vmNamesByIps(ips: readonly string[]): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    if (ips.length === 0) return out;
    const pipeline = this.redis.pipeline();
    for (const ip of ips) pipeline.smembers(this.keys.ip(ip));
    const replies = (await pipeline.exec()) ?? [];
    replies.forEach(([err, names], i) => {
      if (err) throw err;
      out.set(ips[i]!, names as string[]);
    });
    return out;
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
  async vmNamesByGroupsAndStates(groups: readonly string[], states: readonly VmState[]): Promise<string[]> {
    const stateKeys = groups.flatMap((g) => states.map((s) => this.keys.state(g, s)));
    return stateKeys.length === 0 ? [] : this.redis.sunion(...stateKeys);
  }

  /**
   * The name of the VM the owner's task holds, as the task index says (check the VM's task_id and
   * owner): the per-owner index, else the index from before task ids were per owner.
   */
  async vmNameOfTask(owner: string, taskId: string): Promise<string | null> {
    const [current, legacy] = await this.redis.mget(this.keys.ownerTask(owner, taskId), this.keys.legacyTask(taskId));
    return current ?? legacy ?? null;
  }

  /**
   * The VM a task of the holder's owner holds now, with its lease; null when it holds none, or when
   * the VM is bound to another sandbox (a task's VM is handed only to its own).
   */
  async leasedVmOfTask(taskId: string, holder: { owner: string; sandbox: string }): Promise<LeasedVm | null> {
    const name = await this.vmNameOfTask(holder.owner, taskId);
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
    if (owner !== holder.owner || sandbox !== holder.sandbox) return null;
    return { vmName: name, vmIp: ip ?? '', group: group ?? '', leaseId, leaseExpiresAt: Number(expires) };
  }

  /**
   * Every key that matches a SCAN glob (on every master of a Cluster); O(keys in Redis). Only for
   * rare operator lookups (a task id without its owner), never on a hot path.
   */
  async scanKeys(glob: string): Promise<string[]> {
    const nodes: Redis[] = this.redis instanceof Cluster ? this.redis.nodes('master') : [this.redis];
    const found = new Set<string>();
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [next, keys] = await node.scan(cursor, 'MATCH', glob, 'COUNT', 1000);
        cursor = next;
        for (const key of keys) found.add(key);
      } while (cursor !== '0');
    }
    return [...found];
  }

  /** Every key that starts with `head` (scanKeys, its glob characters escaped); O(keys in Redis), for rare operator steps. */
  async keysStartingWith(head: string): Promise<string[]> {
    return this.scanKeys(`${head.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`);
  }

  /** Whether the VM is in_use under that lease. */
  async holdsLease(vmName: string, leaseId: string): Promise<boolean> {
    const [state, held] = await this.redis.hmget(this.keys.vm(vmName), 'state', 'lease_id');
    return state === 'in_use' && held === leaseId;
  }

  /** VMs per state of each group (index = position in `groups`), from the state indexes (SCARD). */
  async stateCounts(groups: readonly string[]): Promise<Record<VmState, number>[]> {
    const pipeline = this.redis.pipeline();
    for (const g of groups) for (const s of ALL_VM_STATES) pipeline.scard(this.keys.state(g, s));
    const counts = await this.numbers(pipeline);
    return groups.map((_, i) => Object.fromEntries(ALL_VM_STATES.map((s, j) => [s, counts[i * ALL_VM_STATES.length + j]!])) as Record<VmState, number>);
  }

  /** Number of VMs of the group bound to the owner (any state). */
  async ownerVmCount(group: string, owner: string): Promise<number> {
    return Number((await this.redis.hget(this.keys.ownerVms(group), owner)) ?? 0);
  }

  /** Spawns in flight of a group, oldest first. */
  async spawnsInFlight(group: string): Promise<SpawnInFlight[]> {
    const flat = await this.redis.zrange(this.keys.spawning(group), 0, '-1', 'WITHSCORES');
    const out: SpawnInFlight[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ spawnId: flat[i]!, startedAt: Number(flat[i + 1]) });
    return out;
  }

  /**
   * The machine a spawn's record holds (startSpawnAttempt-1.lua): what its hook printed, whether
   * the hook succeeded with it and whether it entered the pool; null when it holds none.
   */
  async spawnMachine(spawnId: string): Promise<{ vmName: string; vmIp: string | null; hookDone: boolean; added: boolean } | null> {
    const [name, ip, done, added] = await this.redis.hmget(this.keys.spawnRecord(spawnId), 'vm_name', 'vm_ip', 'hook_done', 'added');
    if (!name) return null;
    return { vmName: name, vmIp: ip || null, hookDone: done === '1', added: added === '1' };
  }

  /** Number of spawns in flight of each group (index = position in `groups`). */
  async spawnCounts(groups: readonly string[]): Promise<number[]> {
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

  /** The pool's state marker (src/runtime/poolStateWatch.ts), or null when the pool has none. */
  async poolState(): Promise<PoolStateMarker | null> {
    const h = await this.redis.hgetall(this.keys.poolState);
    if (!h.generation) return null;
    return {
      generation: h.generation,
      epoch: Number(h.epoch ?? 0),
      runId: h.run_id ?? null,
      recoveredAt: numberOrNull(h.recovered_at ?? null),
      sweepGeneration: h.sweep_generation ?? null,
      swept: Object.fromEntries(
        Object.entries(h)
          .filter(([field]) => field.startsWith('swept:'))
          .map(([field, generation]) => [field.slice('swept:'.length), generation]),
      ),
    };
  }

  /**
   * The acquire requests waiting in the group's line whose deadline is after `now` (the first
   * `limit` in line order), each with its job id and owner, and `set` for a set (whose demand is
   * its items', setDemand).
   */
  async lineRequests(group: string, now: number, limit: number): Promise<{ jobId: string; owner: string; set: boolean }[]> {
    const members = await this.redis.zrange(this.keys.waiters(group), '0', String(limit - 1));
    if (members.length === 0) return [];
    const infos = await this.redis.hmget(this.keys.waiterInfo, ...members);
    const requests: { jobId: string; owner: string; set: boolean }[] = [];
    for (const raw of infos) {
      if (raw === null) continue;
      const info = JSON.parse(raw) as { jobId?: unknown; owner?: unknown; deadline?: unknown; set?: unknown };
      if (typeof info.jobId === 'string' && typeof info.owner === 'string' && Number(info.deadline) > now) {
        requests.push({ jobId: info.jobId, owner: info.owner, set: info.set !== undefined });
      }
    }
    return requests;
  }

  /**
   * What the VMs bound to `owner` use in each of `scopes` (`all`, `account:<name>`; the owner_usage
   * counters of commands/includes/ownerUsage.lua), by scope: unit -> amount.
   */
  async ownerUsage(owner: string, scopes: readonly string[]): Promise<Map<string, Record<string, number>>> {
    const pipeline = this.redis.pipeline();
    for (const scope of scopes) pipeline.hgetall(this.keys.ownerUsage(scope, owner));
    const replies = (await pipeline.exec()) ?? [];
    return new Map(
      scopes.map((scope, i) => {
        const [err, hash] = replies[i] ?? [null, {}];
        if (err) throw err;
        return [scope, Object.fromEntries(Object.entries((hash ?? {}) as Record<string, string>).map(([unit, amount]) => [unit, Number(amount)]))];
      }),
    );
  }

  /** VMs of the group bound to each of `owners` (group:<id>:owner_vms), in their order. */
  async ownerVmCounts(group: string, owners: readonly string[]): Promise<number[]> {
    if (owners.length === 0) return [];
    return (await this.redis.hmget(this.keys.ownerVms(group), ...owners)).map((n) => Number(n ?? 0));
  }

  /** Items of waiting sets (acquireVmSet, in the line or retrying outside it) whose first group is `group`, live after `now`: their demand members ('set|<job id>|<item>'). */
  async setDemand(group: string, now: number, limit: number): Promise<string[]> {
    const members = await this.redis.zrangebyscore(this.keys.demand(group), `(${now}`, '+inf', 'LIMIT', 0, limit);
    return members.filter((m) => m.startsWith('set|'));
  }

  /** Number of acquire requests waiting in the group's line whose deadline is after `now`. */
  async countDemand(group: string, now: number): Promise<number> {
    return this.redis.zcount(this.keys.demand(group), `(${now}`, '+inf');
  }

  /**
   * Where a waiting request stands in a group's line (commands/includes/acquireLine.lua): its rank
   * among its owner's requests, its owner's rank in the round-robin (null while the owner is
   * blocked at max_vm_per_user, or not in the line), the number of owners there, the number of
   * requests waiting, the best priority waiting, the owner's VM count, and the ready VMs it could take.
   */
  async lineStanding(group: string, owner: string, sandbox: string, member: string): Promise<LineStanding> {
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
  async meanSpawnMs(group: string): Promise<number | null> {
    const field = JSON.stringify([String(group), 'ok']);
    const [sum, count] = await this.redis.hmget(this.keys.metric(sharedMetrics.spawnDuration.key), `${field}\tsum`, `${field}\tcount`);
    return Number(count) > 0 ? (Number(sum) / Number(count)) * 1000 : null;
  }

  /** The hash of one shared metric (src/metrics/shared.ts parses it); empty before its first observation. */
  async sharedMetric(name: string): Promise<Record<string, string>> {
    return this.redis.hgetall(this.keys.metric(name));
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
  /** The name that a version-1 group index stands for (the map the migration to data format 2 recorded), or null. */
  async legacyGroupName(index: number): Promise<string | null> {
    return this.redis.hget(this.keys.legacyGroupNames, String(index));
  }

  /** The whole version-1 index -> name map (empty when the pool was never migrated from version 1). */
  async legacyGroupNames(): Promise<Map<string, string>> {
    return new Map(Object.entries(await this.redis.hgetall(this.keys.legacyGroupNames)));
  }

  async groupInfo(group: string, field: string): Promise<string | null> {
    return this.redis.hget(this.keys.groupInfo(group), field);
  }

  /** The group's boot time (spawn to first passed check): moving average in ms and sample count. */
  async bootTime(group: string): Promise<{ emaMs: number | null; samples: number }> {
    const [ema, samples] = await this.redis.hmget(this.keys.bootTime(group), 'ema_ms', 'samples');
    return { emaMs: ema === null ? null : Number(ema), samples: Number(samples ?? 0) };
  }

  /** The group's spawn circuit breaker, or null while it is closed (src/reconcile/breaker.ts reads it). */
  async breaker(group: string): Promise<BreakerState | null> {
    const h = await this.redis.hgetall(this.keys.breaker(group));
    return breakerFromHash(h);
  }

  /** Acquire requests that arrived for the group per minute (minute number -> count); the hash stays small (VmManager trims it). */
  async arrivals(group: string): Promise<Map<number, number>> {
    const raw = await this.redis.hgetall(this.keys.arrivals(group));
    return new Map(Object.entries(raw).map(([minute, n]) => [Number(minute), Number(n)]));
  }

  /** The group's newest history samples (JSON, newest first), at most `limit`. */
  async history(group: string, limit: number): Promise<string[]> {
    return this.redis.lrange(this.keys.history(group), 0, limit - 1);
  }

  /** The acquire wait histogram mark of the last history sample (JSON), or null. */
  async historyAcquireMark(): Promise<string | null> {
    return this.redis.get(this.keys.historyAcquire);
  }

  /** What the group's last orphan pass left for the next one. */
  async orphanPassState(group: string): Promise<OrphanPassState> {
    const [unknown, missing, untagged] = await Promise.all([
      this.redis.hgetall(this.keys.orphanUnknown(group)),
      this.redis.hgetall(this.keys.orphanMissing(group)),
      this.redis.smembers(this.keys.orphanUntagged(group)),
    ]);
    return { unknown, missing, untagged };
  }

  /**
   * Events of the audit trail, oldest first, from `since` on, at most `limit`, of one VM or owner
   * when asked. Looks at no more than AUDIT_SCAN_MAX entries per call (more says whether to go on).
   */
  async auditEvents(query: AuditQuery = {}): Promise<AuditPage> {
    const limit = Math.min(Math.max(1, Math.floor(query.limit ?? 100)), AUDIT_PAGE_MAX);
    const { vm, owner } = query;
    const matches = (e: AuditEvent) => (!vm || e.vm === vm) && (!owner || e.owner === owner);
    const batch = vm || owner ? Math.max(limit, 500) : limit;
    let start = auditRangeStart(query.since);
    let next: string | null = query.since === undefined || query.since === null || query.since === '' ? null : String(query.since);
    const events: AuditEvent[] = [];
    let scanned = 0;
    // Events written before data format 2 name their group by index: shown by the name the migration recorded for it.
    let legacy: Map<string, string> | undefined;
    for (;;) {
      const entries = (await this.redis.xrange(this.keys.auditEvents, start, '+', 'COUNT', batch)) as [string, string[]][];
      for (const [id, flat] of entries) {
        next = id;
        scanned += 1;
        const event = auditEventFromEntry(id, flat);
        if (event.group !== null && /^\d+$/.test(event.group)) {
          legacy ??= await this.legacyGroupNames();
          event.group = legacy.get(event.group) ?? event.group;
        }
        if (matches(event)) events.push(event);
        if (events.length === limit) return { events, next, more: true };
      }
      if (entries.length < batch) return { events, next, more: false };
      if (scanned >= AUDIT_SCAN_MAX) return { events, next, more: true };
      start = `(${next}`;
    }
  }

  /** The number of events the audit trail holds now. */
  async auditLength(): Promise<number> {
    return this.redis.xlen(this.keys.auditEvents);
  }

  private async numbers(pipeline: ReturnType<RedisConnection['pipeline']>): Promise<number[]> {
    return ((await pipeline.exec()) ?? []).map(([err, n]) => {
      if (err) throw err;
      return Number(n);
    });
  }
}

function numberOrNull(value: string | null): number | null {
  return value === null ? null : Number(value);
}
