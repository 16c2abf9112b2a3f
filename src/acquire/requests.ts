import { Job } from 'bullmq';
import type { Config } from '../config/index.js';
import type { VmManager } from '../pool/vmManager.js';
import { acquireWaiterMember } from '../pool/types.js';
import {
  ACQUIRE_QUEUE,
  AcquireJobNames,
  DEFAULT_ACQUIRE_TIMEOUT_MS,
  acquireFailureOf,
  acquireJobId,
  acquireJobIdPatternOfTask,
  acquireRequestSchema,
  acquireSetRequestId,
  acquireSetRequestIdPattern,
  acquireSetRequestSchema,
  isAcquireJobId,
  isAcquireSetPayload,
  isAcquireSetRequestId,
  legacyAcquireJobId,
  type AcquireFailure,
  type VmAssignment,
  type VmSetAssignment,
} from '../../queues/acquire.js';
import { requestGroupIds } from './requestGroups.js';
import { explainWait, type WaitStatus } from './why.js';

/** The states of an acquire request, as AcquireRequestStatus says them. */
export const ACQUIRE_REQUEST_STATES = ['queued', 'waiting', 'assigned', 'failed'] as const;
export type AcquireRequestState = (typeof ACQUIRE_REQUEST_STATES)[number];

/**
 * An acquire request as `GET /api/v1/requests/:id` and `vmpool why` show it:
 * - queued: no acquire worker took it yet;
 * - waiting: in the line (parked, or being tried), with why (`waiting`);
 * - assigned: served (the VM, or a set's VMs, without lease ids);
 * - failed: ended without a VM (`failure`: its code and reason; cancelled requests have code cancelled).
 */
export interface AcquireRequestStatus {
  id: string;
  /** The job's kind: one VM (`acquire`), or several at once, all or nothing (`acquire-set`). */
  kind: 'acquire' | 'acquire-set';
  taskId: string | null;
  /** A set's request id (per owner), or null. */
  requestId: string | null;
  owner: string;
  sandbox: string;
  state: AcquireRequestState;
  /** The BullMQ state of its job. */
  jobState: string;
  priority: number;
  /** Epoch ms. */
  requestedAt: number;
  /** Epoch ms: when it stops waiting. */
  deadline: number;
  /** The groups it may be served from (a set: every item's, in order, each once). */
  groups: string[];
  /** A set's items: each VM's groups, in the order asked; null for one VM. */
  items: { groups: string[] }[] | null;
  waiting: WaitStatus | null;
  assignment: Omit<VmAssignment, 'leaseId'> | null;
  /** A served set's VMs, in the order asked (without lease ids); null otherwise. */
  vms: Omit<VmAssignment, 'leaseId'>[] | null;
  failure: { code: AcquireFailure | null; reason: string } | null;
}

/**
 * How a request is looked up by task id. Task ids are per owner: with `owner`, that owner's task;
 * without, every owner's (and `visible` keeps the owners the caller may see, so that the lookup
 * never reveals another owner's request).
 */
export interface RequestLookup {
  owner?: string | undefined;
  /** Without `owner`: the only owners whose task it may be (read directly, no SCAN). */
  owners?: readonly string[] | undefined;
  visible?: (owner: string) => boolean;
}

/** A task id names requests of several owners: the caller must say whose (names no owner). */
export class AmbiguousTaskId extends Error {
  constructor(
    readonly taskId: string,
    readonly count: number,
  ) {
    super(`task ${JSON.stringify(taskId)} has requests of ${count} owners; name the owner`);
    this.name = 'AmbiguousTaskId';
  }
}

/**
 * An id names both a task's request and a set's request (its request id) of one owner: the caller
 * must give the job id (`acquire-...` or `set-...`).
 */
export class AmbiguousRequestId extends AmbiguousTaskId {
  constructor(
    id: string,
    readonly owner: string,
  ) {
    super(id, 1);
    this.message = `${JSON.stringify(id)} names both a task's request and a set's request of owner ${JSON.stringify(owner)}; give the job id (acquire-... or set-...)`;
    this.name = 'AmbiguousRequestId';
  }
}

/** Job ids of the acquire queue that match a SCAN pattern. */
async function scanJobIds(vmm: VmManager, pattern: string): Promise<string[]> {
  const keyPrefix = `${vmm.prefix}:${ACQUIRE_QUEUE}:`;
  const keys = await vmm.reader.scanKeys(keyPrefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`) + pattern);
  return keys.map((key) => key.slice(keyPrefix.length));
}

const ownerOf = (job: Job) => String((job.data as { owner?: unknown } | undefined)?.owner ?? '');

/**
 * The acquire job of an id: a job id as given (`acquire-...`, or a set's `set-...`), else the job
 * of that task id, or set request id, of the owner (the lookup's owner, or the only owner with a
 * request of that id; AmbiguousTaskId when several; AmbiguousRequestId when it names both a task
 * and a set of one owner). A request from before task ids were per owner (legacyAcquireJobId) is
 * found too. A job of an owner the lookup may not see is not found.
 */
export async function findAcquireJob(vmm: VmManager, id: string, lookup: RequestLookup = {}): Promise<Job | null> {
  const queue = vmm.queue(ACQUIRE_QUEUE);
  const visible = (job: Job | undefined): job is Job =>
    job !== undefined && (lookup.owner === undefined || ownerOf(job) === lookup.owner) && (lookup.visible?.(ownerOf(job)) ?? true);
  const direct = isAcquireJobId(id) || isAcquireSetRequestId(id) ? await Job.fromId(queue, id) : undefined;
  if (direct) return visible(direct) ? direct : null;
  const owners = lookup.owner !== undefined ? [lookup.owner] : lookup.owners;
  const ids =
    owners !== undefined
      ? owners.flatMap((owner) => [acquireJobId(id, owner), acquireSetRequestId(owner, id)])
      : [...(await scanJobIds(vmm, acquireJobIdPatternOfTask(id))), ...(await scanJobIds(vmm, acquireSetRequestIdPattern(id)))];
  const jobs = (await Promise.all([...new Set([...ids, legacyAcquireJobId(id)])].map((j) => Job.fromId(queue, j)))).filter(visible);
  // A legacy job of an owner who also has a new one is the same task: the new one counts.
  const ownersFound = new Set(jobs.map(ownerOf));
  if (ownersFound.size > 1) throw new AmbiguousTaskId(id, ownersFound.size);
  const sets = jobs.filter(isSetJob);
  if (sets.length > 0 && sets.length < jobs.length) throw new AmbiguousRequestId(id, ownerOf(sets[0]!));
  return jobs[0] ?? null;
}

/** Whether an acquire job asks for a set (an acquire-set job). */
function isSetJob(job: Job): boolean {
  return job.name === AcquireJobNames.ACQUIRE_SET || isAcquireSetPayload(job.data);
}

/** The groups of an item or request, or none when they cannot be resolved (an unknown group now). */
function groupsOf(config: Config, request: Parameters<typeof requestGroupIds>[1]): string[] {
  try {
    return requestGroupIds(config.groups, request);
  } catch {
    return [];
  }
}

/** What a waiting job shows as its progress: `{ waiting: WaitStatus }`. */
function progressWait(job: Job): WaitStatus | null {
  const waiting = (job.progress as { waiting?: unknown } | null | undefined)?.waiting;
  return waiting && typeof waiting === 'object' ? (waiting as WaitStatus) : null;
}

/** Where an acquire request stands and, while it waits, why; null when no such request is stored. */
export async function acquireRequestStatus(vmm: VmManager, config: Config, id: string, lookup: RequestLookup = {}): Promise<AcquireRequestStatus | null> {
  let job = await findAcquireJob(vmm, id, lookup);
  if (!job) return null;
  const jobState = await job.getState();
  // Read before it finished, its state after: read it again, or its result or failure is missing.
  if ((jobState === 'completed' || jobState === 'failed') && !job.finishedOn) job = (await Job.fromId(vmm.queue(ACQUIRE_QUEUE), String(job.id))) ?? job;
  const set = isSetJob(job);
  const data = (job.data ?? {}) as { owner?: string; sandbox?: string; taskId?: string; requestId?: string; timeoutMs?: number };
  let groups: string[] = [];
  let items: { groups: string[] }[] | null = null;
  if (set) {
    const parsed = acquireSetRequestSchema.safeParse(job.data);
    if (parsed.success) {
      items = parsed.data.vms.map((item) => ({ groups: groupsOf(config, item) }));
      groups = [...new Set(items.flatMap((item) => item.groups))];
    }
  } else {
    const parsed = acquireRequestSchema.safeParse(job.data);
    if (parsed.success) groups = groupsOf(config, parsed.data);
  }
  const priority = job.opts.priority ?? 0;
  const status: AcquireRequestStatus = {
    id: String(job.id),
    kind: set ? AcquireJobNames.ACQUIRE_SET : AcquireJobNames.ACQUIRE,
    taskId: set ? null : (data.taskId ?? null),
    requestId: set ? (data.requestId ?? null) : null,
    owner: String(data.owner ?? ''),
    sandbox: String(data.sandbox ?? ''),
    state: 'queued',
    jobState,
    priority,
    requestedAt: job.timestamp,
    deadline: job.timestamp + (data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS),
    groups,
    items,
    waiting: null,
    assignment: null,
    vms: null,
    failure: null,
  };
  if (jobState === 'completed') {
    if (set) {
      const result = job.returnvalue as VmSetAssignment | null;
      return { ...status, state: 'assigned', vms: (result?.vms ?? []).map(({ leaseId: _lease, ...vm }) => vm) };
    }
    const { leaseId: _lease, ...assignment } = job.returnvalue as VmAssignment;
    return { ...status, state: 'assigned', assignment };
  }
  if (jobState === 'failed') return { ...status, state: 'failed', failure: { code: acquireFailureOf(job), reason: job.failedReason } };
  if (set) {
    // A set waits as one request: parked (delayed) with why in its progress, or being tried.
    const waiting = progressWait(job);
    if (jobState === 'delayed' || (jobState === 'active' && waiting)) return { ...status, state: 'waiting', waiting };
    return status;
  }
  const member = acquireWaiterMember(job.timestamp, String(job.id));
  const inLine = groups.length > 0 && (await vmm.reader.lineStanding(groups[0]!, status.owner, status.sandbox, member)).ownerRank !== null;
  if (!inLine) return status;
  const waiting = await explainWait(vmm, config, { owner: status.owner, sandbox: status.sandbox, priority, member, groups }, vmm.clock());
  return { ...status, state: 'waiting', waiting };
}

/** How long a withdrawal is kept for a job still queued (no acquire worker free): the job retention. */
const CANCEL_KEEP_MS = 24 * 3600 * 1000;

/**
 * Withdraws a waiting or queued acquire request (DELETE /api/v1/requests/:id, `vmpool cancel`): it
 * leaves the line, a VM the line gave it and its job did not collect goes back, and its job fails
 * as cancelled (at once when parked: it is woken; when a worker takes it, when queued). A finished
 * request is not changed. Returns the request's status afterwards (it may take a moment to fail),
 * or null when no such request is stored.
 */
export async function cancelAcquireRequest(
  vmm: VmManager,
  config: Config,
  id: string,
  reason: string,
  lookup: RequestLookup = {},
): Promise<{ cancelled: boolean; status: AcquireRequestStatus } | null> {
  const job = await findAcquireJob(vmm, id, lookup);
  if (!job) return null;
  const state = await job.getState();
  if (state === 'completed' || state === 'failed') return { cancelled: false, status: (await acquireRequestStatus(vmm, config, String(job.id)))! };
  await vmm.cancelAcquire({ member: acquireWaiterMember(job.timestamp, String(job.id)), jobId: String(job.id) }, reason, CANCEL_KEEP_MS);
  if (state === 'delayed') await job.promote().catch(() => undefined);
  // A parked request fails as cancelled as soon as an acquire worker takes it again: wait a moment for that.
  const until = Date.now() + 2_000;
  let status = (await acquireRequestStatus(vmm, config, String(job.id)))!;
  while (status.state !== 'failed' && status.state !== 'assigned' && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 50));
    status = (await acquireRequestStatus(vmm, config, String(job.id))) ?? status;
  }
  return { cancelled: true, status };
}
