import { DelayedError, Job, UnrecoverableError, WaitingError } from 'bullmq';
import type { JobContext } from '../runtime/context.js';
import { formatZodError } from '../validation.js';
import type { ProcessorSpec } from '../runtime/worker.js';
import { InvalidVmRequest, TaskConflict, VmError, acquireWaiterMember, type AcquireWaiter } from '../pool/types.js';
import {
  ACQUIRE_QUEUE,
  AcquireFailures,
  DEFAULT_ACQUIRE_TIMEOUT_MS,
  type AcquireFailure,
  NO_VM_AVAILABLE_PREFIX,
  acquireRequestSchema,
  failAcquireJob,
  isStrictRequest,
  noVmAvailableReason,
  type AcquireRequestData,
  type VmAssignment,
} from '../../queues/acquire.js';
import { ReadySignal } from '../acquire/readySignal.js';
import { RequestGroupsError, requestGroupIds } from '../acquire/requestGroups.js';
import { withFallbacks } from '../acquire/fallback.js';
import { duplicateConnection } from '../redis.js';

export { NO_VM_AVAILABLE_PREFIX };

export interface AcquireProcessOptions {
  /** Aborting moves a waiting job back to the queue, for another worker (a stopping process). */
  signal?: AbortSignal;
}

/** What one process keeps for its acquire jobs: the shared subscriber and the jobs that wait. */
interface AcquireRuntime {
  readySignal: ReadySignal;
  stopping: AbortController;
}

const runtimes = new WeakMap<JobContext, AcquireRuntime>();
/** Contexts whose acquire waits were stopped: jobs they still receive go straight back to the queue. */
const stopped = new WeakSet<JobContext>();

function runtimeOf(ctx: JobContext): AcquireRuntime {
  let rt = runtimes.get(ctx);
  if (!rt) {
    const subscriber = duplicateConnection(ctx.connection, { maxRetriesPerRequest: null, lazyConnect: false });
    rt = {
      readySignal: new ReadySignal(subscriber, ctx.prefix, ctx.vmm.vmGroups, ctx.logger),
      stopping: new AbortController(),
    };
    runtimes.set(ctx, rt);
  }
  return rt;
}

/**
 * Stops this process's waiting acquire jobs: each leaves the line and goes back to the queue for
 * another worker, so a stopping process does not hold requests until its shutdown deadline. Then
 * closes the subscriber connection. Call it once the acquire worker is closing (worker.close()
 * started, so that it takes no new job), before awaiting that close.
 */
export async function stopAcquireWaits(ctx: JobContext): Promise<void> {
  stopped.add(ctx);
  const rt = runtimes.get(ctx);
  if (!rt) return;
  runtimes.delete(ctx);
  rt.stopping.abort();
  await rt.readySignal.close();
}

/**
 * Group ids of a request: its groups as given, or the groups listing its arch, in config order
 * (requestGroupIds). An unknown group or arch fails the job for good (an invalid request).
 */
export async function resolveRequestGroups(ctx: JobContext, request: AcquireRequestData, job?: Job): Promise<number[]> {
  try {
    return requestGroupIds(ctx.config.groups, request);
  } catch (err) {
    if (!(err instanceof RequestGroupsError)) throw err;
    throw job ? await failAcquireJob(job, AcquireFailures.INVALID_REQUEST, err.message) : new UnrecoverableError(err.message);
  }
}

/** A job's place in the line: ordered by priority, then by when it was enqueued. */
function waiterOf(job: Job, deadline: number): AcquireWaiter {
  const jobId = String(job.id);
  return { member: acquireWaiterMember(job.timestamp, jobId), priority: job.opts.priority ?? 0, deadline, jobId };
}

/**
 * Processes one vm-acquire job: returns the VM assignment, or waits (bounded by timeoutMs from the
 * job's creation) until a VM of its groups becomes ready. Waiting requests are served in line
 * (BullMQ priority, then oldest); the pool scripts keep the line, and a request sleeps until a ready
 * message for one of its groups, with a slow safety retry (config acquire_safety_retry).
 * The same taskId never gets two VMs: the script returns the VM the task already holds, and only to
 * the task's own owner and sandbox (another's request fails as task_conflict, whatever its job id).
 * A request withdrawn by its builder (cancelAcquire) fails as cancelled at its next attempt.
 */
export async function processAcquireJob(job: Job, ctx: JobContext, options: AcquireProcessOptions = {}): Promise<VmAssignment> {
  const parsed = acquireRequestSchema.safeParse(job.data);
  if (!parsed.success) {
    throw await failAcquireJob(job, AcquireFailures.INVALID_REQUEST, `invalid ${ACQUIRE_QUEUE} payload: ${formatZodError(parsed.error)}`);
  }
  return serveAcquireRequest(job, parsed.data, ctx, options);
}

/** processAcquireJob for a payload already validated (the worker runtime validates every job). */
async function serveAcquireRequest(job: Job, request: AcquireRequestData, ctx: JobContext, options: AcquireProcessOptions): Promise<VmAssignment> {
  const asked = await resolveRequestGroups(ctx, request, job);
  // fallback_groups: while a group asked for is blocked (breaker open, or full), its fallbacks serve
  // too; re-read at every attempt, so that the demand returns when the group can take it again.
  const spills = !isStrictRequest(request) && asked.some((g) => (ctx.config.groups[g]!.fallback_groups?.length ?? 0) > 0);
  const servingGroups = async () => (spills ? withFallbacks(ctx.config.groups, asked, await ctx.vmm.blockedGroups(asked)) : asked);
  let groups = await servingGroups();
  // Every group whose line the request joined, to leave them all.
  const lineGroups = new Set(groups);
  const timeoutMs = request.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS;
  const deadline = job.timestamp + timeoutMs;
  const waiter = waiterOf(job, deadline);
  const { jobId } = waiter;
  if (stopped.has(ctx)) return requeue(job, STOPPED_REQUEUE_DELAY_MS);
  const rt = runtimeOf(ctx);
  const signals = [rt.stopping.signal, options.signal].filter((s): s is AbortSignal => s !== undefined);
  const abort = signals.length === 1 ? signals[0]! : AbortSignal.any(signals);
  const groupNames = groups.map((g) => `${ctx.config.groups[g]!.name}(${g})`).join(', ');
  const log = ctx.logger.child({ jobId, owner: request.owner, taskId: request.taskId });
  // The payload is the request, with its groups resolved and this process as the worker.
  let acquireRequest = { ...request, groups, workerId: ctx.workerId };
  const safetyMs = ctx.config.acquire_safety_retry * 1000;
  // Messages count only once subscribed; waiting for it here keeps the first attempt race-free.
  await rt.readySignal.ready();
  let attempts = 0;
  for (;;) {
    if (spills && attempts > 0) {
      groups = await servingGroups();
      for (const g of groups) lineGroups.add(g);
      acquireRequest = { ...acquireRequest, groups };
    }
    const seen = rt.readySignal.snapshot(groups);
    let attempt: Awaited<ReturnType<typeof ctx.vmm.tryAcquireVm>>;
    try {
      attempt = await ctx.vmm.tryAcquireVm(acquireRequest, waiter);
    } catch (err) {
      // Out of line before failing (a task holding a VM for another owner, Redis trouble).
      await ctx.vmm.leaveAcquireLine(waiter, [...lineGroups]).catch(() => undefined);
      if (err instanceof VmError) throw await failAcquireJob(job, failureOf(err), err.message);
      throw err;
    }
    attempts += 1;
    if (attempt.status === 'cancelled') {
      log.info({ reason: attempt.reason }, 'acquire request withdrawn');
      throw await failAcquireJob(job, AcquireFailures.CANCELLED, `cancelled: ${attempt.reason}`);
    }
    if (attempt.status === 'acquired' || attempt.status === 'reattached') {
      if (attempts > 1 || attempt.status === 'reattached') log.info({ vmName: attempt.vm.vmName, attempts, status: attempt.status }, 'acquire served');
      return {
        vmName: attempt.vm.vmName,
        vmIp: attempt.vm.vmIp,
        group: attempt.vm.group,
        leaseId: attempt.leaseId,
        leaseExpiresAt: attempt.leaseExpiresAt,
        requestedAt: job.timestamp,
      };
    }
    const now = ctx.clock();
    if (now >= deadline) {
      await ctx.vmm.leaveAcquireLine(waiter, [...lineGroups]);
      const last = attempt.status === 'deferred' ? 'a request ahead in line could take the free VM' : 'nothing fitted';
      throw await failAcquireJob(
        job,
        AcquireFailures.NO_VM_AVAILABLE,
        noVmAvailableReason(
          `no VM for owner ${request.owner} (sandbox ${JSON.stringify(request.sandbox)}) in groups ${groupNames} within ${timeoutMs} ms (${attempts} attempts; last: ${last})`,
        ),
      );
    }
    const outcome = await rt.readySignal.wait(groups, seen, Math.min(safetyMs, deadline - now), abort);
    if (outcome === 'aborted') {
      await ctx.vmm.leaveAcquireLine(waiter, [...lineGroups]);
      log.info('acquire wait stopped; job goes back to the queue');
      return requeue(job);
    }
  }
}

/** The failure code of a pool refusal. */
function failureOf(err: VmError): AcquireFailure {
  if (err instanceof InvalidVmRequest) return AcquireFailures.INVALID_REQUEST;
  return err instanceof TaskConflict ? AcquireFailures.TASK_CONFLICT : AcquireFailures.REFUSED;
}

/**
 * A job that reaches a process whose waits were stopped (its worker is closing but still fetched
 * it) goes back after this delay, so that it does not bounce between this worker and the queue.
 */
const STOPPED_REQUEUE_DELAY_MS = 250;

/** Hands the job back to the queue (this process stops): another worker takes it from the start. */
async function requeue(job: Job, delayMs = 0): Promise<never> {
  if (delayMs > 0) {
    await job.moveToDelayed(Date.now() + delayMs, job.token);
    throw new DelayedError();
  }
  await job.moveToWait(job.token);
  throw new WaitingError();
}

/** The vm-acquire processor, for the worker runtime. */
export const acquireProcessor: ProcessorSpec<AcquireRequestData, VmAssignment> = {
  queue: ACQUIRE_QUEUE,
  schema: acquireRequestSchema as unknown as ProcessorSpec<AcquireRequestData, VmAssignment>['schema'],
  process: (job, request, ctx) => serveAcquireRequest(job, request, ctx, {}),
  // A request that failed for good leaves the line, so it does not hold up those behind it until
  // its deadline (the processor may never have seen its last attempt: it stalled too often).
  async onFinalFailure(job, ctx) {
    const parsed = acquireRequestSchema.safeParse(job.data);
    if (!parsed.success) return;
    let groups: number[];
    try {
      groups = await resolveRequestGroups(ctx, parsed.data);
    } catch {
      return;
    }
    // With every fallback, blocked or not: the request may have joined their lines.
    const all = new Set(ctx.config.groups.map((_, i) => i));
    await ctx.vmm.leaveAcquireLine(waiterOf(job, 0), withFallbacks(ctx.config.groups, groups, all));
  },
};
