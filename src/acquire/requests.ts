import { Job } from 'bullmq';
import type { Config } from '../config/index.js';
import type { VmManager } from '../pool/vmManager.js';
import { acquireWaiterMember } from '../pool/types.js';
import { ACQUIRE_QUEUE, DEFAULT_ACQUIRE_TIMEOUT_MS, acquireJobId, acquireJobIdPatternOfTask, isAcquireJobId, legacyAcquireJobId, acquireFailureOf, acquireRequestSchema, type AcquireFailure, type VmAssignment } from '../../queues/acquire.js';
import { requestGroupIds } from './requestGroups.js';
import { explainWait, type WaitStatus } from './why.js';

/** The states of an acquire request, as AcquireRequestStatus says them. */
export const ACQUIRE_REQUEST_STATES = ['queued', 'waiting', 'assigned', 'failed'] as const;
export type AcquireRequestState = (typeof ACQUIRE_REQUEST_STATES)[number];

/**
 * An acquire request as `GET /api/v1/requests/:id` and `vmpool why` show it:
 * - queued: no acquire worker took it yet;
 * - waiting: in the line (parked, or being tried), with why (`waiting`);
 * - assigned: served (the VM, without its lease id);
 * - failed: ended without a VM (`failure`: its code and reason; cancelled requests have code cancelled).
 */
export interface AcquireRequestStatus {
  id: string;
  taskId: string | null;
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
  groups: string[];
  waiting: WaitStatus | null;
  assignment: Omit<VmAssignment, 'leaseId'> | null;
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

/** Job ids of the acquire queue that match a SCAN pattern. */
async function scanJobIds(vmm: VmManager, pattern: string): Promise<string[]> {
  const keyPrefix = `${vmm.prefix}:${ACQUIRE_QUEUE}:`;
  const keys = await vmm.reader.scanKeys(keyPrefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`) + pattern);
  return keys.map((key) => key.slice(keyPrefix.length));
}

const ownerOf = (job: Job) => String((job.data as { owner?: unknown } | undefined)?.owner ?? '');

/**
 * The acquire job of an id: a job id as given, else the job of that task id of the owner (the
 * lookup's owner, or the only owner with a request of that task; AmbiguousTaskId when several).
 * A request from before task ids were per owner (legacyAcquireJobId) is found too. A job of an
 * owner the lookup may not see is not found.
 */
export async function findAcquireJob(vmm: VmManager, id: string, lookup: RequestLookup = {}): Promise<Job | null> {
  const queue = vmm.queue(ACQUIRE_QUEUE);
  const visible = (job: Job | undefined): job is Job =>
    job !== undefined && (lookup.owner === undefined || ownerOf(job) === lookup.owner) && (lookup.visible?.(ownerOf(job)) ?? true);
  const direct = isAcquireJobId(id) ? await Job.fromId(queue, id) : undefined;
  if (direct) return visible(direct) ? direct : null;
  const ids =
    lookup.owner !== undefined
      ? [acquireJobId(id, lookup.owner)]
      : lookup.owners !== undefined
        ? lookup.owners.map((owner) => acquireJobId(id, owner))
        : await scanJobIds(vmm, acquireJobIdPatternOfTask(id));
  const jobs = (await Promise.all([...ids, legacyAcquireJobId(id)].map((j) => Job.fromId(queue, j)))).filter(visible);
  // A legacy job of an owner who also has a new one is the same task: the new one counts.
  const owners = new Set(jobs.map(ownerOf));
  if (owners.size > 1) throw new AmbiguousTaskId(id, owners.size);
  return jobs[0] ?? null;
}

/** Where an acquire request stands and, while it waits, why; null when no such request is stored. */
export async function acquireRequestStatus(vmm: VmManager, config: Config, id: string, lookup: RequestLookup = {}): Promise<AcquireRequestStatus | null> {
  const job = await findAcquireJob(vmm, id, lookup);
  if (!job) return null;
  const jobState = await job.getState();
  const parsed = acquireRequestSchema.safeParse(job.data);
  const data = (job.data ?? {}) as { owner?: string; sandbox?: string; taskId?: string; timeoutMs?: number };
  let groups: string[] = [];
  try {
    if (parsed.success) groups = requestGroupIds(config.groups, parsed.data);
  } catch {
    groups = [];
  }
  const priority = job.opts.priority ?? 0;
  const status: AcquireRequestStatus = {
    id: String(job.id),
    taskId: data.taskId ?? null,
    owner: String(data.owner ?? ''),
    sandbox: String(data.sandbox ?? ''),
    state: 'queued',
    jobState,
    priority,
    requestedAt: job.timestamp,
    deadline: job.timestamp + (data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS),
    groups,
    waiting: null,
    assignment: null,
    failure: null,
  };
  if (jobState === 'completed') {
    const { leaseId: _lease, ...assignment } = job.returnvalue as VmAssignment;
    return { ...status, state: 'assigned', assignment };
  }
  if (jobState === 'failed') return { ...status, state: 'failed', failure: { code: acquireFailureOf(job), reason: job.failedReason } };
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
