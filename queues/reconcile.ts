import type { JobsOptions, Queue } from 'bullmq';
import { z } from 'zod';
import { QueueNames } from './names.js';

export const RECONCILE_QUEUE = QueueNames.RECONCILE;
export const RECONCILE_SCHEDULER_ID = 'reconcile-cycle';
export const RECONCILE_JOB_NAME = 'reconcile';

export const reconcileJobSchema = z.strictObject({}).default({});
export type ReconcileJobData = z.input<typeof reconcileJobSchema>;

export const reconcileJobOptions: JobsOptions = {
  attempts: 1,
  removeOnComplete: { age: 3600, count: 1_000 },
  removeOnFail: { age: 24 * 3600, count: 1_000 },
};

/** Adds (or updates) the schedule that adds one reconcile job every `everyMs`. */
export async function upsertReconcileScheduler(queue: Queue, everyMs: number): Promise<void> {
  const data: ReconcileJobData = {};
  await queue.upsertJobScheduler(RECONCILE_SCHEDULER_ID, { every: everyMs }, { name: RECONCILE_JOB_NAME, data, opts: reconcileJobOptions });
}
