import { isIP } from 'node:net';

export const VmStates = {
  GOT_IP: 'got_ip',
  CHECK_HEALTH: 'check_health',
  CHECK_HEALTH_FAILED: 'check_health_failed',
  READY: 'ready',
  IN_USE: 'in_use',
  TERMINATING: 'terminating',
} as const;

export type VmState = (typeof VmStates)[keyof typeof VmStates];
export const ALL_VM_STATES: readonly VmState[] = Object.values(VmStates);

/** VMs that count against max_vm_total (every state but terminating), from per-state counts. */
export function activeVmCount(counts: Readonly<Record<VmState, number>>): number {
  return ALL_VM_STATES.reduce((n, s) => (s === VmStates.TERMINATING ? n : n + counts[s]), 0);
}

export function isVmState(value: unknown): value is VmState {
  return typeof value === 'string' && (ALL_VM_STATES as readonly string[]).includes(value);
}

export interface VmDescriptor {
  vmName: string;
  vmIp: string;
  /** The name of the VM's group (groups are identified by name; a group removed from the config keeps its VMs until they retire). */
  group: string;
  state: VmState;
  /** The owner the VM belongs to since its first acquire (it counts for max_vm_per_user); null while clean. */
  owner: string | null;
  /**
   * @deprecated The same as `owner`. Kept because the HTTP API's VM records and this exported type
   * published it first.
   */
  boundToUser: string | null;
  sandbox: string | null;
  usedByWorker: string | null;
  taskId: string | null;
  buildId: string | null;
  chroot: string | null;
  inUseSince: number | null;
  lastHealthCheck: number | null;
  checkFails: number;
  lastRelease: number | null;
  buildsCount: number;
  terminatingSince: number | null;
}

export class VmError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VmError';
  }
}

/**
 * A request the pool refuses as malformed, whatever the pool's state: an unknown group or state, an
 * invalid VM name or IP, a missing field. The API answers it with 400.
 */
export class InvalidVmRequest extends VmError {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidVmRequest';
  }
}

/** A group name or index that the config does not have; `known` is the config's group names, or a message. */
export class UnknownGroup extends InvalidVmRequest {
  constructor(
    readonly group: unknown,
    known: readonly string[] | string,
  ) {
    super(typeof known === 'string' ? known : `unknown group ${JSON.stringify(group)}; groups are ${known.map((n, i) => `${n} (${i})`).join(', ')}`);
    this.name = 'UnknownGroup';
  }
}

export class NoVmAvailable extends VmError {
  constructor(message = 'no VM available') {
    super(message);
    this.name = 'NoVmAvailable';
  }
}

export class VmDescriptorNotFound extends VmError {
  constructor(readonly vmName: string) {
    super(`VM ${JSON.stringify(vmName)} is not in the pool`);
    this.name = 'VmDescriptorNotFound';
  }
}

/**
 * A spawn that no longer holds its slot among its group's spawns in flight (it finished, or
 * reconcile dropped it as stale): it may not add a VM, which max_vm_total may no longer allow.
 */
export class SpawnSlotLost extends VmError {
  constructor(
    readonly spawnId: string,
    readonly group: string,
  ) {
    super(`spawn ${spawnId} no longer holds a slot among the spawns in flight of group ${group} (it finished, or was dropped as stale)`);
    this.name = 'SpawnSlotLost';
  }
}

/**
 * What startSpawnAttempt found for a spawn: a new attempt may spawn; or an earlier attempt added
 * its VM; or an earlier attempt's hook printed a machine the pool does not have; or the spawn holds
 * no slot any more and left nothing.
 */
export type SpawnAttemptStart =
  | { status: 'new'; attempt: number }
  | { status: 'added'; vmName: string; vmIp: string }
  | { status: 'machine'; vmName: string; vmIp: string | null; hookDone: boolean; slotHeld: boolean }
  | { status: 'no_slot' };

/** A lease that is no longer held: the VM was released, reclaimed or is in_use under another lease. */
export class LeaseLost extends VmError {
  constructor(
    readonly vmName: string,
    readonly leaseId: string,
    /** state_lost: Redis lost or rolled back the pool's state since the lease was granted (recoveredAt). */
    readonly reason: 'not_in_use' | 'lease_mismatch' | 'state_lost',
    readonly recoveredAt?: number,
  ) {
    super(
      reason === 'lease_mismatch'
        ? `VM ${JSON.stringify(vmName)} is in use under another lease than ${JSON.stringify(leaseId)}`
        : reason === 'state_lost'
          ? `lease ${JSON.stringify(leaseId)} on VM ${JSON.stringify(vmName)} is gone: Redis lost or rolled back the pool's state` +
            `${recoveredAt ? ` (recovered at ${new Date(recoveredAt).toISOString()})` : ''}, so every VM whose state could not be proven, this one too, ` +
            'was terminated rather than risk handing it to another build; stop using the VM and acquire a new one'
          : `VM ${JSON.stringify(vmName)} is not in use; lease ${JSON.stringify(leaseId)} is gone`,
    );
    this.name = 'LeaseLost';
  }
}

/**
 * A task id of the owner that belongs to another of the owner's sandboxes: it holds a VM for it, or
 * a request of it still waits. Task ids are per owner, so another owner's task is never a conflict.
 * Says nothing of the other's VM or lease; ask with another task id.
 */
export class TaskConflict extends VmError {
  constructor(readonly taskId: string) {
    super(`task ${JSON.stringify(taskId)} belongs to another sandbox (it holds a VM or has a request waiting); use another task id`);
    this.name = 'TaskConflict';
  }
}

/** Seconds a request refused by max_waiting_per_owner is told to wait before it asks again (Retry-After). */
export const TOO_MANY_WAITING_RETRY_AFTER_SECONDS = 10;

/**
 * The owner has max_waiting_per_owner requests waiting in a group already: the request is refused at
 * once and nothing of it waits. Ask again later (retryAfterSeconds), or withdraw a waiting request.
 */
export class TooManyWaiting extends VmError {
  readonly retryAfterSeconds = TOO_MANY_WAITING_RETRY_AFTER_SECONDS;

  constructor(
    readonly owner: string,
    /** The name of the group whose cap was reached (null when not known: a failed job read back). */
    readonly group: string | null,
    /** That group's max_waiting_per_owner (null when not known). */
    readonly limit: number | null,
    message?: string,
  ) {
    super(
      message ??
        `owner ${JSON.stringify(owner)} has ${limit ?? 'max_waiting_per_owner'} acquire requests waiting in group ${group ?? '?'} already (max_waiting_per_owner); try again later`,
    );
    this.name = 'TooManyWaiting';
  }
}

/** The lease of an assignment: who holds an in_use VM, and until when unless renewed. */
export interface Lease {
  leaseId: string;
  /** Epoch ms. */
  leaseExpiresAt: number;
}

/** A VM with its lease, as handed to a builder: the core of an acquire job's VmAssignment. */
export interface LeasedVm extends Pick<VmDescriptor, 'vmName' | 'vmIp' | 'group'>, Lease {}

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

/**
 * One acquire attempt. `served`: job ids of other waiting requests that the line's dispatch gave a
 * VM during this attempt (their parked jobs are to be woken).
 */
export type AcquireAttempt =
  | ({ status: 'acquired' | 'reattached'; vm: VmDescriptor; served?: string[] } & Lease)
  /** none: nothing fits now (a waiting request is parked in the line); deferred: no longer returned. */
  | { status: 'none' | 'deferred'; served?: string[] }
  /** cancelled: the waiting request was withdrawn (cancelAcquire); it left the line. */
  | { status: 'cancelled'; reason: string };

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

/** VM names go into Redis keys, job ids, logs and hook environments, so they are kept strict. */
export const VM_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function isValidVmName(name: unknown): name is string {
  return typeof name === 'string' && VM_NAME_PATTERN.test(name);
}

export function isValidVmIp(ip: unknown): ip is string {
  return typeof ip === 'string' && isIP(ip) !== 0;
}

const numberOrNull = (v: string | undefined): number | null => (v === undefined || v === '' ? null : Number(v));
const stringOrNull = (v: string | undefined): string | null => (v === undefined ? null : v);

/**
 * A VM with the bookkeeping that is not part of the public VmDescriptor: when its owner and sandbox
 * first got it (for reuse_max_time), and its lease. Reconcile decides on these.
 */
export interface VmRecord extends VmDescriptor {
  /** When the VM entered the pool (got_ip). */
  addedAt: number | null;
  boundSince: number | null;
  leaseId: string | null;
  leaseExpiresAt: number | null;
  /** Operator holding the VM out of acquisition (hold/unhold), or null. */
  heldBy: string | null;
  heldSince: number | null;
  /** When the hold ends by itself (epoch ms), or null for a hold until unheld. */
  heldUntil: number | null;
  /** Why the VM is held, as the operator said, or null. */
  holdReason: string | null;
  /** Position of the last health check in the pool's check_seq order (orders it against a server start in the same ms). */
  checkSeq?: number | null;
  /** The launch fingerprint of the config that spawned it (null: added by hand, or before fingerprints). */
  launchFingerprint?: string | null;
  /** When it first became ready (the start of its first passed check; epoch ms): max_ready_age counts from it. Recorded only in a group with max_ready_age. */
  firstReadyAt?: number | null;
}

function toHashObject(hash: Record<string, string> | string[]): Record<string, string> {
  if (!Array.isArray(hash)) return hash;
  const h: Record<string, string> = {};
  for (let i = 0; i + 1 < hash.length; i += 2) h[hash[i]!] = hash[i + 1]!;
  return h;
}

export function recordFromHash(hash: Record<string, string> | string[]): VmRecord {
  const h = toHashObject(hash);
  return {
    ...descriptorFromHash(h),
    addedAt: numberOrNull(h.added_at),
    boundSince: numberOrNull(h.bound_since),
    leaseId: stringOrNull(h.lease_id),
    leaseExpiresAt: numberOrNull(h.lease_expires_at),
    heldBy: stringOrNull(h.held_by),
    heldSince: numberOrNull(h.held_since),
    heldUntil: numberOrNull(h.held_until),
    holdReason: stringOrNull(h.hold_reason),
    checkSeq: numberOrNull(h.check_seq),
    launchFingerprint: h.launch_fingerprint || null,
    firstReadyAt: numberOrNull(h.first_ready_at),
  };
}

/** A VM hash's descriptor and lease (an acquire's reply), reading the hash once. */
export function leasedDescriptorFromHash(hash: Record<string, string> | string[]): { vm: VmDescriptor } & Lease {
  const h = toHashObject(hash);
  return { vm: descriptorFromHash(h), leaseId: h.lease_id ?? '', leaseExpiresAt: Number(h.lease_expires_at ?? 0) };
}

/** Builds a VmDescriptor from a VM hash, given as an object or as HGETALL's flat array. */
export function descriptorFromHash(hash: Record<string, string> | string[]): VmDescriptor {
  const h = toHashObject(hash);
  return {
    vmName: h.vm_name ?? '',
    vmIp: h.vm_ip ?? '',
    group: h.group ?? '',
    state: h.state as VmState,
    owner: stringOrNull(h.owner),
    boundToUser: stringOrNull(h.owner),
    sandbox: stringOrNull(h.sandbox),
    usedByWorker: stringOrNull(h.used_by_worker),
    taskId: stringOrNull(h.task_id),
    buildId: stringOrNull(h.build_id),
    chroot: stringOrNull(h.chroot),
    inUseSince: numberOrNull(h.in_use_since),
    lastHealthCheck: numberOrNull(h.last_health_check),
    checkFails: Number(h.check_fails ?? 0),
    lastRelease: numberOrNull(h.last_release),
    buildsCount: Number(h.builds_count ?? 0),
    terminatingSince: numberOrNull(h.terminating_since),
  };
}
