import type { JobsOptions } from 'bullmq';
import { z } from 'zod';
import { QueueNames } from './names.js';

export const RECONCILE_QUEUE = QueueNames.RECONCILE;
export const RECONCILE_SCHEDULER_ID = 'reconcile-cycle';

export const reconcileJobSchema = z.strictObject({}).default({});
export type ReconcileJobData = z.input<typeof reconcileJobSchema>;

export const reconcileJobOptions: JobsOptions = {
  attempts: 1,
  removeOnComplete: { age: 3600, count: 1_000 },
  removeOnFail: { age: 24 * 3600, count: 1_000 },
};
