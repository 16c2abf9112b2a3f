import { Job, type Queue } from 'bullmq';
import type { Logger } from '../logger.js';
import { TERMINATE_QUEUE, addTerminateJob, terminateJobId, type TerminationReason } from '../../queues/terminate.js';
import { HEALTH_QUEUE, addHealthJob } from '../../queues/health.js';
import { QueueNames, type QueueName } from '../../queues/names.js';
import type { QueueSet } from '../../queues/queueSet.js';

/**
 * The work the pool asks of its workers after a transition: health checks, terminations, and the
 * wake of parked acquire jobs. The queue handles are the process's (or the manager's own).
 */
export class PoolJobs {
  constructor(
    private readonly queues: QueueSet,
    private readonly logger: Logger,
  ) {}

  /** The process's handle of a vmpool queue. */
  queue(name: QueueName): Queue {
    return this.queues.get(name);
  }

  /** Asks for a health check of the VM (one pending check per VM). Reconcile's periodic check is the fallback. */
  async enqueueHealthCheck(vmName: string): Promise<void> {
    try {
      await addHealthJob(this.queue(HEALTH_QUEUE), vmName);
    } catch (err) {
      this.logger.error({ err, vmName }, 'could not enqueue health job; reconcile will check the VM later');
    }
  }

  /**
   * Enqueues the terminate job of a VM that a script moved to terminating. If this fails, the VM
   * stays terminating and reconcile's terminateAgain requests it again.
   */
  async enqueueTermination(vmName: string, terminatingSince: number, reason: TerminationReason): Promise<void> {
    try {
      await addTerminateJob(this.queue(TERMINATE_QUEUE), { vmName, reason }, terminateJobId(vmName, terminatingSince));
      this.logger.info({ vmName, reason }, 'VM termination requested');
    } catch (err) {
      this.logger.error({ err, vmName, reason }, 'could not enqueue terminate job; reconcile will request it again');
    }
  }

  /**
   * Wakes (promotes) the parked jobs of requests the acquire line gave a VM, so that they collect
   * it. A job that is not delayed (its own attempt runs, or it was never parked) collects its VM at
   * its attempt: that refusal is ignored, as is a job gone. A wake lost here is repaired by the
   * acquire processes' sweep (acquire_assigned).
   */
  wakeAcquireJobs(jobIds: readonly string[]): void {
    if (jobIds.length === 0) return;
    const queue = this.queue(QueueNames.ACQUIRE);
    // A bare Job handle: promote needs only the queue and the id (no read of the job first).
    for (const id of jobIds) void new Job(queue, 'acquire', {}, {}, id).promote().catch(() => undefined);
  }
}
