import type { RedisConnection } from '../redis.js';
import type { OwnerUsageSpec } from '../reconcile/quota.js';
import { DATA_FORMAT_VERSION, DataFormatTooNew } from './dataFormatVersion.js';
import { poolKeyBase } from './keys.js';
import { ReplyCodes, replyCodeName, type ReplyCode } from './replyCodes.js';
import { loadScripts, type RunScript, type ScriptName } from './scripts.js';
import {
  LeaseLost,
  SpawnSlotLost,
  TaskConflict,
  TooManyWaiting,
  VmDescriptorNotFound,
  VmError,
  descriptorFromHash,
  leasedDescriptorFromHash,
  type AcquireAttempt,
  type AcquireWaiter,
  type Lease,
  type VmDescriptor,
  type ExpiredLease,
  type HealthCheckOutcome,
  type HealthCheckRecord,
  type SpawnAttemptStart,
} from './types.js';

/** A process's launch configuration of a group, as publishLaunch weighs it. */
/** A resource limit that registerSpawn checks: `max` per unit over `groups` (what one VM of each uses). */
export interface SpawnLimit {
  name: 'group' | 'account';
  max: Readonly<Record<string, number>>;
  groups: Readonly<Record<string, Readonly<Record<string, number>>>>;
}

/** How a build ended, as its builder says at release: a failed build's VM may be kept by an autohold rule. */
export const RELEASE_OUTCOMES = ['success', 'failed'] as const;
export type ReleaseOutcome = (typeof RELEASE_OUTCOMES)[number];

export interface LaunchClaim {
  fingerprint: string;
  launchRevision: number;
  /** When the process started (epoch ms): of two configs with one launch_revision, the later started wins. */
  startedAt: number;
  processId: string;
  /** The group's max_ready_age in ms, when it has one: ready VMs' age is recorded only then. */
  maxReadyAgeMs?: number;
}

/** publishLaunch's answer: the caller's config is current, was published now, or another one is current. */
export type LaunchPublication =
  | { status: 'current'; revision: number }
  | { status: 'published'; revision: number; changed: number }
  | { status: 'superseded'; fingerprint: string; revision: number; launchRevision: number; publishedAt: number; publishedBy: string };

/** One group of an acquire request, with what the script needs of its config. */
export interface AcquireGroupLimits {
  group: string;
  maxVmPerOwner: number;
  leaseTimeoutMs: number;
  /** The group's max_waiting_per_owner: a request that would wait beyond it is refused (TooManyWaiting). */
  maxWaitingPerOwner: number;
  /** What one VM of the group uses and the owner's limits across groups it counts in (absent: 1 instance, not limited). */
  ownerUsage?: OwnerUsageSpec;
}

/** acquireVm-1.lua's input, checked and as text (VmManager.tryAcquireVm builds it). */
export interface AcquireScriptInput {
  now: number;
  owner: string;
  sandbox: string;
  workerId: string;
  /** '' for none, as buildId and chroot. */
  taskId: string;
  buildId: string;
  chroot: string;
  leaseId: string;
  waiter?: AcquireWaiter;
  groups: readonly AcquireGroupLimits[];
}

/** acquireVmSet-1.lua's input: one owner and sandbox, and per item its lease id and groups (with the group's account, '' for none). */
export interface AcquireSetScriptInput {
  now: number;
  owner: string;
  sandbox: string;
  workerId: string;
  /** '' for none: without it a re-run cannot find the set it was given. */
  jobId: string;
  /** Without a waiter: while the set waits it counts as demand of each item's first group until then (epoch ms; 0: not). */
  demandUntil: number;
  /** An acquire-set job's place in the line: with it, the set waits in the line as one request. */
  waiter?: AcquireWaiter;
  items: readonly { leaseId: string; groups: readonly (AcquireGroupLimits & { account: string })[] }[];
}

/**
 * acquireVmSet's answer: every item's VM and lease (in item order), or none of them (served: other
 * requests that the line's dispatch served, to be woken; missing: the 1-based indexes of the items
 * that cannot have a VM now, empty when all could but the set waits for its turn in the line);
 * cancelled: the waiting set was withdrawn.
 */
export type AcquireSetAttempt =
  | { status: 'acquired' | 'reattached'; vms: ({ vm: VmDescriptor } & Lease)[]; served?: string[] }
  | { status: 'none'; served?: string[]; missing?: number[] }
  | { status: 'cancelled'; reason: string };

function unexpected(script: ScriptName, reply: unknown): Error {
  const code = Array.isArray(reply) ? reply[0] : reply;
  return new Error(`${script}: unexpected reply ${replyCodeName(code)}`);
}

/**
 * DataFormatTooNew for a script's {DATA_FORMAT_AHEAD, version needed} (includes/dataFormat: the
 * pool's data format is past DATA_FORMAT_VERSION, and the script changed nothing), else null.
 */
function formatAhead(reply: unknown, refused: string): DataFormatTooNew | null {
  if (!Array.isArray(reply) || reply[0] !== ReplyCodes.DATA_FORMAT_AHEAD) return null;
  return new DataFormatTooNew(Number(reply[1]), DATA_FORMAT_VERSION, refused);
}

/** What a process saw of the pool's state marker: its generation and the highest epoch. */
export interface PoolStateSeen {
  generation: string;
  epoch: number;
}

/** checkPoolState's answer (see its script header for each status). */
export type PoolStateCheck = { status: 'lost' } | ({ status: 'ok' | 'created' | 'restarted' | 'changed' | 'regressed' } & PoolStateSeen);

const poolStateStatuses = new Map<unknown, PoolStateCheck['status']>([
  [ReplyCodes.OK, 'ok'],
  [ReplyCodes.CREATED, 'created'],
  [ReplyCodes.POOL_LOST, 'lost'],
  [ReplyCodes.POOL_RESTARTED, 'restarted'],
  [ReplyCodes.POOL_CHANGED, 'changed'],
  [ReplyCodes.POOL_REGRESSED, 'regressed'],
]);

const healthOutcomes = new Map<unknown, HealthCheckOutcome>([
  [ReplyCodes.OK, 'ok'],
  [ReplyCodes.CHECK_FAILED, 'failed'],
  [ReplyCodes.TERMINATING, 'terminating'],
  [ReplyCodes.WRONG_STATE, 'ignored'],
]);

/**
 * The pool's scripts (commands/), one typed function each: it builds KEYS and ARGV and turns the
 * reply codes (replyCodes.ts) into results and errors, so that no caller reads a code. Shared by
 * VmManager and VmPoolClient. Throws VmDescriptorNotFound for NOT_FOUND wherever a script names a VM.
 */
export class PoolScripts {
  private readonly run: RunScript;
  private readonly base: string;

  constructor(redis: RedisConnection, prefix: string) {
    this.run = loadScripts(redis);
    this.base = poolKeyBase(prefix);
  }

  private call(name: ScriptName, args: readonly (string | number)[]): Promise<unknown> {
    return this.run(name, [this.base], args);
  }

  /**
   * Runs a script on a VM that acts or refuses: true for OK, false for the `refused` code. NOT_FOUND
   * throws VmDescriptorNotFound, a code of `errors` its error, and any other code is unexpected.
   */
  private async acted(
    name: ScriptName,
    vmName: string,
    args: readonly (string | number)[],
    refused: ReplyCode | null,
    errors: Partial<Record<ReplyCode, () => Error>> = {},
  ): Promise<boolean> {
    const code = (await this.call(name, [vmName, ...args])) as ReplyCode;
    if (code === ReplyCodes.OK) return true;
    if (code === refused) return false;
    if (code === ReplyCodes.NOT_FOUND) throw new VmDescriptorNotFound(vmName);
    const error = errors[code];
    throw error ? error() : unexpected(name, code);
  }

  /**
   * Adds a VM in got_ip. Throws VmError when a VM of that name is in the pool. With a spawn, the VM
   * takes the spawn's slot at once; SpawnSlotLost when the spawn no longer holds one.
   */
  async addVm(
    vmName: string,
    vmIp: string,
    group: string,
    now: number,
    spawn?: { spawnId: string; recordTtlMs: number; startedAt?: number },
    launchFingerprint = '',
  ): Promise<void> {
    await this.acted('addVm', vmName, [vmIp, group, now, spawn?.spawnId ?? '', spawn?.recordTtlMs ?? 0, spawn?.startedAt ?? '', launchFingerprint], null, {
      [ReplyCodes.ALREADY_EXISTS]: () => new VmError(`VM ${vmName} is already in the pool`),
      [ReplyCodes.NO_SPAWN_SLOT]: () => new SpawnSlotLost(spawn?.spawnId ?? '', group),
    });
  }

  /** Publishes a process's launch configuration of a group, or says which one is current (publishLaunch-1.lua). */
  async publishLaunch(group: string, launch: LaunchClaim, now: number, timing: { deferringTtlMs: number; orphanedAfterMs: number }): Promise<LaunchPublication> {
    const args = [group, launch.fingerprint, launch.launchRevision, launch.startedAt, launch.processId, now, timing.deferringTtlMs, launch.maxReadyAgeMs ?? '', timing.orphanedAfterMs];
    const reply = (await this.call('publishLaunch', args)) as unknown[];
    const code = reply[0];
    if (code === ReplyCodes.OK) return { status: 'current', revision: Number(reply[1]) };
    if (code === ReplyCodes.CREATED) return { status: 'published', revision: Number(reply[1]), changed: Number(reply[2]) };
    if (code === ReplyCodes.SUPERSEDED) {
      return {
        status: 'superseded',
        fingerprint: String(reply[1]),
        revision: Number(reply[2]),
        launchRevision: Number(reply[3]),
        publishedAt: Number(reply[4]),
        publishedBy: String(reply[5]),
      };
    }
    throw unexpected('publishLaunch', reply);
  }

  /** Moves (or merges) keys of group `from` to group `to`, by their tails after `group:<from>:` (moveGroupKeys-1.lua); returns how many. */
  async moveGroupKeys(from: string, to: string, tails: readonly string[]): Promise<number> {
    if (tails.length === 0) return 0;
    return Number(await this.call('moveGroupKeys', [from, to, ...tails]));
  }

  /** Forgets an empty group removed from the config, deleting its keys by tail (forgetGroup-1.lua); false while it has a VM, a spawn or a waiter. */
  async forgetGroup(group: string, tails: readonly string[]): Promise<boolean> {
    return Number(await this.call('forgetGroup', [group, ...tails])) === ReplyCodes.OK;
  }

  /** Rewrites the group references of records by the map from -> to (relabelGroups-1.lua); returns how many changed. */
  async relabelGroups(kind: 'vm' | 'spawn' | 'waiter' | 'swept' | 'metric', map: ReadonlyMap<string, string>, ids: readonly string[] = []): Promise<number> {
    return Number(await this.call('relabelGroups', [kind, map.size, ...[...map].flat(), ...ids]));
  }

  /** Drops the group's arrival minutes before `firstMinute` (epoch ms / 60000); returns how many. */
  async trimArrivals(group: string, firstMinute: number): Promise<number> {
    return Number(await this.call('trimArrivals', [group, firstMinute]));
  }

  /**
   * Records a spawn in flight: it takes a slot of the group's spawns, if one more VM fits `limits`
   * (registerSpawn-1.lua); else nothing is recorded and the limit and unit it would pass come back.
   */
  async registerSpawn(group: string, spawnId: string, now: number, limits: readonly SpawnLimit[] = []): Promise<{ limit: string; unit: string } | null> {
    const reply = await this.call('registerSpawn', [group, spawnId, now, limits.length > 0 ? JSON.stringify({ limits }) : '']);
    if (Array.isArray(reply) && reply[0] === ReplyCodes.QUOTA_FULL) return { limit: String(reply[1]), unit: String(reply[2]) };
    return null;
  }

  /** Drops a spawn's slot; false when it held none. */
  async finishSpawn(group: string, spawnId: string): Promise<boolean> {
    return (await this.call('finishSpawn', [group, spawnId])) === ReplyCodes.OK;
  }

  /** One attempt of a spawn starts, or what an earlier attempt left (startSpawnAttempt-1.lua). */
  async startSpawnAttempt(spawnId: string, group: string, now: number, recordTtlMs: number): Promise<SpawnAttemptStart> {
    const reply = (await this.call('startSpawnAttempt', [spawnId, group, now, recordTtlMs])) as [number, ...string[]];
    const [code, name = '', ip = '', done = '', slotHeld = ''] = reply;
    switch (code) {
      case ReplyCodes.OK:
        return { status: 'new', attempt: Number(name) };
      case ReplyCodes.ALREADY_EXISTS:
        return { status: 'added', vmName: name, vmIp: ip };
      case ReplyCodes.MACHINE_PENDING:
        return { status: 'machine', vmName: name, vmIp: ip === '' ? null : ip, hookDone: done === '1', slotHeld: slotHeld === '1' };
      case ReplyCodes.NO_SPAWN_SLOT:
        return { status: 'no_slot' };
      default:
        throw unexpected('startSpawnAttempt', reply);
    }
  }

  /** Records the machine a spawn's hook printed; false when the spawn's VM is in the pool already. */
  async recordSpawnMachine(spawnId: string, vmName: string, vmIp: string | null, hookDone: boolean, recordTtlMs: number): Promise<boolean> {
    const code = await this.call('recordSpawnMachine', [spawnId, vmName, vmIp ?? '', hookDone ? '1' : '', recordTtlMs]);
    if (code === ReplyCodes.OK) return true;
    if (code === ReplyCodes.ALREADY_EXISTS) return false;
    throw unexpected('recordSpawnMachine', code);
  }

  /** Forgets the machine an earlier attempt of a spawn printed (it was terminated). */
  async forgetSpawnMachine(spawnId: string, vmName: string): Promise<void> {
    const code = await this.call('forgetSpawnMachine', [spawnId, vmName]);
    if (code !== ReplyCodes.OK && code !== ReplyCodes.ALREADY_EXISTS) throw unexpected('forgetSpawnMachine', code);
  }

  /** Puts existing VMs into the due-time sets (indexDueTimes-1.lua); returns how many were indexed. */
  async indexDueTimes(vmNames: readonly string[]): Promise<number> {
    if (vmNames.length === 0) return 0;
    return Number(await this.call('indexDueTimes', vmNames));
  }

  /**
   * Counts VMs bound before owners' usage across groups was counted (countOwnerUsage-1.lua), by
   * each group's owner usage spec (`specs`: group name -> spec); returns how many were counted.
   */
  async countOwnerUsage(specs: Readonly<Record<string, OwnerUsageSpec>>, vmNames: readonly string[]): Promise<number> {
    if (vmNames.length === 0) return 0;
    return Number(await this.call('countOwnerUsage', [JSON.stringify(specs), ...vmNames]));
  }

  /** Ends the holds that are due (at most `batch`); returns the VMs unheld. */
  async expireHolds(now: number, batch: number): Promise<string[]> {
    return (await this.call('expireHolds', [now, batch])) as string[];
  }

  /** True when held, false when held already. Throws VmError for a terminating VM. */
  async holdVm(vmName: string, by: string, now: number, until: number | null = null, reason = ''): Promise<boolean> {
    return this.acted('holdVm', vmName, [by, now, until ?? '', reason], ReplyCodes.ALREADY_HELD, {
      [ReplyCodes.WRONG_STATE]: () => new VmError(`VM ${vmName} is terminating and cannot be held`),
    });
  }

  /** True when unheld, false when the VM was not held. */
  async unholdVm(vmName: string): Promise<boolean> {
    return this.acted('unholdVm', vmName, [], ReplyCodes.NOT_HELD);
  }

  /**
   * True when released, false when the VM is not in_use. With a lease id, a VM in_use under
   * another lease throws LeaseLost (lease_mismatch). A pool whose data format is past this
   * release's throws DataFormatTooNew, changing nothing (as renewLease, claimTask, cancelAcquire).
   */
  async releaseVm(vmName: string, now: number, leaseId = ''): Promise<boolean> {
    return (await this.releaseWithOutcome(vmName, now, leaseId, '')).released;
  }

  /**
   * releaseVm with the build's outcome: a failed build's VM that an autohold rule matches is held
   * for it (`autohold`: the rule's id).
   */
  async releaseWithOutcome(vmName: string, now: number, leaseId: string, outcome: '' | ReleaseOutcome): Promise<{ released: boolean; autohold: number | null }> {
    const reply = await this.call('releaseVm', [vmName, now, leaseId, outcome, DATA_FORMAT_VERSION]);
    const ahead = formatAhead(reply, `the release of VM ${vmName}`);
    if (ahead) throw ahead;
    if (Array.isArray(reply) && reply[0] === ReplyCodes.HELD) return { released: true, autohold: Number(reply[1]) };
    const code = reply as ReplyCode;
    if (code === ReplyCodes.OK) return { released: true, autohold: null };
    if (code === ReplyCodes.WRONG_STATE) return { released: false, autohold: null };
    if (code === ReplyCodes.NOT_FOUND) throw new VmDescriptorNotFound(vmName);
    if (code === ReplyCodes.LEASE_MISMATCH) throw new LeaseLost(vmName, leaseId, 'lease_mismatch');
    throw unexpected('releaseVm', code);
  }

  /** True when the VM moved to terminating, false when its state refused (allowedPreState '' for any). The reason goes to the audit trail. */
  async startVmTermination(vmName: string, allowedPreState: string, now: number, reason = ''): Promise<boolean> {
    return this.acted('startVmTermination', vmName, [allowedPreState, now, reason], ReplyCodes.WRONG_STATE);
  }

  /** Deletes a terminating VM's record. Throws VmError when the VM is not terminating. */
  async removeVm(vmName: string): Promise<void> {
    await this.acted('removeVm', vmName, [], null, {
      [ReplyCodes.WRONG_STATE]: () => new VmError(`VM ${vmName} is not terminating; only a terminating VM can be removed`),
    });
  }

  /** True when the check started, false when the VM's state does not allow one. */
  async startVmCheck(vmName: string, now: number): Promise<boolean> {
    return this.acted('startVmCheck', vmName, [now], ReplyCodes.WRONG_STATE);
  }

  /** True when a check_health VM was marked failed, false for any other state. */
  async markVmCheckFailed(vmName: string): Promise<boolean> {
    return this.acted('markVmCheckFailed', vmName, [], ReplyCodes.WRONG_STATE);
  }

  /** True when the in_use VM under `leaseId` was taken back and is terminating (check_on_acquire failed); false when it is not in_use under that lease. */
  async failCheckOnAcquire(vmName: string, leaseId: string, now: number, jobId: string, detail: string): Promise<boolean> {
    return this.acted('failCheckOnAcquire', vmName, [leaseId, now, jobId, detail], ReplyCodes.WRONG_STATE);
  }

  /** Records a spawn's outcome in the group's circuit breaker; true when this failure opened it. */
  async recordSpawnOutcome(
    group: string,
    outcome: 'ok' | 'failed' | 'reset',
    now: number,
    failure: { errorClass: string; threshold: number; backoffSeconds: number; maxBackoffSeconds: number; needsOperator: boolean; message: string } | null = null,
  ): Promise<boolean> {
    const f = failure ?? { errorClass: '', threshold: 1, backoffSeconds: 0, maxBackoffSeconds: 0, needsOperator: false, message: '' };
    const reply = await this.call('recordSpawnOutcome', [group, outcome, f.errorClass, now, f.threshold, f.backoffSeconds, f.maxBackoffSeconds, f.needsOperator ? '1' : '0', f.message]);
    return Number(reply) === ReplyCodes.OPENED;
  }

  /**
   * accept-new: keeps the offered host key for the VM unless one is kept already, and returns the
   * key kept (compare it with the offered one); null when no VM of that name has that IP.
   */
  async rememberHostKey(vmName: string, vmIp: string, offered: string): Promise<string | null> {
    const reply = (await this.call('rememberHostKey', [vmName, vmIp, offered])) as number | [number, string];
    if (reply === ReplyCodes.NOT_FOUND) return null;
    if (Array.isArray(reply) && reply[0] === ReplyCodes.OK) return reply[1];
    throw unexpected('rememberHostKey', Array.isArray(reply) ? reply[0] : reply);
  }

  /** Records a server start; returns its place in the check sequence. */
  async markServerStart(now: number): Promise<number> {
    return Number(await this.call('markServerStart', [now]));
  }

  /**
   * Extends a lease; returns the new expiry (epoch ms). Throws LeaseLost when the lease is no longer
   * held, DataFormatTooNew (nothing changed) when the pool's data format is past this release's.
   */
  async renewLease(vmName: string, leaseId: string, now: number): Promise<number> {
    const reply = (await this.call('renewLease', [vmName, leaseId, now, DATA_FORMAT_VERSION])) as [number, string?];
    const ahead = formatAhead(reply, `the renewal of the lease on VM ${vmName}`);
    if (ahead) throw ahead;
    switch (reply[0]) {
      case ReplyCodes.OK:
        return Number(reply[1]);
      case ReplyCodes.NOT_FOUND:
        throw new VmDescriptorNotFound(vmName);
      case ReplyCodes.LEASE_MISMATCH:
        throw new LeaseLost(vmName, leaseId, 'lease_mismatch');
      case ReplyCodes.WRONG_STATE:
        throw new LeaseLost(vmName, leaseId, 'not_in_use');
      default:
        throw unexpected('renewLease', reply);
    }
  }

  /** Applies a check result; maxFails is vm_max_check_fails of every group, by group id. */
  /** `maxFails`: group name -> its vm_max_check_fails (a group missing from it: 0). */
  async recordHealthCheckResult(vmName: string, ok: boolean, now: number, maxFails: ReadonlyMap<string, number>): Promise<HealthCheckRecord> {
    const reply = (await this.call('recordHealthCheckResult', [vmName, ok ? '1' : '0', now, ...[...maxFails].flat()])) as [number, string[]?];
    if (reply[0] === ReplyCodes.NOT_FOUND) throw new VmDescriptorNotFound(vmName);
    const outcome = healthOutcomes.get(reply[0]);
    if (!outcome) throw unexpected('recordHealthCheckResult', reply);
    return { outcome, vm: descriptorFromHash(reply[1] ?? []) };
  }

  /**
   * One acquire attempt. Throws TaskConflict when the task holds a VM, or is claimed by a waiting
   * request, for another owner or sandbox.
   */
  async acquireVm(input: AcquireScriptInput): Promise<AcquireAttempt> {
    const { waiter } = input;
    const args: (string | number)[] = [
      input.now,
      input.owner,
      input.sandbox,
      input.workerId,
      input.taskId,
      input.buildId,
      input.chroot,
      input.leaseId,
      waiter?.member ?? '',
      waiter?.priority ?? 0,
      waiter?.deadline ?? 0,
      waiter?.jobId ?? '',
      input.groups.length,
    ];
    for (const g of input.groups) args.push(g.group, g.maxVmPerOwner, g.leaseTimeoutMs, g.maxWaitingPerOwner);
    for (const g of input.groups) args.push(g.ownerUsage ? JSON.stringify(g.ownerUsage) : '');
    const [code, payload, served] = (await this.call('acquireVm', args)) as [number, (string[] | string)?, string[]?];
    switch (code) {
      case ReplyCodes.OK:
      case ReplyCodes.REATTACHED:
        return { status: code === ReplyCodes.OK ? 'acquired' : 'reattached', ...leasedDescriptorFromHash(payload as string[]), served: served ?? [] };
      case ReplyCodes.TASK_CONFLICT:
        throw new TaskConflict(input.taskId);
      case ReplyCodes.TOO_MANY_WAITING:
        throw new TooManyWaiting(input.owner, String(payload), Number(served));
      case ReplyCodes.CANCELLED:
        return { status: 'cancelled', reason: String(payload) };
      case ReplyCodes.NO_VM:
        return { status: 'none', served: (payload as string[] | undefined) ?? [] };
      case ReplyCodes.DEFERRED:
        return { status: 'deferred' };
      default:
        throw unexpected('acquireVm', code);
    }
  }

  /** Takes one VM per item, all or nothing (acquireVmSet-1.lua). */
  async acquireVmSet(input: AcquireSetScriptInput): Promise<AcquireSetAttempt> {
    const { waiter } = input;
    const args: (string | number)[] = [
      input.now,
      input.owner,
      input.sandbox,
      input.workerId,
      waiter?.jobId ?? input.jobId,
      input.demandUntil,
      waiter?.member ?? '',
      waiter?.priority ?? 0,
      waiter?.deadline ?? 0,
      input.items.length,
    ];
    for (const item of input.items) {
      args.push(item.leaseId, item.groups.length);
      for (const g of item.groups) args.push(g.group, g.maxVmPerOwner, g.leaseTimeoutMs, g.account, g.maxWaitingPerOwner, g.ownerUsage ? JSON.stringify(g.ownerUsage) : '');
    }
    // The third element: served job ids (OK), the cap (TOO_MANY_WAITING), the items missing (NO_VM).
    const [code, payload, third] = (await this.call('acquireVmSet', args)) as [number, (string[][] | string[] | string)?, (string[] | number[] | number)?];
    switch (code) {
      case ReplyCodes.OK:
      case ReplyCodes.REATTACHED:
        return {
          status: code === ReplyCodes.OK ? 'acquired' : 'reattached',
          vms: ((payload as string[][] | undefined) ?? []).map((h) => leasedDescriptorFromHash(h)),
          served: (third as string[] | undefined) ?? [],
        };
      case ReplyCodes.TOO_MANY_WAITING:
        throw new TooManyWaiting(input.owner, String(payload), Number(third));
      case ReplyCodes.CANCELLED:
        return { status: 'cancelled', reason: String(payload) };
      case ReplyCodes.NO_VM:
        return { status: 'none', served: (payload as string[] | undefined) ?? [], missing: ((third as number[] | undefined) ?? []).map(Number) };
      default:
        throw unexpected('acquireVmSet', code);
    }
  }

  /**
   * Takes a waiting request out of the line of its groups; returns how many lines it left. VMs the
   * line gave it that its job had not collected go back (reason 'abandoned').
   */
  async leaveAcquireLine(waiter: Pick<AcquireWaiter, 'member' | 'jobId'>, groups: readonly string[], now = Date.now()): Promise<number> {
    return Number(await this.call('leaveAcquireLine', [waiter.member, waiter.jobId, now, ...groups]));
  }

  /**
   * Claims a task for an owner and sandbox until `deadline` (a builder about to enqueue its
   * request). Throws TaskConflict, changing nothing, when the task belongs to another;
   * DataFormatTooNew, changing nothing, when the pool's data format is past this release's.
   */
  async claimTask(taskId: string, owner: string, sandbox: string, deadline: number, now: number): Promise<void> {
    const code = await this.call('claimTask', [now, taskId, owner, sandbox, deadline, DATA_FORMAT_VERSION]);
    const ahead = formatAhead(code, `the claim of task ${JSON.stringify(taskId)}`);
    if (ahead) throw ahead;
    if (code === ReplyCodes.TASK_CONFLICT) throw new TaskConflict(taskId);
    if (code !== ReplyCodes.OK) throw unexpected('claimTask', code);
  }

  /**
   * Withdraws a waiting request: the acquire script ends it as cancelled (with `reason`) wherever it
   * waits. Returns how many lines it left (0 while it is still queued, or once served). Throws
   * DataFormatTooNew, changing nothing (the request still waits), when the pool's data format is
   * past this release's.
   */
  async cancelAcquire(waiter: Pick<AcquireWaiter, 'member' | 'jobId'>, reason: string, keepMs: number, now = Date.now()): Promise<number> {
    const reply = await this.call('cancelAcquire', [waiter.member, waiter.jobId, reason, keepMs, now, DATA_FORMAT_VERSION]);
    const ahead = formatAhead(reply, `the withdrawal of acquire request ${waiter.jobId}`);
    if (ahead) throw ahead;
    return Number(reply);
  }

  /**
   * Gives the group's ready VMs to its waiting requests in line order (the VM named by a ready
   * message, or the group's clean VMs for ''); returns the job ids served (to be woken).
   */
  async dispatchAcquireLine(group: string, vmName: string, now: number): Promise<string[]> {
    return (await this.call('dispatchAcquireLine', [now, group, vmName])) as string[];
  }

  /**
   * A process's check of the pool's state marker (checkPoolState-1.lua): `known` is what it saw
   * last (generation '' and epoch 0 when nothing), `newGeneration` names a marker created now.
   */
  async checkPoolState(known: PoolStateSeen, newGeneration: string, now: number): Promise<PoolStateCheck> {
    const reply = (await this.call('checkPoolState', [known.generation, known.epoch, newGeneration, now])) as [number, string?, string?];
    const status = poolStateStatuses.get(reply[0]);
    if (!status) throw unexpected('checkPoolState', reply);
    if (status === 'lost') return { status };
    return { status, generation: String(reply[1]), epoch: Number(reply[2]) };
  }

  /** Accepts the state as current on this Redis run (verifyPoolState-1.lua); null when the marker changed meanwhile. */
  async verifyPoolState(seen: PoolStateSeen, groups: readonly string[]): Promise<PoolStateSeen | null> {
    const reply = (await this.call('verifyPoolState', [seen.generation, seen.epoch, ...groups])) as [number, string?, string?];
    if (reply[0] === ReplyCodes.POOL_CHANGED) return null;
    if (reply[0] !== ReplyCodes.OK) throw unexpected('verifyPoolState', reply);
    return { generation: String(reply[1]), epoch: Number(reply[2]) };
  }

  /**
   * Recovers from a loss (recoverPool-1.lua): `seen` is the marker as the caller saw it (null when
   * there was none). Returns the VMs moved to terminating, or null when the marker changed meanwhile.
   */
  async recoverPool(seen: PoolStateSeen | null, next: PoolStateSeen, now: number, groups: readonly string[]): Promise<string[] | null> {
    const args = [seen?.generation ?? '', seen ? String(seen.epoch) : '', next.generation, next.epoch, now, ...groups];
    const reply = (await this.call('recoverPool', args)) as [number, string[]?];
    if (reply[0] === ReplyCodes.POOL_CHANGED) return null;
    if (reply[0] !== ReplyCodes.OK) throw unexpected('recoverPool', reply);
    return reply[1] ?? [];
  }

  /** Applies on_lease_expiry (group name -> policy; a group missing: terminate) to at most `batch` lapsed leases. */
  async expireLeases(now: number, batch: number, onLeaseExpiry: ReadonlyMap<string, 'terminate' | 'release'>): Promise<ExpiredLease[]> {
    const args: (string | number)[] = [now, batch, onLeaseExpiry.size];
    for (const [group, policy] of onLeaseExpiry) args.push(group, policy);
    const flat = (await this.call('expireLeases', args)) as string[];
    const out: ExpiredLease[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push({ vmName: flat[i]!, action: flat[i + 1] === 'release' ? 'release' : 'terminate' });
    return out;
  }
}
