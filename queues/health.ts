import type { JobsOptions, Queue } from 'bullmq';
import { z } from 'zod';
import { VM_NAME_PATTERN } from '../src/pool/types.js';
import { QueueNames } from './names.js';

export const HEALTH_QUEUE = QueueNames.HEALTH;

export const healthJobSchema = z.strictObject({
  vmName: z.string().regex(VM_NAME_PATTERN, 'a VM name'),
});
export type HealthJobData = z.input<typeof healthJobSchema>;
export type HealthJobResult = { vmName: string; ok: boolean; outcome: string; detail: string };

/**
 * A failed check is a result, not a job failure, so there is one attempt. Deduplication keeps at
 * most one pending check per VM while finished ones stay visible.
 */
export const healthJobOptions: JobsOptions = {
  attempts: 1,
  removeOnComplete: { age: 3600, count: 5_000 },
  removeOnFail: { age: 24 * 3600, count: 5_000 },
};

export function healthJobDeduplicationId(vmName: string): string {
  return `health-${vmName}`;
}

/** How many health jobs one addBulk call adds (one MULTI each), so that a large cycle does not build one huge transaction. */
export const HEALTH_BULK_SIZE = 1000;

/** Adds health checks of the VMs in bulk (Queue.addBulk keeps the deduplication: none is added for a VM with one pending). */
export async function addHealthJobs(queue: Queue, vmNames: readonly string[]): Promise<void> {
  for (let i = 0; i < vmNames.length; i += HEALTH_BULK_SIZE) {
    const chunk = vmNames.slice(i, i + HEALTH_BULK_SIZE);
    await queue.addBulk(
      chunk.map((vmName) => ({ name: 'health', data: { vmName } satisfies HealthJobData, opts: { ...healthJobOptions, deduplication: { id: healthJobDeduplicationId(vmName) } } })),
    );
  }
}

/** Adds a health check of the VM, unless one is already pending for it. */
export async function addHealthJob(queue: Queue, vmName: string): Promise<void> {
  const data: HealthJobData = { vmName };
  await queue.add('health', data, { ...healthJobOptions, deduplication: { id: healthJobDeduplicationId(vmName) } });
}
