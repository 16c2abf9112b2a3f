import { UnrecoverableError, type Job, type Queue } from 'bullmq';
import type { Config } from '../config/index.js';
import type { JobContext } from '../runtime/context.js';
import { formatZodError } from '../validation.js';
import type { ProcessorSpec } from '../runtime/worker.js';
import { RECONCILE_JOB_NAME, RECONCILE_QUEUE, reconcileJobSchema, upsertReconcileScheduler } from '../../queues/reconcile.js';
import { VmMaster, type CycleReport } from '../reconcile/vmMaster.js';
import type { PoolStateEvent } from '../runtime/poolStateWatch.js';

export { RECONCILE_JOB_NAME };

/**
 * One VmMaster per process (per job context), kept across cycles: it carries when the process
 * started (which launch config wins, rollout.ts) and what it logged once.
 */
const masters = new WeakMap<JobContext, VmMaster>();

function masterOf(ctx: JobContext): VmMaster {
  let master = masters.get(ctx);
  if (!master) {
    master = new VmMaster(ctx.vmm, {
      queue: (name) => ctx.queue(name),
      provider: (group) => ctx.provider(group),
      cycleLockTtlMs: reconcileLockMs(ctx.config),
    });
    masters.set(ctx, master);
  }
  return master;
}

/** Runs one reconcile cycle for a vm-reconcile job. */
export async function processReconcileJob(job: Job, ctx: JobContext): Promise<CycleReport> {
  const parsed = reconcileJobSchema.safeParse(job.data ?? {});
  if (!parsed.success) throw new UnrecoverableError(`invalid ${RECONCILE_QUEUE} payload: ${formatZodError(parsed.error)}`);
  const master = masterOf(ctx);
  // A cycle is a periodic path: it checks the pool's state first (a loss is recovered before it runs).
  await ctx.poolState?.check('cycle');
  await ctx.vmm.writeAuditRetention();
  const report = await master.doCycle();
  if (!report.ran) await job.log('another reconcile cycle held the lock; nothing done');
  return report;
}

/**
 * How long a reconcile replica's hold on a cycle lasts without renewal (the cycle lock and the
 * BullMQ job lock, both renewed while the cycle runs): one cycle period, at least 1 s. A replica
 * killed mid-cycle loses both within a period, and with the stalled check every half period the
 * next cycle runs within two periods.
 */
export function reconcileLockMs(config: Pick<Config, 'vm_cycle_timeout'>): number {
  return Math.max(1_000, Math.round(config.vm_cycle_timeout * 1000));
}

/** The vm-reconcile processor in the worker runtime's shape. */
export const reconcileProcessor: ProcessorSpec<unknown, CycleReport> = {
  queue: RECONCILE_QUEUE,
  schema: reconcileJobSchema,
  process: (job, _data, ctx) => processReconcileJob(job, ctx),
  lockTimings: (config) => ({ lockDuration: reconcileLockMs(config), stalledInterval: Math.max(500, Math.round(reconcileLockMs(config) / 2)) }),
};

/**
 * Sets up the reconcile schedule: one job every vm_cycle_timeout, and a global concurrency of 1 on
 * the queue, so that however many reconcile workers run, only one job is active at a time. A worker
 * that dies mid-cycle leaves its job active until BullMQ's stalled-job check takes it back (within
 * about 1.5 periods, see reconcileLockMs); the cycle lock inside doCycle expires by then too. Idempotent: every replica may call it at start.
 */
export async function ensureReconcileScheduler(queue: Queue, config: Pick<Config, 'vm_cycle_timeout'>): Promise<void> {
  await queue.setGlobalConcurrency(1);
  await upsertReconcileScheduler(queue, Math.max(1, Math.round(config.vm_cycle_timeout * 1000)));
}

/**
 * Copr marks the server start when its daemon starts: VMs checked before it are not handed out
 * until checked again (reconcile checks them at once). Here many reconcile replicas come and go, so
 * a replica starting while cycles still run (one finished within three cycle periods) is not a
 * server start: marking then would hold back every ready VM on each rolling restart.
 */
export async function isServerStart(ctx: JobContext): Promise<boolean> {
  const [last] = await ctx.queue(RECONCILE_QUEUE).getJobs(['completed'], 0, 0, false);
  const finishedOn = last?.finishedOn;
  return finishedOn === undefined || ctx.clock() - finishedOn > 3 * ctx.config.vm_cycle_timeout * 1000;
}

/**
 * After the pool recovered from a loss of its state (or Redis restarted): the schedule may be gone
 * with the data, so it is set up again (idempotent). The recovery marked the server start itself.
 */
export async function afterPoolStateEvent(ctx: JobContext, event: PoolStateEvent): Promise<void> {
  await ensureReconcileScheduler(ctx.queue(RECONCILE_QUEUE), ctx.config);
  ctx.logger.info({ event: event.kind }, 'reconcile schedule set up again');
}

/** Before a reconcile worker starts: marks the server start when this is one, and sets up the schedule. */
export async function prepareReconcile(ctx: JobContext): Promise<void> {
  // VMs recorded before the due-time sets existed get into them (the scripts keep them from then on).
  const indexed = await ctx.vmm.backfillDueTimes();
  ctx.logger.debug({ indexed }, 'due-time sets backfilled');
  // VMs bound before owners' usage across groups was counted (or by an older acquire process
  // during a rolling upgrade) are counted from their group's resources.
  const counted = await ctx.vmm.backfillOwnerUsage();
  if (counted > 0) ctx.logger.info({ counted }, "owners' usage across groups: VMs bound before it was counted are counted now");
  if (await isServerStart(ctx)) await ctx.vmm.markServerStart();
  await ensureReconcileScheduler(ctx.queue(RECONCILE_QUEUE), ctx.config);
}
