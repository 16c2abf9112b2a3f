import { randomUUID } from 'node:crypto';
import { UnrecoverableError, type Job, type JobsOptions, type Queue } from 'bullmq';
import { z } from 'zod';
import { InvalidVmRequest, NoVmAvailable, TaskConflict, TooManyWaiting, VmError, type LeasedVm } from '../src/pool/types.js';
import { GROUP_NAME_PATTERN } from '../src/config/schemas.js';
import { QueueNames } from './names.js';

export const ACQUIRE_QUEUE = QueueNames.ACQUIRE;

/** No lone surrogate: owners and task ids name Redis keys and job ids (UTF-8, encodeURIComponent). */
const wellFormed = (s: string) => !/\p{Cs}/u.test(s);
const text = (max: number) => z.string().min(1).max(max).refine(wellFormed, 'well-formed Unicode text (no lone surrogate)');

/** What a request (or a set's VM) asks for: groups or an arch, not both; and/or tags. A zod refinement. */
export const groupsOrArch: [(r: { groups?: unknown; arch?: unknown; tags?: unknown }) => boolean, { message: string; path: string[] }] = [
  (r) => !(r.groups !== undefined && r.arch !== undefined) && (r.groups !== undefined || r.arch !== undefined || r.tags !== undefined),
  { message: 'exactly one of groups or arch, or tags alone', path: ['groups'] },
];

/**
 * A builder's request for a VM: groups (tried in order) or an arch (its groups, in config order),
 * and/or tags that a group must all list (the matching groups, in config order).
 */
export const acquireRequestSchema = z
  .strictObject({
    owner: text(255),
    sandbox: z.string().max(1024).refine(wellFormed, 'well-formed Unicode text (no lone surrogate)'),
    /** Group names; an index in the config's list is an alias, resolved by the process that receives it (a client with the config resolves before enqueueing). */
    groups: z.array(z.union([z.number().int().nonnegative(), z.string().regex(GROUP_NAME_PATTERN, 'a group name')])).min(1).optional(),
    arch: text(64).optional(),
    tags: z.array(text(64)).min(1).max(32).optional(),
    taskId: text(255).optional(),
    buildId: text(255).optional(),
    chroot: text(255).optional(),
    /** How long the request may wait for a VM, in milliseconds. */
    timeoutMs: z.number().int().positive().max(24 * 3600 * 1000).optional(),
    /** Keep to the groups asked for: never served by their fallback_groups (`strict_group` is the same). */
    strictGroup: z.boolean().optional(),
    strict_group: z.boolean().optional(),
  })
  .refine(...groupsOrArch);
export type AcquireRequestData = z.input<typeof acquireRequestSchema>;

/** The BullMQ job names of the vm-acquire queue: one VM, or a set of VMs all or nothing. */
export const AcquireJobNames = { ACQUIRE: 'acquire', ACQUIRE_SET: 'acquire-set' } as const;

/** At most this many VMs in one set: one script call picks them all. */
export const MAX_SET_ITEMS = 32;

/** One VM of a set: groups (tried in order) or an arch, and/or tags, as a single request's. */
export const acquireSetItemSchema = z
  .strictObject({
    groups: acquireRequestSchema.shape.groups,
    arch: acquireRequestSchema.shape.arch,
    tags: acquireRequestSchema.shape.tags,
  })
  .refine(...groupsOrArch);
export type AcquireSetItemData = z.input<typeof acquireSetItemSchema>;

/**
 * A builder's request for several VMs at once, all or nothing (a nodeset): the payload of an
 * `acquire-set` job in the vm-acquire queue. It waits in the line as one request and takes all its
 * VMs in one script call when every one of them can be had; none is held meanwhile.
 */
export const acquireSetRequestSchema = z.strictObject({
  owner: text(255),
  sandbox: z.string().max(1024).refine(wellFormed, 'well-formed Unicode text (no lone surrogate)'),
  vms: z.array(acquireSetItemSchema).min(1).max(MAX_SET_ITEMS),
  /** Identity of the request, per owner (its job id is acquireSetRequestId): asking again joins it. */
  requestId: text(255).optional(),
  /** How long the set may wait for all its VMs, in milliseconds. */
  timeoutMs: z.number().int().positive().max(24 * 3600 * 1000).optional(),
  /** Keep every VM to the groups it lists: never served by their fallback_groups (`strict_group` is the same). */
  strictGroup: z.boolean().optional(),
  strict_group: z.boolean().optional(),
});
export type AcquireSetRequestData = z.input<typeof acquireSetRequestSchema>;

/** Whether an acquire job's payload asks for a set (it has `vms`), not one VM. */
export function isAcquireSetPayload(data: unknown): boolean {
  return typeof data === 'object' && data !== null && Object.hasOwn(data, 'vms');
}

/**
 * Any vm-acquire job's payload: a set (with `vms`) is checked against acquireSetRequestSchema,
 * anything else against acquireRequestSchema, so that each error names the fields of its own kind.
 */
export const acquireJobPayloadSchema = z.unknown().transform((value, ctx): AcquireJobPayload => {
  const parsed = isAcquireSetPayload(value) ? acquireSetRequestSchema.safeParse(value) : acquireRequestSchema.safeParse(value);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) ctx.addIssue({ ...issue, input: (issue as { input?: unknown }).input } as never);
    return z.NEVER;
  }
  return parsed.data;
});
export type AcquireJobPayload = z.output<typeof acquireRequestSchema> | z.output<typeof acquireSetRequestSchema>;

/** Whether a request keeps to its groups (strictGroup, or its alias strict_group). */
export function isStrictRequest(r: Pick<AcquireRequestData, 'strictGroup' | 'strict_group'>): boolean {
  return r.strictGroup === true || r.strict_group === true;
}

/** The VM assignment: the completed acquire job's return value (the VM, its lease, and when it was asked for). */
export interface VmAssignment extends LeasedVm {
  /**
   * When the acquire job that made this assignment was enqueued (its BullMQ timestamp, epoch ms).
   * A client that finds the same value as its own add knows the result is fresh, not that of an
   * earlier request of the same task.
   */
  requestedAt?: number;
}

/** The result of a completed acquire-set job: every VM of the set, in the order asked, each with its own lease. */
export interface VmSetAssignment {
  vms: VmAssignment[];
  /** When the acquire-set job was enqueued (its BullMQ timestamp), as VmAssignment.requestedAt. */
  requestedAt?: number;
}

export const DEFAULT_ACQUIRE_TIMEOUT_MS = 10 * 60 * 1000;

/**
 * A failed acquire job's failedReason starts with this when no VM came within the timeout (and the
 * message of the NoVmAvailable that VmPoolClient.acquire throws then), for people who read failed
 * jobs (Bull Board, logs). Code does not parse it: the job's failure code says why it failed
 * (AcquireFailures, acquireJobError).
 */
export const NO_VM_AVAILABLE_PREFIX = 'NoVmAvailable:';

/** A failure reason that says no VM came: NO_VM_AVAILABLE_PREFIX, then the detail. */
export function noVmAvailableReason(detail: string): string {
  return `${NO_VM_AVAILABLE_PREFIX} ${detail}`;
}

export const acquireJobOptions: JobsOptions = {
  attempts: 1,
  // Finished acquire jobs stay readable long enough for a restarted builder to reattach.
  removeOnComplete: { age: 24 * 3600, count: 50_000 },
  removeOnFail: { age: 24 * 3600, count: 50_000 },
};

const ACQUIRE_JOB_ID_PREFIX = 'acquire-';

/** Between the owner and the task id in a task's job id: encodeURIComponent never writes it. */
const OWNER_TASK_SEPARATOR = '+';

/**
 * The acquire job id of an owner's task: the same task of the same owner always maps to the same
 * job, so re-enqueueing is idempotent and a restarted builder reattaches. Task ids are per owner:
 * the owner is part of the id (`acquire-<owner>+<task id>`, each encoded with encodeURIComponent,
 * which never writes '+', so distinct pairs give distinct ids), and no request of one owner can
 * take or block another owner's job id. BullMQ ids may not contain ':' nor be integers;
 * encodeURIComponent escapes ':'. Without a task id, a random id (no owner needed).
 */
export function acquireJobId(taskId?: '' | null): string;
export function acquireJobId(taskId: string | null | undefined, owner: string): string;
export function acquireJobId(taskId?: string | null, owner?: string): string {
  if (!taskId) return `${ACQUIRE_JOB_ID_PREFIX}${randomUUID()}`;
  if (typeof owner !== 'string' || owner === '') throw new TypeError('acquireJobId: a task id needs its owner (task ids are per owner)');
  return `${ACQUIRE_JOB_ID_PREFIX}${encodeURIComponent(owner)}${OWNER_TASK_SEPARATOR}${encodeURIComponent(taskId)}`;
}

/**
 * The identity of an all-or-nothing VM set request (VmManager.acquireVmSet, POST /acquire-set):
 * `set-<owner>+<request id>`, both encoded as acquireJobId's parts, so that two owners' request ids
 * never name one set (a set's re-run record is keyed by it); a random one without a request id.
 */
export function acquireSetRequestId(owner: string, requestId?: string | null): string {
  if (!requestId) return `set-${randomUUID()}`;
  return `set-${encodeURIComponent(owner)}${OWNER_TASK_SEPARATOR}${encodeURIComponent(requestId)}`;
}

/** Whether an id has the form of a set request's job id (acquireSetRequestId), not a request id. */
export function isAcquireSetRequestId(id: string): boolean {
  return id.startsWith('set-');
}

/**
 * The pattern (Redis SCAN MATCH, under the queue's key prefix) of the job ids of a set's request id
 * of any owner: how a request id is found when its owner is not given (as acquireJobIdPatternOfTask).
 */
export function acquireSetRequestIdPattern(requestId: string): string {
  return `set-*${OWNER_TASK_SEPARATOR}${encodeURIComponent(requestId).replace(/\*/g, '\\*')}`;
}

/**
 * The job id that builds before task ids were per owner gave a task (`acquire-<task id>`): only
 * read, to find a request enqueued before an upgrade.
 */
export function legacyAcquireJobId(taskId: string): string {
  return `${ACQUIRE_JOB_ID_PREFIX}${encodeURIComponent(taskId)}`;
}

/**
 * The pattern (Redis SCAN MATCH, under the queue's key prefix) of the job ids of a task of any
 * owner: how a task id is found when its owner is not given.
 */
export function acquireJobIdPatternOfTask(taskId: string): string {
  // encodeURIComponent leaves '*' as it is; the other glob characters ('?', '[', ']', '\\') it escapes.
  return `${ACQUIRE_JOB_ID_PREFIX}*${OWNER_TASK_SEPARATOR}${encodeURIComponent(taskId).replace(/\*/g, '\\*')}`;
}

/** BullMQ's events stream of the acquire queue under `prefix` (read from its last id before a job is added). */
export function acquireEventsStreamKey(prefix: string): string {
  return `${prefix}:${ACQUIRE_QUEUE}:events`;
}

/** Whether an id has the form of an acquire job id (acquireJobId), not a task id. */
export function isAcquireJobId(id: string): boolean {
  return id.startsWith(ACQUIRE_JOB_ID_PREFIX);
}

/** Adds an acquire request under its job id (acquireJobId) with the default options. */
export async function addAcquireJob(
  queue: Queue,
  data: AcquireRequestData,
  opts: { jobId: string; timestamp: number; priority?: number },
): Promise<Job<AcquireRequestData, VmAssignment>> {
  return queue.add(AcquireJobNames.ACQUIRE, data, { ...acquireJobOptions, jobId: opts.jobId, timestamp: opts.timestamp, ...(opts.priority ? { priority: opts.priority } : {}) });
}

/** Adds a set request under its job id (acquireSetRequestId) with the default options. */
export async function addAcquireSetJob(
  queue: Queue,
  data: AcquireSetRequestData,
  opts: { jobId: string; timestamp: number; priority?: number },
): Promise<Job<AcquireSetRequestData, VmSetAssignment>> {
  return queue.add(AcquireJobNames.ACQUIRE_SET, data, { ...acquireJobOptions, jobId: opts.jobId, timestamp: opts.timestamp, ...(opts.priority ? { priority: opts.priority } : {}) });
}

/** Adds acquire requests in bulk (one MULTI), each under its job id, with the default options. */
export async function addAcquireJobs(queue: Queue, requests: readonly { data: AcquireRequestData; jobId: string }[]): Promise<void> {
  await queue.addBulk(requests.map(({ data, jobId }) => ({ name: AcquireJobNames.ACQUIRE, data, opts: { ...acquireJobOptions, jobId } })));
}

/**
 * Why an acquire job failed. BullMQ keeps only the error's message (failedReason), so the acquire
 * processor also records one of these codes in the failed job, as its progress
 * `{ failure: <code> }` (failAcquireJob); acquireJobError turns the job back into an error.
 */
export const AcquireFailures = {
  /** No VM came within the request's timeout: NoVmAvailable (failedReason starts with NO_VM_AVAILABLE_PREFIX). */
  NO_VM_AVAILABLE: 'no_vm_available',
  /** The request is malformed (its payload, an unknown group or arch): InvalidVmRequest. */
  INVALID_REQUEST: 'invalid_request',
  /** The pool refused the request: VmError. */
  REFUSED: 'refused',
  /** The task belongs to another owner or sandbox (it holds a VM or has a request waiting): TaskConflict. */
  TASK_CONFLICT: 'task_conflict',
  /** Its owner had max_waiting_per_owner requests waiting in a group already: TooManyWaiting. */
  TOO_MANY_WAITING: 'too_many_waiting',
  /** The request was withdrawn while it waited (its builder went away; failedReason starts with `cancelled:`). */
  CANCELLED: 'cancelled',
} as const;
export type AcquireFailure = (typeof AcquireFailures)[keyof typeof AcquireFailures];

/** What a failed acquire job keeps as its progress. */
export interface AcquireFailureRecord {
  failure: AcquireFailure;
}

const acquireFailures = new Set<unknown>(Object.values(AcquireFailures));

/** The failure code recorded in an acquire job, or null (not failed by the processor, or an older job). */
export function acquireFailureOf(job: Pick<Job, 'progress'>): AcquireFailure | null {
  const failure = (job.progress as Partial<AcquireFailureRecord> | null | undefined)?.failure;
  return acquireFailures.has(failure) ? (failure as AcquireFailure) : null;
}

/**
 * Records why the acquire job fails and returns the error to throw: unrecoverable, so that BullMQ
 * fails the job at once with `reason` as its failedReason.
 */
export async function failAcquireJob(job: Job, failure: AcquireFailure, reason: string): Promise<UnrecoverableError> {
  const record: AcquireFailureRecord = { failure };
  // Without the record, the failure reads as a plain VmError: still a failure, with its reason.
  await job.updateProgress(record).catch(() => undefined);
  return new UnrecoverableError(reason);
}

/** The error a failed acquire job stands for: NoVmAvailable, InvalidVmRequest, TaskConflict, TooManyWaiting or VmError, with its reason. */
export function acquireJobError(job: Pick<Job, 'progress' | 'failedReason'> & { data?: unknown }): VmError {
  const reason = job.failedReason || 'unknown reason';
  switch (acquireFailureOf(job)) {
    case AcquireFailures.TASK_CONFLICT:
      return new TaskConflict(String((job.data as { taskId?: unknown } | undefined)?.taskId ?? ''));
    case AcquireFailures.NO_VM_AVAILABLE:
      return new NoVmAvailable(reason);
    case AcquireFailures.TOO_MANY_WAITING:
      return new TooManyWaiting(String((job.data as { owner?: unknown } | undefined)?.owner ?? ''), null, null, reason);
    case AcquireFailures.INVALID_REQUEST:
      return new InvalidVmRequest(`acquire failed: ${reason}`);
    default:
      return new VmError(`acquire failed: ${reason}`);
  }
}
