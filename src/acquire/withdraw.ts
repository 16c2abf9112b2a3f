import { Job, type JobProgress, type Queue } from 'bullmq';
import type { Config } from '../config.js';
import { acquireWaiterMember, type VmManager } from '../pool/vmManager.js';
import { acquireRequestSchema } from '../../queues/acquire.js';
import { RequestGroupsError, requestGroupIds } from './requestGroups.js';

/** What withdrawAcquireRequest found and did. */
export type Withdrawal =
  /** The job was gone, or had failed: nothing to do. */
  | 'gone'
  /** No acquire worker had taken it: removed from the queue. */
  | 'removed'
  /** An acquire worker holds it: it left the line, marked withdrawn; a worker fails it (see below). */
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
 * - it leaves the line at once (VmManager.leaveAcquireLine, as a request that timed out), so it
 *   holds back no request behind it and no longer counts as demand;
 * - a job no worker holds is removed; one a worker waits with is failed by that worker when it
 *   next wakes (or, if it is stopping, when the next worker takes it).
 */
export async function withdrawAcquireRequest(queue: Queue, vmm: VmManager, config: Pick<Config, 'groups'>, jobId: string): Promise<Withdrawal> {
  const job = await Job.fromId(queue, jobId);
  if (!job) return 'gone';
  const finished = async (): Promise<Withdrawal | 'active' | 'queued'> => {
    const state = await job.getState();
    if (state === 'completed') return 'served';
    if (state === 'failed' || state === 'unknown') return 'gone';
    return state === 'active' ? 'active' : 'queued';
  };
  const first = await finished();
  if (first !== 'active' && first !== 'queued') return first;
  await job.updateProgress({ withdrawnAt: vmm.clock() } satisfies WithdrawnProgress);
  const parsed = acquireRequestSchema.safeParse(job.data);
  try {
    const groups = parsed.success ? requestGroupIds(config.groups, parsed.data) : [];
    const waiter = { member: acquireWaiterMember(job.timestamp, jobId), priority: job.opts.priority ?? 0, deadline: 0, jobId };
    if (groups.length) await vmm.leaveAcquireLine(waiter, groups);
  } catch (err) {
    if (!(err instanceof RequestGroupsError)) throw err;
  }
  // A worker may take the job, or a stopping one hand it back, while this runs: look twice.
  for (let look = 0; look < 2; look += 1) {
    const state = await finished();
    if (state !== 'queued') return state === 'active' ? 'left_line' : state;
    // Fails (the job is locked) when a worker took it in the meantime.
    if (await job.remove().then(() => true, () => false)) return 'removed';
  }
  return 'left_line';
}
