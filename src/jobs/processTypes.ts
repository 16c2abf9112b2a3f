import type { Config } from '../config.js';
import { acquireProcessor, stopAcquireWaits } from '../acquire/processor.js';
import { ensureReconcileScheduler, reconcileProcessor } from '../reconcile/processor.js';
import { RECONCILE_QUEUE } from '../../queues/reconcile.js';
import type { JobContext } from './context.js';
import type { ProcessorSpec } from './runtime.js';
import { healthProcessor } from './health.js';
import { spawnProcessor } from './spawn.js';
import { terminateProcessor } from './terminate.js';

/** Process types that run BullMQ workers (the Procfile adds `web`). */
export const WORKER_PROCESS_TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'] as const;
export type WorkerProcessType = (typeof WORKER_PROCESS_TYPES)[number];

export interface ProcessTypeSpec {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  processor: ProcessorSpec<any, unknown>;
  /** Where the concurrency comes from; without it the worker runs one job at a time. */
  concurrencyKey?: keyof Config['concurrency'];
  beforeStart?(ctx: JobContext): Promise<void>;
  /** Runs before the worker closes (for jobs that would otherwise wait until the deadline). */
  beforeStop?(ctx: JobContext): Promise<void>;
}

export const processTypeSpecs: Record<WorkerProcessType, ProcessTypeSpec> = {
  acquire: { processor: acquireProcessor, concurrencyKey: 'acquire', beforeStop: stopAcquireWaits },
  spawn: { processor: spawnProcessor, concurrencyKey: 'spawn' },
  health: { processor: healthProcessor, concurrencyKey: 'health' },
  terminate: { processor: terminateProcessor, concurrencyKey: 'terminate' },
  reconcile: {
    processor: reconcileProcessor,
    beforeStart: async (ctx) => {
      if (await isServerStart(ctx)) await ctx.vmm.markServerStart();
      await ensureReconcileScheduler(ctx.queue(RECONCILE_QUEUE), ctx.config);
    },
  },
};

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

export function isWorkerProcessType(value: string): value is WorkerProcessType {
  return (WORKER_PROCESS_TYPES as readonly string[]).includes(value);
}
