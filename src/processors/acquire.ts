import { DelayedError, Job, UnrecoverableError } from 'bullmq';
import type { JobContext } from '../runtime/context.js';
import { withFallbacks } from '../acquire/fallback.js';
import { formatZodError } from '../validation.js';
import type { ProcessorSpec } from '../runtime/worker.js';
import { InvalidVmRequest, TaskConflict, TooManyWaiting, VmError, acquireWaiterMember, type AcquireWaiter } from '../pool/types.js';
import {
  ACQUIRE_QUEUE,
  AcquireFailures,
  acquireJobPayloadSchema,
  acquireSetRequestSchema,
  isAcquireSetPayload,
  type AcquireJobPayload,
  type AcquireSetRequestData,
  type VmSetAssignment,
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
import { AcquireLineRuntime } from '../acquire/lineRuntime.js';
import { describeWait, explainWait, type WaitingRequest, type WaitStatus } from '../acquire/why.js';
import { RequestGroupsError, requestGroupIds } from '../acquire/requestGroups.js';

export { NO_VM_AVAILABLE_PREFIX };

/** The acquire line's runtime of each process (its subscriber, the dispatch on ready messages, the sweep). */
const runtimes = new WeakMap<JobContext, AcquireLineRuntime>();
/** Contexts whose acquire line was stopped. */
const stopped = new WeakSet<JobContext>();

function runtimeOf(ctx: JobContext): AcquireLineRuntime {
  let rt = runtimes.get(ctx);
  if (!rt) {
    rt = new AcquireLineRuntime(ctx);
    runtimes.set(ctx, rt);
  }
  return rt;
}

/** Starts the process's acquire line runtime (before its worker takes jobs) and sweeps the line once. */
export async function startAcquireLine(ctx: JobContext): Promise<void> {
  const rt = runtimeOf(ctx);
  await rt.ready().catch(() => undefined);
  await rt.sweep();
}

/**
 * Stops this process's acquire line runtime (its subscriber). Waiting requests are parked in Redis
 * (delayed jobs), so a stopping process holds none of them: other replicas, or the next start,
 * serve them. Call it once the acquire worker is closing.
 */
export async function stopAcquireWaits(ctx: JobContext): Promise<void> {
  stopped.add(ctx);
  const rt = runtimes.get(ctx);
  if (!rt) return;
  runtimes.delete(ctx);
  await rt.close();
}

/**
 * Group names of a request: its groups as given (names, or indexes in this process's config), or
 * the groups listing its arch, in config order (requestGroupIds). An unknown group or arch fails
 * the job for good (an invalid request).
 */
export async function resolveRequestGroups(ctx: JobContext, request: AcquireRequestData, job?: Job): Promise<string[]> {
  try {
    try {
      return requestGroupIds(ctx.config.groups, request, new Set(ctx.vmm.removedGroups.keys()));
    } catch (err) {
      // A name of a group removed from the config, not read yet: its VMs are still served.
      if (!(err instanceof RequestGroupsError) || !request.groups?.some((g) => typeof g === 'string')) throw err;
      return requestGroupIds(ctx.config.groups, request, new Set((await ctx.vmm.refreshRemovedGroups()).keys()));
    }
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
 * Processes one vm-acquire job: returns the VM assignment, or parks the request until the line
 * gives it a VM (bounded by timeoutMs from the job's creation). Waiting requests are served in the
 * line's order (BullMQ priority, then round-robin between owners, then first come first served
 * within an owner; commands/includes/acquireLine.lua). A request that cannot be served now stays in
 * the line and its job is moved to delayed until its deadline: it holds no worker. The line's
 * dispatcher (AcquireLineRuntime) gives it a VM when one it can take is ready and wakes (promotes)
 * its job, which collects the assignment here. The job's progress says why it waits (WaitStatus).
 * The same taskId never gets two VMs: the script returns the VM the task already holds, and only to
 * the task's own owner and sandbox (another's request fails as task_conflict, whatever its job id).
 * The same job run again (its worker died) gets the VM it was given. A request withdrawn by its
 * builder (cancelAcquire) fails as cancelled at its next attempt. An acquire-set job (its payload
 * has `vms`) is served by serveAcquireSetRequest and returns a VmSetAssignment.
 */
export async function processAcquireJob(job: Job, ctx: JobContext): Promise<VmAssignment | VmSetAssignment> {
  const parsed = acquireJobPayloadSchema.safeParse(job.data);
  if (!parsed.success) {
    throw await failAcquireJob(job, AcquireFailures.INVALID_REQUEST, `invalid ${ACQUIRE_QUEUE} payload: ${formatZodError(parsed.error)}`);
  }
  return serveAcquireJob(job, parsed.data, ctx);
}

/** An acquire job of either kind: one VM, or a set (its payload has `vms`). */
/** Why a waiting request waits (explainWait), or null, logged, when that cannot be told: it only informs. */
function waitOrNull(ctx: JobContext, request: WaitingRequest, now: number, log: { warn(obj: object, msg: string): void }, what: string): Promise<WaitStatus | null> {
  return explainWait(ctx.vmm, ctx.config, request, now).catch((err: Error) => {
    log.warn({ err: err.message }, `could not tell why ${what} waits`);
    return null;
  });
}

function serveAcquireJob(job: Job, payload: AcquireJobPayload, ctx: JobContext): Promise<VmAssignment | VmSetAssignment> {
  return 'vms' in payload ? serveAcquireSetRequest(job, payload, ctx) : serveAcquireRequest(job, payload, ctx);
}

/** processAcquireJob for a payload already validated (the worker runtime validates every job). */
async function serveAcquireRequest(job: Job, request: AcquireRequestData, ctx: JobContext): Promise<VmAssignment> {
  const asked = await resolveRequestGroups(ctx, request, job);
  // fallback_groups: while a group asked for is blocked (breaker open, at max_vm_total, or
  // quota_full), its fallbacks serve too. Read at every run; such a request is parked for at most
  // acquire_safety_retry, so that it spills over, or its demand returns, soon after its groups change.
  const spills = !isStrictRequest(request) && hasFallbackGroups(ctx, asked);
  const groups = spills ? withFallbacks(ctx.config.groups, asked, await ctx.vmm.blockedGroups(asked)) : asked;
  // The lines it may have joined in any run (with every fallback), to leave them all.
  const lineGroups = spills ? withEveryFallback(ctx, asked) : asked;
  const timeoutMs = request.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS;
  const deadline = job.timestamp + timeoutMs;
  const waiter = waiterOf(job, deadline);
  const { jobId } = waiter;
  // The process's line runtime (dispatch on ready messages, sweeps) runs once it has a job; it
  // listens to a group removed from the config (that drains) once a request names it.
  if (!stopped.has(ctx)) runtimeOf(ctx).watch(groups.filter((g) => ctx.vmm.removedGroups.has(g)));
  const groupNames = groups.map((g) => `${g}(${ctx.vmm.groupIndex(g) ?? 'removed'})`).join(', ');
  const log = ctx.logger.child({ jobId, owner: request.owner, taskId: request.taskId });
  // The payload is the request, with its groups resolved and this process as the worker.
  const acquireRequest = { ...request, groups, workerId: ctx.workerId };
  let attempt: Awaited<ReturnType<typeof ctx.vmm.tryAcquireVm>>;
  for (;;) {
    try {
      attempt = await ctx.vmm.tryAcquireVm(acquireRequest, waiter);
    } catch (err) {
      // Out of line before failing (a task holding a VM for another owner, Redis trouble).
      await ctx.vmm.leaveAcquireLine(waiter, lineGroups).catch(() => undefined);
      if (err instanceof VmError) throw await failAcquireJob(job, failureOf(err), err.message);
      throw err;
    }
    if (attempt.status !== 'acquired' && attempt.status !== 'reattached') break;
    // check_on_acquire: a VM that fails is terminated and the next one is tried (or the request waits).
    if (await passesCheckOnAcquire(ctx, attempt.vm, attempt.leaseId, jobId, log)) break;
  }
  if (attempt.status === 'cancelled') {
    log.info({ reason: attempt.reason }, 'acquire request withdrawn');
    throw await failAcquireJob(job, AcquireFailures.CANCELLED, `cancelled: ${attempt.reason}`);
  }
  if (attempt.status === 'acquired' || attempt.status === 'reattached') {
    if (job.attemptsStarted > 1 || attempt.status === 'reattached') log.info({ vmName: attempt.vm.vmName, status: attempt.status }, 'acquire served');
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
  const why = await waitOrNull(ctx, { owner: request.owner, sandbox: request.sandbox, priority: waiter.priority, member: waiter.member, groups }, now, log, 'the request');
  if (now >= deadline || !job.token) {
    await ctx.vmm.leaveAcquireLine(waiter, lineGroups);
    const last = why ? describeWait(why) : 'nothing fitted';
    throw await failAcquireJob(
      job,
      AcquireFailures.NO_VM_AVAILABLE,
      noVmAvailableReason(
        `no VM for owner ${request.owner} (sandbox ${JSON.stringify(request.sandbox)}) in groups ${groupNames} within ${timeoutMs} ms (last blocking constraint: ${last})`,
      ),
    );
  }
  // Parked: in the line, its job delayed until its deadline, holding no worker.
  if (why) await job.updateProgress({ waiting: why }).catch(() => undefined);
  await job.moveToDelayed(spills ? Math.min(deadline, now + ctx.config.acquire_safety_retry * 1000) : deadline, job.token);
  // Given a VM between the attempt and the move (its wake found the job still active): wake it now.
  if (await ctx.vmm.reader.isAcquireAssigned(jobId)) await job.promote().catch(() => undefined);
  throw new DelayedError();
}

/**
 * The check at hand-over (the group's check_on_acquire): runs the group's health check on the VM the
 * acquire just assigned. Outside Lua (network I/O), after the assignment, so a re-run of the job
 * after a crash here collects the same assignment and checks it again: no VM is handed out
 * unchecked, none is lost. A VM that fails is taken back and terminated in one script
 * (failCheckOnAcquire); false then. True when the group has no check_on_acquire.
 */
async function passesCheckOnAcquire(
  ctx: JobContext,
  vm: { vmName: string; vmIp: string; group: string },
  leaseId: string,
  jobId: string,
  log: { warn(obj: object, msg: string): void },
): Promise<boolean> {
  const groupConfig = ctx.config.groups.find((g) => g.name === vm.group);
  if (!groupConfig?.check_on_acquire) return true;
  const result = await ctx
    .healthCheck(vm.group)
    .check({ vmName: vm.vmName, vmIp: vm.vmIp, group: ctx.vmm.providerGroup(vm.group) }, { timeoutMs: groupConfig.check_on_acquire_timeout * 1000 });
  if (result.ok) return true;
  log.warn({ vmName: vm.vmName, detail: result.detail }, 'VM failed check_on_acquire; trying the next');
  // false: not in_use under this lease any more (released or expired meanwhile); it is not handed out either.
  await ctx.vmm.failCheckOnAcquire(vm.vmName, leaseId, jobId, result.detail);
  return false;
}

/** Each item's groups, resolved as a single request's (no fallback groups: a set keeps to what it asked for). */
async function resolveSetItems(ctx: JobContext, request: AcquireSetRequestData, job?: Job): Promise<string[][]> {
  const items: string[][] = [];
  for (const item of request.vms) items.push(await resolveRequestGroups(ctx, { owner: request.owner, sandbox: request.sandbox, ...item }, job));
  return items;
}

/**
 * Processes one acquire-set job: every VM of the set, all or nothing, or the set parks in the line
 * as one request until the line can give it all its VMs at once (acquireVmSet-1.lua), bounded by
 * timeoutMs from the job's creation. Nothing is assigned to it while it waits. Its VMs spill over to
 * their groups' fallback_groups as a single request's do (not with strictGroup). A re-run gets the
 * VMs given before; a withdrawn set fails as cancelled. With check_on_acquire, each VM is checked
 * at hand-over; if one fails, it is terminated, the others go back (ready, still bound to the
 * owner and sandbox, so the next attempt prefers them) and the set is tried again.
 */
async function serveAcquireSetRequest(job: Job, request: AcquireSetRequestData, ctx: JobContext): Promise<VmSetAssignment> {
  const asked = await resolveSetItems(ctx, request, job);
  // fallback_groups, as for a single request: while a group an item lists is blocked, its
  // fallbacks serve that item too; read at every run, parked for at most acquire_safety_retry.
  const spills = !isStrictRequest(request) && hasFallbackGroups(ctx, asked.flat());
  const blocked = spills ? await ctx.vmm.blockedGroups([...new Set(asked.flat())]) : new Set<string>();
  const items = spills ? asked.map((item) => withFallbacks(ctx.config.groups, item, blocked)) : asked;
  const groups = [...new Set(items.flat())];
  // Each item with every fallback it may ever spill to: whether the set is possible at all, and
  // the lines it may have joined in any run, to leave them all.
  const possibleWith = spills ? asked.map((item) => withEveryFallback(ctx, item)) : undefined;
  const lineGroups = possibleWith ? [...new Set(possibleWith.flat())] : groups;
  const timeoutMs = request.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS;
  const deadline = job.timestamp + timeoutMs;
  const waiter = waiterOf(job, deadline);
  const { jobId } = waiter;
  if (!stopped.has(ctx)) runtimeOf(ctx).watch(groups.filter((g) => ctx.vmm.removedGroups.has(g)));
  const log = ctx.logger.child({ jobId, owner: request.owner, set: items.length });
  const setRequest = { owner: request.owner, sandbox: request.sandbox, workerId: ctx.workerId, jobId, items: items.map((g) => ({ groups: g })) };
  let attempt: Awaited<ReturnType<typeof ctx.vmm.tryAcquireVmSet>>;
  for (;;) {
    try {
      attempt = await ctx.vmm.tryAcquireVmSet(setRequest, { waiter, possibleWith });
    } catch (err) {
      await ctx.vmm.leaveAcquireLine(waiter, lineGroups).catch(() => undefined);
      if (err instanceof VmError) throw await failAcquireJob(job, failureOf(err), err.message);
      throw err;
    }
    if (attempt.status !== 'acquired' && attempt.status !== 'reattached') break;
    if (await setPassesCheckOnAcquire(ctx, attempt.vms, jobId, log)) break;
  }
  if (attempt.status === 'cancelled') {
    log.info({ reason: attempt.reason }, 'acquire-set request withdrawn');
    throw await failAcquireJob(job, AcquireFailures.CANCELLED, `cancelled: ${attempt.reason}`);
  }
  if (attempt.status === 'acquired' || attempt.status === 'reattached') {
    if (job.attemptsStarted > 1 || attempt.status === 'reattached') log.info({ vmNames: attempt.vms.map((v) => v.vm.vmName), status: attempt.status }, 'acquire-set served');
    return {
      vms: attempt.vms.map(({ vm, leaseId, leaseExpiresAt }) => ({ vmName: vm.vmName, vmIp: vm.vmIp, group: vm.group, leaseId, leaseExpiresAt, requestedAt: job.timestamp })),
      requestedAt: job.timestamp,
    };
  }
  const now = ctx.clock();
  // Why it waits: in each of its groups, as a single request of its owner and sandbox would, and
  // which of its VMs cannot be had now (each with the groups it could use, fallbacks included).
  const explained = await waitOrNull(ctx, { owner: request.owner, sandbox: request.sandbox, priority: waiter.priority, member: waiter.member, groups }, now, log, 'the set');
  const unavailableVms = ((attempt.status === 'none' && attempt.missing) || []).map((index) => ({ index, groups: items[index - 1] ?? [] }));
  const why: WaitStatus | null = explained && { ...explained, set: items.length, unavailableVms };
  if (now >= deadline || !job.token) {
    await ctx.vmm.leaveAcquireLine(waiter, lineGroups);
    const last = why ? describeWait(why) : 'not all of its VMs could be had at once';
    throw await failAcquireJob(
      job,
      AcquireFailures.NO_VM_AVAILABLE,
      noVmAvailableReason(`no set of ${items.length} VMs for owner ${request.owner} (sandbox ${JSON.stringify(request.sandbox)}) in groups ${groups.join(', ')} within ${timeoutMs} ms (last blocking constraint: ${last})`),
    );
  }
  if (why) await job.updateProgress({ waiting: why }).catch(() => undefined);
  await job.moveToDelayed(spills ? Math.min(deadline, now + ctx.config.acquire_safety_retry * 1000) : deadline, job.token);
  if (await ctx.vmm.reader.isAcquireAssigned(jobId)) await job.promote().catch(() => undefined);
  throw new DelayedError();
}

/** Whether one of the groups has fallback_groups (a request for it may spill over). */
function hasFallbackGroups(ctx: JobContext, groups: readonly string[]): boolean {
  return groups.some((g) => (ctx.config.groups.find((c) => c.name === g)?.fallback_groups?.length ?? 0) > 0);
}

/** The groups with every fallback, blocked or not: all a request for them may ever be served in. */
function withEveryFallback(ctx: JobContext, groups: readonly string[]): string[] {
  return withFallbacks(ctx.config.groups, groups, new Set(ctx.vmm.vmGroups));
}

/**
 * check_on_acquire for every VM of a set just assigned, concurrently. If one fails, that VM is taken
 * back and terminated (failCheckOnAcquire, which also drops the set's assignment record), and the
 * set's other VMs are released: false then, and the set is tried again.
 */
async function setPassesCheckOnAcquire(
  ctx: JobContext,
  vms: readonly { vm: { vmName: string; vmIp: string; group: string }; leaseId: string }[],
  jobId: string,
  log: { warn(obj: object, msg: string): void },
): Promise<boolean> {
  const passed = await Promise.all(vms.map(({ vm, leaseId }) => passesCheckOnAcquire(ctx, vm, leaseId, jobId, log)));
  if (passed.every(Boolean)) return true;
  await Promise.all(vms.filter((_, i) => passed[i]).map(({ vm, leaseId }) => ctx.vmm.releaseVm(vm.vmName, leaseId).catch(() => false)));
  return false;
}

/** The failure code of a pool refusal. */
function failureOf(err: VmError): AcquireFailure {
  if (err instanceof InvalidVmRequest) return AcquireFailures.INVALID_REQUEST;
  if (err instanceof TooManyWaiting) return AcquireFailures.TOO_MANY_WAITING;
  return err instanceof TaskConflict ? AcquireFailures.TASK_CONFLICT : AcquireFailures.REFUSED;
}

/** The vm-acquire processor, for the worker runtime. */
export const acquireProcessor: ProcessorSpec<AcquireJobPayload, VmAssignment | VmSetAssignment> = {
  queue: ACQUIRE_QUEUE,
  schema: acquireJobPayloadSchema as unknown as ProcessorSpec<AcquireJobPayload, VmAssignment | VmSetAssignment>['schema'],
  process: (job, payload, ctx) => serveAcquireJob(job, payload, ctx),
  // A request that failed for good leaves the line, so it does not hold up those behind it until
  // its deadline (the processor may never have seen its last attempt: it stalled too often).
  async onFinalFailure(job, ctx) {
    if (isAcquireSetPayload(job.data)) {
      const set = acquireSetRequestSchema.safeParse(job.data);
      if (!set.success) return;
      const items = await resolveSetItems(ctx, set.data).catch(() => null);
      if (items) await ctx.vmm.leaveAcquireLine(waiterOf(job, 0), [...new Set(items.flatMap((item) => withEveryFallback(ctx, item)))]);
      return;
    }
    const parsed = acquireRequestSchema.safeParse(job.data);
    if (!parsed.success) return;
    let groups: string[];
    try {
      groups = await resolveRequestGroups(ctx, parsed.data);
    } catch {
      return;
    }
    // With every fallback, blocked or not: the request may have joined their lines.
    await ctx.vmm.leaveAcquireLine(waiterOf(job, 0), withEveryFallback(ctx, groups));
  },
};
