import { Job, type JobProgress, type Queue } from 'bullmq';
import type { Config } from '../config.js';
import { acquireWaiterMember, type VmManager } from '../pool/vmManager.js';
import { acquireRequestSchema } from '../../queues/acquire.js';
import { requestGroupIds } from './requestGroups.js';

/** What withdrawAcquireRequest found and did. */
export type Withdrawal =
  /** The job was gone, or had failed: nothing to do. */
  | 'gone'
  /** No acquire worker had taken it: removed from the queue. */
  | 'removed'
  /** An acquire worker waits with it: it left the line; the worker fails the job at its next wake. */
  | 'left_line'
  /**
   * It was served meanwhile. Its VM is left alone: another request of the same task may hold it;
   * if nobody does, its lease lapses (as for a builder that dropped its HTTP request).
   */
  | 'served';

/** The progress of a withdrawn acquire job: when its requester gave up (epoch ms). */
interface WithdrawnProgress {
  withdrawnAt: number;
}

/** Whether an acquire job's progress marks it withdrawn (withdrawAcquireRequest). */
export function isWithdrawnProgress(progress: JobProgress | undefined): boolean {
  return typeof progress === 'object' && progress !== null && typeof (progress as Partial<WithdrawnProgress>).withdrawnAt === 'number';
}

/**
 * Withdraws an acquire request whose requester went away (the web process stopping):
 * - the job is marked withdrawn (its progress), so that an acquire worker that has it, or takes it
 *   later (a stopping worker handed it back to the queue meanwhile), fails it instead of trying;
 * - a job no worker has taken yet is removed;
 * - a job a worker waits with leaves the line at once (VmManager.leaveAcquireQueue, as a request
 *   that timed out), so it holds back no request behind it and no longer counts as demand; its
 *   worker fails it when it next wakes.
 */
export async function withdrawAcquireRequest(queue: Queue, vmm: VmManager, config: Pick<Config, 'groups'>, jobId: string): Promise<Withdrawal> {
  const job = await Job.fromId(queue, jobId);
  if (!job) return 'gone';
  let state = await job.getState();
  if (state === 'completed') return 'served';
  if (state === 'failed' || state === 'unknown') return 'gone';
  await job.updateProgress({ withdrawnAt: vmm.clock() } satisfies WithdrawnProgress);
  if (state !== 'active') {
    // Fails (the job is locked) when a worker took it in the meantime.
    const removed = await job.remove().then(
      () => true,
      () => false,
    );
    if (removed) return 'removed';
    state = await job.getState();
    if (state === 'completed') return 'served';
  }
  const parsed = acquireRequestSchema.safeParse(job.data);
  let groups: number[];
  try {
    if (!parsed.success) return 'gone';
    groups = requestGroupIds(config.groups, parsed.data);
  } catch {
    return 'gone';
  }
  await vmm.leaveAcquireQueue({ member: acquireWaiterMember(job.timestamp, jobId), priority: job.opts.priority ?? 0, deadline: 0, jobId }, groups);
  return 'left_line';
}
