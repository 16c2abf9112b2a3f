import { randomUUID } from 'node:crypto';
import { Job, Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { createLogger, type Logger } from '../logger.js';
import { formatZodError } from '../validation.js';
import { PoolReader } from '../pool/poolReader.js';
import { PoolScripts } from '../pool/poolScripts.js';
import { InvalidVmRequest, LeaseLost, NoVmAvailable, VmDescriptorNotFound, VmError } from '../pool/types.js';
import type { Clock } from '../pool/vmManager.js';
import { blockingConnectionTemplate, producerConnectionFrom } from '../redis.js';
import {
  ACQUIRE_QUEUE,
  DEFAULT_ACQUIRE_TIMEOUT_MS,
  acquireJobError,
  acquireRequestSchema,
  addAcquireJob,
  noVmAvailableReason,
  type AcquireRequestData,
  type VmAssignment,
} from '../../queues/acquire.js';
import type { QueueName } from '../../queues/names.js';

export interface VmPoolClientOptions {
  /** An ioredis instance (shared, not closed by the client) or a Redis URL (owned and closed). */
  redis: Redis | string;
  /** Key prefix of the pool and its queues (the pool's redis.prefix). Default `vmpool`. */
  prefix?: string;
  /**
   * The process's queue handles on the same connection and prefix (a VmManager's `queue`), to add
   * acquire jobs to; not closed by the client. Without it, the client opens its own.
   */
  queue?: (name: QueueName) => Queue;
  logger?: Logger;
  clock?: Clock;
  /**
   * How long past the request's timeout the client still waits for a result (no acquire worker
   * running, a worker that crashed and awaits stalled-job recovery). Default 60 s.
   */
  graceMs?: number;
}

export interface AcquireOptions {
  /** BullMQ priority of the request: 0 (none) first, then 1 (highest) .. 2^21. */
  priority?: number;
  /**
   * Stops waiting when aborted: acquire() rejects at once with AcquireAborted, which names the
   * acquire job. The request itself stays queued until the caller withdraws it (the web process
   * does, with withdrawAcquireRequest) or its timeout passes.
   */
  signal?: AbortSignal;
}

/** acquire() stopped waiting because its signal aborted; the acquire job may still be queued or waiting. */
export class AcquireAborted extends VmError {
  constructor(readonly jobId: string) {
    super(`acquire ${jobId} stopped waiting: aborted by the caller`);
    this.name = 'AcquireAborted';
  }
}

export interface WithVmOptions extends AcquireOptions {
  /** Renew every this many ms; default a third of the time left on the lease. */
  renewEveryMs?: number;
}

/**
 * The acquire job id of a task: the same task always maps to the same job, so re-enqueueing is
 * idempotent and a restarted builder reattaches. BullMQ ids may not contain ':' nor be integers;
 * encodeURIComponent escapes ':' (and keeps distinct task ids distinct).
 */
export function acquireJobId(taskId?: string | null): string {
  return taskId ? `acquire-${encodeURIComponent(taskId)}` : `acquire-${randomUUID()}`;
}

/**
 * The promise, or the error of abort() once the signal aborts, whichever comes first. The promise
 * left behind may still reject (a wait's timeout): that rejection is expected and ignored.
 */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined, abort: () => Error): Promise<T> {
  if (!signal) return promise;
  promise.catch(() => undefined);
  if (signal.aborted) return Promise.reject(abort());
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(abort());
    signal.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([promise, aborted]).finally(() => signal.removeEventListener('abort', onAbort!));
}

/**
 * The builder's side of vmpool: acquire a VM through the vm-acquire queue, keep its lease alive,
 * release it. Needs only Redis and the prefix (no config): renew and release run the pool scripts.
 */
export class VmPoolClient {
  readonly redis: Redis;
  readonly prefix: string;
  private readonly ownsRedis: boolean;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly graceMs: number;
  private readonly reader: PoolReader;
  private readonly scripts: PoolScripts;
  private readonly sharedQueue: ((name: QueueName) => Queue) | undefined;
  /** The acquire queue handle the client opened itself (none while it uses a shared one). */
  private ownQueue: Queue | undefined;
  private events: Promise<QueueEvents> | undefined;

  constructor(options: VmPoolClientOptions) {
    ({ redis: this.redis, owned: this.ownsRedis } = producerConnectionFrom(options.redis));
    this.prefix = options.prefix ?? 'vmpool';
    this.logger = options.logger ?? createLogger('vmpool-client');
    this.clock = options.clock ?? Date.now;
    this.graceMs = options.graceMs ?? 60_000;
    this.reader = new PoolReader(this.redis, this.prefix);
    this.scripts = new PoolScripts(this.redis, this.prefix);
    this.sharedQueue = options.queue;
  }

  private getQueue(): Queue {
    if (this.sharedQueue) {
      const queue = this.sharedQueue(ACQUIRE_QUEUE);
      // Each pending acquire listens for the queue closing (waitUntilFinished).
      queue.setMaxListeners(0);
      return queue;
    }
    if (!this.ownQueue) {
      this.ownQueue = new Queue(ACQUIRE_QUEUE, { connection: this.redis, prefix: this.prefix });
      this.ownQueue.setMaxListeners(0);
      // Without a listener an 'error' event (Redis away) would be thrown and end the builder.
      this.ownQueue.on('error', (err) => this.logger.warn({ err: err.message }, 'acquire queue error'));
    }
    return this.ownQueue;
  }

  /**
   * QueueEvents reads the events stream from `lastEventId`. Left at '$', events between its start
   * and its first XREAD are lost (a fast job's completion, seen only at the 30 s fallback), so it
   * starts from the stream's last id read before any job of ours is added.
   */
  private getEvents(): Promise<QueueEvents> {
    if (this.events) return this.events;
    const pending = (async () => {
      const key = `${this.prefix}:${ACQUIRE_QUEUE}:events`;
      const last = (await this.redis.xrevrange(key, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
      // Its own blocking connection, made from ours with unlimited retries.
      const events = new QueueEvents(ACQUIRE_QUEUE, {
        connection: blockingConnectionTemplate(this.redis),
        prefix: this.prefix,
        lastEventId: last,
      });
      events.on('error', (err) => this.logger.warn({ err: err.message }, 'acquire events connection error'));
      return events;
    })();
    // A failed start (Redis away) is not kept: the next acquire tries again.
    pending.catch(() => {
      if (this.events === pending) this.events = undefined;
    });
    this.events = pending;
    return pending;
  }

  /**
   * Enqueues an acquire request and returns its assignment. With a taskId, a request already
   * enqueued for the task is joined (a restarted builder reattaches); a finished one whose VM is no
   * longer held, or a failed one, is replaced by a new request. Throws NoVmAvailable when no VM
   * came within the request's timeout, VmError for other failures.
   */
  async acquire(request: AcquireRequestData, options: AcquireOptions = {}): Promise<VmAssignment> {
    const parsed = acquireRequestSchema.safeParse(request);
    if (!parsed.success) throw new InvalidVmRequest(`invalid acquire request: ${formatZodError(parsed.error)}`);
    const data = parsed.data;
    const jobId = acquireJobId(data.taskId);
    if (options.signal?.aborted) throw new AcquireAborted(jobId);
    const queue = this.getQueue();
    const events = await this.getEvents();
    for (let round = 0; ; round += 1) {
      const timestamp = this.clock();
      const job = await addAcquireJob(queue, data, { jobId, timestamp, priority: options.priority });
      const deadline = timestamp + (data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS) + this.graceMs;
      const outcome = await this.waitForResult(job, events, deadline, data.taskId, options.signal);
      if (outcome.kind === 'completed') {
        // Our own request's result needs no check; an earlier request's VM may be gone since.
        if (outcome.assignment.requestedAt === timestamp || (await this.holds(outcome.assignment))) return outcome.assignment;
        // A finished request of an earlier run of this task, whose VM is gone: ask anew.
      } else if (outcome.job.timestamp === timestamp) {
        // Our own request failed: its job says why.
        throw acquireJobError(outcome.job);
      }
      if (round >= 2) throw new VmError(`acquire for task ${data.taskId} kept finding stale results of earlier requests`);
      this.logger.info({ jobId }, 'replacing a finished acquire request of an earlier run');
      await Job.fromId(queue, jobId)
        .then((j) => j?.remove())
        .catch(() => undefined);
    }
  }

  /**
   * Waits for the job's result: QueueEvents first, and on any doubt (waiter timeout, connection
   * trouble, job removed) the job's stored state and return value.
   */
  private async waitForResult(
    job: Job,
    events: QueueEvents,
    deadline: number,
    taskId: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ kind: 'completed'; assignment: VmAssignment } | { kind: 'failed'; job: Job }> {
    for (;;) {
      const left = deadline - this.clock();
      try {
        const finished = job.waitUntilFinished(events, Math.max(1_000, Math.min(left, 30_000)));
        const value = (await untilAborted(finished, signal, () => new AcquireAborted(String(job.id)))) as VmAssignment;
        return { kind: 'completed', assignment: value };
      } catch (err) {
        if (err instanceof AcquireAborted) throw err;
        // A failure, a waiter timeout or connection trouble: the stored job tells which.
        this.logger.debug({ jobId: job.id, err: (err as Error).message }, 'acquire wait ended without a result; reading the job');
        const stored = await Job.fromId(this.getQueue(), String(job.id));
        if (!stored) {
          // Removed (retention, an operator): the pool still knows which VM the task holds.
          const held = taskId ? await this.reader.leasedVmOfTask(taskId) : null;
          if (held) return { kind: 'completed', assignment: held };
          throw new VmError(`acquire job ${job.id} disappeared before it finished (${(err as Error).message})`);
        }
        const state = await stored.getState();
        if (state === 'completed') return { kind: 'completed', assignment: stored.returnvalue as VmAssignment };
        if (state === 'failed') return { kind: 'failed', job: stored };
        if (this.clock() >= deadline) {
          await stored.remove().catch(() => undefined);
          throw new NoVmAvailable(noVmAvailableReason(`acquire job ${job.id} not finished by its deadline (state ${state}; is an acquire worker running?)`));
        }
      }
    }
  }

  /** Whether the assignment's lease is still held (the VM is in_use under that lease). */
  async holds(assignment: VmAssignment): Promise<boolean> {
    return this.reader.holdsLease(assignment.vmName, assignment.leaseId);
  }

  /**
   * Extends the lease; returns the assignment with its new expiry. Throws LeaseLost when the lease
   * is no longer held (expired and reclaimed, released), VmDescriptorNotFound when the VM is gone.
   */
  async renew(assignment: VmAssignment): Promise<VmAssignment> {
    const leaseExpiresAt = await this.scripts.renewLease(assignment.vmName, assignment.leaseId, this.clock());
    return { ...assignment, leaseExpiresAt };
  }

  /**
   * Gives the VM back. Returns false, changing nothing, when the lease is no longer held (the VM
   * was reclaimed, released already, or is in use under another lease).
   */
  async release(assignment: VmAssignment): Promise<boolean> {
    let refusal: string;
    try {
      if (await this.scripts.releaseVm(assignment.vmName, this.clock(), assignment.leaseId)) return true;
      refusal = 'not_in_use';
    } catch (err) {
      if (!(err instanceof LeaseLost || err instanceof VmDescriptorNotFound)) throw err;
      refusal = err instanceof LeaseLost ? err.reason : 'not_found';
    }
    this.logger.warn({ vmName: assignment.vmName, leaseId: assignment.leaseId, refusal }, 'release refused: the lease is no longer held');
    return false;
  }

  /**
   * Acquires a VM, runs fn with it while renewing the lease, and always releases it. The signal
   * given to fn aborts when the lease is lost (fn should stop using the VM).
   */
  async withVm<T>(
    request: AcquireRequestData,
    fn: (assignment: VmAssignment, signal: AbortSignal) => Promise<T> | T,
    options: WithVmOptions = {},
  ): Promise<T> {
    let assignment = await this.acquire(request, options);
    const lost = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    const schedule = () => {
      if (stopped) return;
      const every = options.renewEveryMs ?? Math.max(50, Math.floor((assignment.leaseExpiresAt - this.clock()) / 3));
      timer = setTimeout(async () => {
        try {
          assignment = await this.renew(assignment);
        } catch (err) {
          if (err instanceof LeaseLost || err instanceof VmDescriptorNotFound) {
            this.logger.error({ vmName: assignment.vmName, err: (err as Error).message }, 'lease lost while the VM was in use');
            lost.abort(err);
            return;
          }
          this.logger.warn({ vmName: assignment.vmName, err: (err as Error).message }, 'lease renew failed; retrying');
        }
        schedule();
      }, every);
    };
    schedule();
    try {
      return await fn(assignment, lost.signal);
    } finally {
      stopped = true;
      clearTimeout(timer);
      await this.release(assignment).catch((err: Error) => this.logger.error({ vmName: assignment.vmName, err: err.message }, 'release failed'));
    }
  }

  async close(): Promise<void> {
    const events = this.events;
    this.events = undefined;
    if (events) await events.then((e) => e.close()).catch(() => undefined);
    await this.ownQueue?.close();
    this.ownQueue = undefined;
    if (this.ownsRedis) await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
