import type { JobsOptions } from 'bullmq';
import { z } from 'zod';
import { QueueNames } from './names.js';

export const ACQUIRE_QUEUE = QueueNames.ACQUIRE;

const text = (max: number) => z.string().min(1).max(max);

/** A builder's request for a VM. Either groups (tried in order) or an arch (its groups, in config order). */
export const acquireRequestSchema = z
  .strictObject({
    owner: text(255),
    sandbox: z.string().max(1024),
    groups: z.array(z.number().int().nonnegative()).min(1).optional(),
    arch: text(64).optional(),
    taskId: text(255).optional(),
    buildId: text(255).optional(),
    chroot: text(255).optional(),
    /** How long the request may wait for a VM, in milliseconds. */
    timeoutMs: z.number().int().positive().max(24 * 3600 * 1000).optional(),
  })
  .refine((r) => (r.groups === undefined) !== (r.arch === undefined), {
    message: 'exactly one of groups or arch',
    path: ['groups'],
  });
export type AcquireRequestData = z.input<typeof acquireRequestSchema>;

/** The VM assignment: the completed acquire job's return value. */
export interface VmAssignment {
  vmName: string;
  vmIp: string;
  group: number;
  leaseId: string;
  leaseExpiresAt: number;
  /**
   * When the acquire job that made this assignment was enqueued (its BullMQ timestamp, epoch ms).
   * A client that finds the same value as its own add knows the result is fresh, not that of an
   * earlier request of the same task.
   */
  requestedAt?: number;
}

export const DEFAULT_ACQUIRE_TIMEOUT_MS = 10 * 60 * 1000;

/** A failed acquire job's failedReason starts with this when no VM came within the timeout. */
export const NO_VM_AVAILABLE_PREFIX = 'NoVmAvailable:';

export const acquireJobOptions: JobsOptions = {
  attempts: 1,
  // Finished acquire jobs stay readable long enough for a restarted builder to reattach.
  removeOnComplete: { age: 24 * 3600, count: 50_000 },
  removeOnFail: { age: 24 * 3600, count: 50_000 },
};
