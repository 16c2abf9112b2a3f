import { Job, Queue, QueueEvents } from 'bullmq';
import { createLogger, type Logger } from '../logger.js';
import { formatZodError } from '../validation.js';
import { LineRequests } from '../pool/acquireLine.js';
import { PoolAccess, type Clock } from '../pool/context.js';
import { Leases } from '../pool/leases.js';
import { releaseOutcomeOf, type ReleaseOptions } from '../pool/autohold.js';
import { DATA_FORMAT_VERSION, DataFormatTooNew, newerThan } from '../pool/dataFormatVersion.js';
import { InvalidVmRequest, LeaseLost, NoVmAvailable, TaskConflict, VmDescriptorNotFound, VmError, acquireWaiterMember } from '../pool/types.js';
import { assertPrefixFits, blockingConnectionTemplate, producerConnectionFrom, type RedisConnection, type RedisTarget, type ReplicaWait } from '../redis.js';
import {
  ACQUIRE_QUEUE,
  DEFAULT_ACQUIRE_TIMEOUT_MS,
  acquireEventsStreamKey,
  acquireJobError,
  acquireJobId,
  acquireRequestSchema,
  acquireSetRequestId,
  acquireSetRequestSchema,
  addAcquireJob,
  addAcquireSetJob,
  noVmAvailableReason,
  type AcquireRequestData,
  type AcquireSetRequestData,
  type VmAssignment,
  type VmSetAssignment,
} from '../../queues/acquire.js';
import type { QueueName } from '../../queues/names.js';
import type { GroupConfig } from '../config/index.js';
import { requestGroupIds } from '../acquire/requestGroups.js';

export interface VmPoolClientOptions {
  /**
   * An ioredis instance, Redis or Cluster (shared, not closed by the client), or where Redis is (owned
   * and closed): a URL (redis://, redis+cluster://, redis+sentinel://) or a config's redis section.
   */
  redis: RedisConnection | RedisTarget;
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
  /**
   * A release is answered only once this many replicas have it (the pool's redis.wait_replicas and
   * wait_timeout; replicaWaitOf(config.redis) gives it). Default: no wait.
   */
  waitReplicas?: ReplicaWait;
  /**
   * The pool's groups (its config's `groups`). With them, a request whose owner has its group's
   * max_waiting_per_owner requests waiting already is refused (TooManyWaiting) before anything is
   * enqueued; without them, the acquire worker refuses it when it would wait.
   */
  groups?: readonly GroupConfig[];
}

export interface AcquireOptions {
  /** BullMQ priority of the request: 0 (none) first, then 1 (highest) .. 2^21. */
  priority?: number;
  /**
   * Aborting withdraws the request: it leaves the line and its job fails as cancelled (its
   * failedReason `cancelled: <the abort reason>`), so that no VM is assigned to it later; a VM
   * assigned meanwhile is released. acquire then rejects with the signal's reason; or, when the
   * pool refused the withdrawal because its data format is past this package's, at once with
   * DataFormatTooNew (the request was left waiting: upgrade the package).
   */
  signal?: AbortSignal;
}

/** acquire() was aborted by its signal (without an Error reason of its own): its request was withdrawn. */
export class AcquireAborted extends VmError {
  constructor(readonly jobId: string) {
    super(`acquire ${jobId} aborted by the caller; its request was withdrawn`);
    this.name = 'AcquireAborted';
  }
}

/** How long an aborted acquire waits for its job to end (cancelled, or served just before). */
const ABORT_SETTLE_MS = 5_000;
/** How long a withdrawal is kept for a job still queued (no acquire worker free): the job retention. */
const CANCEL_KEEP_MS = 24 * 3600 * 1000;

/** The text of an abort reason, for the cancelled job's failedReason. */
function abortReasonText(reason: unknown): string {
  if (typeof reason === 'string' && reason !== '') return reason;
  if (reason instanceof Error && reason.name !== 'AbortError' && reason.message) return reason.message;
  return 'the caller aborted the request';
}

/**
 * Whether an error means that Redis did not answer (restarting, failing over, loading its data, a
 * blip): the client waits and tries again rather than failing an acquire that is in progress.
 */
export function isRedisUnavailable(err: unknown): boolean {
  if (!(err instanceof Error) || err instanceof VmError) return false;
  if (err.name === 'MaxRetriesPerRequestError') return true;
  return /Connection is closed|ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|Stream isn't writeable|enableOfflineQueue|^LOADING|^READONLY|^MASTERDOWN|^TRYAGAIN|^CLUSTERDOWN|^NOREPLICAS|Socket closed/.test(err.message);
}

/** How a wait for a job's events ended: its completion's return value, or a reason to read the job. */
type FinishedEvent<R> = { result: R } | 'finished' | 'timeout' | 'stopped';

/** How an acquire job (one VM, or a set) ended: its return value, or the job that failed or was withdrawn. */
type JobOutcome<R> = { kind: 'completed'; result: R } | { kind: 'failed' | 'withdrawn'; job: Job };

/**
 * What the client's wait needs to know of a kind of request (one VM, or a set): how to add its
 * job, whether a result of an earlier run is still held, how to give it back, and what the pool
 * knows of it once its job is gone from Redis.
 */
interface RequestKind<R extends { requestedAt?: number }> {
  /** `acquire` or `acquire set`, for messages. */
  what: string;
  jobId: string;
  owner: string;
  sandbox: string;
  timeoutMs: number;
  /** Adds the job (idempotent: the same id) stamped with `timestamp`. */
  add(queue: Queue, timestamp: number): Promise<Job>;
  /** The error for a job of this id that another sandbox of the owner asked for. */
  conflict(): VmError;
  /** Whether every VM of the result is still held under its lease. */
  held(result: R): Promise<boolean>;
  /** Gives back the VMs of a result that nobody will use (the caller aborted). */
  giveBack(result: R): Promise<void>;
  /** The pool's answer for a job gone from Redis (retention, an operator), or null. */
  whenGone(): Promise<R | null>;
}

/** How long the client waits before asking Redis again after it did not answer. */
const REDIS_RETRY_MS = 500;

/** Whether a stored acquire job is a request of this owner and sandbox. */
function sameRequester(job: Job, data: { owner: string; sandbox: string }): boolean {
  const stored = job.data as Partial<AcquireRequestData> | undefined;
  return stored?.owner === data.owner && stored?.sandbox === data.sandbox;
}

export interface WithVmOptions extends AcquireOptions {
  /** Renew every this many ms; default a third of the time left on the lease. */
  renewEveryMs?: number;
}

/** withVmSet's options: withVm's; the renewal period is per set (every lease is renewed at once). */
export type WithVmSetOptions = WithVmOptions;

/**
 * A set request id of this owner belongs to another of its sandboxes: its job was asked for there.
 * Request ids are per owner, like task ids (HTTP: 409 task_conflict).
 */
export class SetRequestConflict extends TaskConflict {
  constructor(readonly requestId: string) {
    super(requestId);
    this.message = `set request ${JSON.stringify(requestId)} belongs to another sandbox of its owner; use another requestId`;
    this.name = 'SetRequestConflict';
  }
}

/** Public with the client (its home is queues/acquire.ts). */
export { acquireJobId };

/**
 * The builder's side of vmpool: acquire a VM through the vm-acquire queue, keep its lease alive,
 * release it. Needs only Redis and the prefix (no config): renew and release are the pool's lease
 * module (src/pool/leases.ts), as VmManager's are.
 */
export class VmPoolClient {
  readonly redis: RedisConnection;
  readonly prefix: string;
  private readonly ownsRedis: boolean;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly graceMs: number;
  private readonly pool: PoolAccess;
  private readonly leases: Leases;
  private readonly line: LineRequests;
  private readonly sharedQueue: ((name: QueueName) => Queue) | undefined;
  private readonly groups: readonly GroupConfig[] | undefined;
  /** The acquire queue handle the client opened itself (none while it uses a shared one). */
  private ownQueue: Queue | undefined;
  private events: Promise<QueueEvents> | undefined;

  constructor(options: VmPoolClientOptions) {
    this.prefix = options.prefix ?? 'vmpool';
    // On a Cluster the prefix needs a hash tag; refused before any connection is opened.
    assertPrefixFits(options.redis, this.prefix);
    ({ redis: this.redis, owned: this.ownsRedis } = producerConnectionFrom(options.redis));
    this.logger = options.logger ?? createLogger('vmpool-client');
    this.clock = options.clock ?? Date.now;
    this.graceMs = options.graceMs ?? 60_000;
    this.pool = new PoolAccess(this.redis, this.prefix);
    this.leases = new Leases(this.pool, this.clock, options.waitReplicas);
    this.line = new LineRequests(this.pool, this.clock);
    this.sharedQueue = options.queue;
    this.groups = options.groups;
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
      const key = acquireEventsStreamKey(this.prefix);
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
   * longer held, or a failed one, is replaced by a new request. A task belongs to one owner and
   * sandbox: while it holds a VM or has a request waiting for another, acquire throws TaskConflict
   * and learns nothing of theirs. Throws NoVmAvailable when no VM came within the request's
   * timeout, VmError for other failures; with `signal`, aborting withdraws the request
   * (AcquireOptions.signal).
   */
  async acquire(request: AcquireRequestData, options: AcquireOptions = {}): Promise<VmAssignment> {
    const parsed = acquireRequestSchema.safeParse(request);
    if (!parsed.success) throw new InvalidVmRequest(`invalid acquire request: ${formatZodError(parsed.error)}`);
    // With the config's groups, an index is resolved here, so that the job in Redis names its groups.
    const data = { ...parsed.data, groups: this.groupNames(parsed.data.groups) };
    if (data.groups === undefined) delete data.groups;
    const jobId = acquireJobId(data.taskId, data.owner);
    return this.runRequest<VmAssignment>(
      {
        what: 'acquire',
        jobId,
        owner: data.owner,
        sandbox: data.sandbox,
        timeoutMs: data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS,
        add: (queue, timestamp) => addAcquireJob(queue, data, { jobId, timestamp, priority: options.priority }),
        conflict: () => new TaskConflict(data.taskId ?? jobId),
        held: (assignment) => this.holds(assignment),
        giveBack: async (assignment) => {
          if (await this.holds(assignment)) await this.release(assignment);
        },
        whenGone: () => (data.taskId ? this.pool.reader.leasedVmOfTask(data.taskId, data) : Promise.resolve(null)),
      },
      options,
      this.groups ? (until) => this.whileRedisAway(() => this.refuseBeyondWaitingCap(data, jobId), until, options.signal) : undefined,
    );
  }

  /**
   * Enqueues a request for several VMs at once, all or nothing (an `acquire-set` job: it waits in
   * the acquire line as one request, holding no VM, and takes every VM in one step), and returns
   * every VM of the set, in the order asked, each under its own lease (renew them with renewAll,
   * release each). As acquire: with a requestId, a request already enqueued under it is joined (a
   * restarted builder reattaches, and gets the same VMs); a finished one of an earlier run whose VMs
   * are no longer all held, or a failed one, is replaced by a new request; a request id of the
   * owner asked for by another of its sandboxes throws SetRequestConflict. Throws NoVmAvailable
   * when the whole set did not come within its timeout, VmError for other failures; with `signal`,
   * aborting withdraws the request and gives back VMs served meanwhile.
   */
  async acquireSet(request: AcquireSetRequestData, options: AcquireOptions = {}): Promise<VmSetAssignment> {
    const parsed = acquireSetRequestSchema.safeParse(request);
    if (!parsed.success) throw new InvalidVmRequest(`invalid acquire-set request: ${formatZodError(parsed.error)}`);
    const vms = parsed.data.vms.map((item) => {
      const resolved = { ...item, groups: this.groupNames(item.groups) };
      if (resolved.groups === undefined) delete resolved.groups;
      return resolved;
    });
    const data = { ...parsed.data, vms };
    const jobId = acquireSetRequestId(data.owner, data.requestId);
    return this.runRequest<VmSetAssignment>(
      {
        what: 'acquire set',
        jobId,
        owner: data.owner,
        sandbox: data.sandbox,
        timeoutMs: data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS,
        add: (queue, timestamp) => addAcquireSetJob(queue, data, { jobId, timestamp, priority: options.priority }),
        conflict: () => new SetRequestConflict(data.requestId ?? jobId),
        held: async (set) => (await Promise.all(set.vms.map((a) => this.holds(a)))).every(Boolean),
        giveBack: async (set) => {
          await Promise.all(set.vms.map(async (a) => (await this.holds(a)) && this.release(a)));
        },
        // A set's VMs are not found by a task: a set job gone from Redis is not answered by the pool.
        whenGone: () => Promise.resolve(null),
      },
      options,
    );
  }

  /** Group indexes as names, with the config's groups (else as given). */
  private groupNames<G extends string | number>(groups: G[] | undefined): (G | string)[] | undefined {
    const config = this.groups;
    if (!config || !groups) return groups;
    return groups.map((g) => (typeof g === 'number' ? (config[g]?.name ?? g) : g));
  }

  /**
   * The wait of acquire and acquireSet: adds the request's job (idempotent under its id), reads back
   * the stored job (another sandbox's is never joined), waits for its result (waitForResult), and
   * replaces a finished job of an earlier run whose VMs are gone.
   */
  private async runRequest<R extends { requestedAt?: number }>(
    kind: RequestKind<R>,
    options: AcquireOptions,
    before?: (until: number) => Promise<void>,
  ): Promise<R> {
    const { signal } = options;
    signal?.throwIfAborted();
    const { jobId } = kind;
    const queue = this.getQueue();
    const start = this.clock();
    // Redis away at the start: tried again until the request's own deadline would have passed.
    const untilAtLatest = start + kind.timeoutMs + this.graceMs;
    // A pool a newer release migrated would serve the request, but this client could neither renew
    // nor release what it got (those writes are refused): refused before anything is enqueued.
    await this.whileRedisAway(() => this.refuseNewerDataFormat(kind.what), untilAtLatest, signal);
    if (before) await before(untilAtLatest);
    const events = await this.whileRedisAway(() => this.getEvents(), untilAtLatest, signal);
    for (let round = 0; ; round += 1) {
      const timestamp = this.clock();
      const deadline = timestamp + kind.timeoutMs + this.graceMs;
      // Add and read back are idempotent (same request, same job id): a Redis blip repeats them. No
      // claim before the add (it cost a round trip): the job id is the owner's request, so another
      // sandbox's request for it is that job, read back here; and the acquire script refuses and
      // claims the task atomically at the job's first attempt.
      const job = await this.whileRedisAway(
        async () => {
          const added = await kind.add(queue, timestamp);
          return (await Job.fromId(queue, jobId)) ?? added;
        },
        deadline,
        signal,
      );
      // An existing job of that id (another's request, added without a claim) is never joined.
      if (!sameRequester(job, kind)) throw kind.conflict();
      const outcome = await this.waitForResult<R>(job, events, deadline, kind, signal);
      if (signal?.aborted) {
        if (outcome.kind === 'completed') await kind.giveBack(outcome.result);
        // The caller's reason when it gave one (an Error), else AcquireAborted naming the job.
        throw signal.reason instanceof Error && signal.reason.name !== 'AbortError' ? signal.reason : new AcquireAborted(jobId);
      }
      if (outcome.kind === 'completed') {
        // Our own request's result needs no check; an earlier request's VMs may be gone since.
        if (outcome.result.requestedAt === timestamp || (await kind.held(outcome.result))) return outcome.result;
        // A finished request of an earlier run, whose VMs are gone: ask anew.
      } else if (outcome.job.timestamp === timestamp) {
        // Our own request failed: its job says why.
        throw acquireJobError(outcome.job);
      }
      if (round >= 2) throw new VmError(`${kind.what} ${jobId} kept finding stale results of earlier requests`);
      this.logger.info({ jobId }, `replacing a finished ${kind.what} request of an earlier run`);
      await Job.fromId(queue, jobId)
        .then((j) => j?.remove())
        .catch(() => undefined);
    }
  }

  /** Throws DataFormatTooNew when the pool's data format, or a migration in progress, is past this release's. */
  private async refuseNewerDataFormat(what: string): Promise<void> {
    const needed = newerThan(await this.pool.reader.recordedDataFormat(), DATA_FORMAT_VERSION);
    if (needed !== null) throw new DataFormatTooNew(needed, DATA_FORMAT_VERSION, `the ${what} request`);
  }

  /** max_waiting_per_owner, before enqueueing: in each group the request would wait in (an unknown one is the worker's to refuse). */
  private async refuseBeyondWaitingCap(data: AcquireRequestData, jobId: string): Promise<void> {
    const groups = this.groups!;
    let ids: string[];
    try {
      ids = requestGroupIds(groups, data);
    } catch {
      return;
    }
    await this.line.refuseBeyondWaitingCap(data.owner, ids.map((g) => ({ group: g, maxWaitingPerOwner: groups.find((c) => c.name === g)!.max_waiting_per_owner })), jobId);
  }

  /**
   * Runs fn, and again after a short pause while Redis does not answer (isRedisUnavailable), until
   * `until`; then, or for any other error, rejects with fn's error. Aborting stops the retries.
   */
  private async whileRedisAway<T>(fn: () => Promise<T>, until: number, signal?: AbortSignal): Promise<T> {
    for (let tries = 1; ; tries += 1) {
      try {
        return await fn();
      } catch (err) {
        if (!isRedisUnavailable(err) || this.clock() >= until || signal?.aborted) throw err;
        if (tries === 1) this.logger.warn({ err: (err as Error).message }, 'Redis did not answer; the acquire waits for it');
        await new Promise((r) => setTimeout(r, REDIS_RETRY_MS).unref());
      }
    }
  }

  /**
   * Resolves 'finished' when the events stream tells that the job completed or failed, 'timeout'
   * after ms, or 'stopped' once stop() is called. Never rejects. BullMQ's Job.waitUntilFinished is
   * not used: it reads Redis inside a promise executor, so a Redis blip there is an unhandled
   * rejection that ends the builder's process.
   */
  private finishedEvent<R>(events: QueueEvents, jobId: string, ms: number): { promise: Promise<FinishedEvent<R>>; stop(): void } {
    let settle!: (outcome: FinishedEvent<R>) => void;
    const promise = new Promise<FinishedEvent<R>>((resolve) => {
      settle = resolve;
    });
    // A completion carries the return value (the assignment, or the set's): no read of the job needed.
    const onCompleted = (args: { returnvalue?: unknown }) =>
      done(args?.returnvalue && typeof args.returnvalue === 'object' ? { result: args.returnvalue as R } : 'finished');
    const onEvent = () => done('finished');
    // Per-job events (`completed:<id>`) are emitted by QueueEvents but not in its typed listener map.
    const emitter = events as unknown as NodeJS.EventEmitter;
    const timer = setTimeout(() => done('timeout'), ms);
    const done = (outcome: FinishedEvent<R>) => {
      clearTimeout(timer);
      emitter.removeListener(`completed:${jobId}`, onCompleted);
      emitter.removeListener(`failed:${jobId}`, onEvent);
      settle(outcome);
    };
    emitter.on(`completed:${jobId}`, onCompleted);
    emitter.on(`failed:${jobId}`, onEvent);
    return { promise, stop: () => done('stopped') };
  }

  /**
   * Waits for the job's result: QueueEvents first, and on any doubt (waiter timeout, connection
   * trouble, job removed) the job's stored state and return value. When `signal` aborts, the
   * request is withdrawn (cancelAcquire) and the wait lasts at most ABORT_SETTLE_MS more: the job
   * ends as cancelled, or was served just before (the caller releases that VM); a job still queued
   * ends as cancelled when a worker takes it.
   */
  private async waitForResult<R>(
    job: Job,
    events: QueueEvents,
    deadline: number,
    kind: Pick<RequestKind<R & { requestedAt?: number }>, 'what' | 'whenGone'>,
    signal: AbortSignal | undefined,
  ): Promise<JobOutcome<R>> {
    const waiter = { member: acquireWaiterMember(job.timestamp, String(job.id)), jobId: String(job.id) };
    let withdrawn = false;
    // The withdrawal was refused: the pool's data format is past this release's (nothing changed).
    let refused: DataFormatTooNew | undefined;
    let onAbort: (() => void) | undefined;
    // Rejects once the aborted request was withdrawn and had ABORT_SETTLE_MS to end, or at once
    // when the withdrawal was refused (the request was left as it was).
    const stop = signal
      ? new Promise<never>((_, reject) => {
          onAbort = () => {
            void this.line
              .cancel(waiter, abortReasonText(signal.reason), CANCEL_KEEP_MS)
              .then(
                () => true,
                (err: Error) => {
                  if (err instanceof DataFormatTooNew) {
                    refused = err;
                    return false;
                  }
                  this.logger.warn({ jobId: job.id, err: err.message }, `withdrawing the ${kind.what} request failed`);
                  return true;
                },
              )
              .then(async (settle) => {
                if (!settle) {
                  reject(refused);
                  return;
                }
                // Queued (no acquire worker took it yet): removed at once, so that it neither waits
                // for a worker nor counts as demand. Parked in the line (delayed): woken, so that it
                // fails as cancelled now (a VM the line gave it meanwhile went back with the
                // withdrawal). Running: it fails as cancelled, or was served just before; settled
                // when it ended or at the bound.
                const until = Date.now() + ABORT_SETTLE_MS;
                let woken = false;
                for (;;) {
                  const state = await job.getState().catch(() => 'unknown');
                  if (['waiting', 'prioritized'].includes(state) && (await job.remove().then(() => true, () => false))) break;
                  if (state === 'delayed' && !woken) woken = await job.promote().then(() => true, () => false);
                  if (state === 'failed' || state === 'completed' || state === 'unknown' || Date.now() >= until) break;
                  await new Promise((r) => setTimeout(r, 100).unref());
                }
                withdrawn = true;
                reject(new Error(`${kind.what} request withdrawn`));
              });
          };
          if (signal.aborted) onAbort();
          else signal.addEventListener('abort', onAbort, { once: true });
        })
      : undefined;
    stop?.catch(() => undefined);
    const jobId = String(job.id);
    try {
      for (;;) {
        const left = deadline - this.clock();
        // Listening first, then reading the stored job: a result that came meanwhile is not missed.
        const event = this.finishedEvent<R>(events, jobId, Math.max(1_000, Math.min(left, 30_000)));
        let read: JobOutcome<R> | 'pending' | 'redis_away';
        try {
          read = await this.readResult<R>(job, kind, withdrawn);
        } catch (err) {
          if (!isRedisUnavailable(err)) {
            event.stop();
            throw err;
          }
          // Redis is away (restart, failover): the request lives on in Redis; ask again shortly.
          this.logger.debug({ jobId, err: (err as Error).message }, `Redis did not answer while the ${kind.what} waits`);
          read = 'redis_away';
        }
        if (read !== 'pending' && read !== 'redis_away') {
          event.stop();
          return read;
        }
        if (this.clock() >= deadline) {
          event.stop();
          if (read === 'redis_away') throw new VmError(`${kind.what} job ${jobId}: Redis did not answer until the request's deadline`);
          const state = await job.getState().catch(() => 'unknown');
          await job.remove().catch(() => undefined);
          throw new NoVmAvailable(noVmAvailableReason(`${kind.what} job ${jobId} not finished by its deadline (state ${state}; is an acquire worker running?)`));
        }
        if (read === 'redis_away') {
          setTimeout(() => event.stop(), REDIS_RETRY_MS).unref();
        }
        try {
          const outcome = await (stop ? Promise.race([event.promise, stop]) : event.promise);
          if (typeof outcome === 'object') return { kind: 'completed', result: outcome.result };
        } catch {
          event.stop();
          if (refused) throw refused;
          // Withdrawn and settled: the stored job tells how it ended.
        }
      }
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * The job's outcome as stored, or 'pending' while it waits. A job gone from Redis (retention, an
   * operator) is answered by the pool when it knows the result (a task that still holds its VM:
   * kind.whenGone). Redis errors are thrown.
   */
  private async readResult<R>(job: Job, kind: Pick<RequestKind<R & { requestedAt?: number }>, 'what' | 'whenGone'>, withdrawn: boolean): Promise<JobOutcome<R> | 'pending'> {
    // The state first: a job read before it is seen completed has its return value already.
    const state = await this.getQueue().getJobState(String(job.id));
    // Pending: nothing more to read (one round trip per wait).
    if (state !== 'unknown' && state !== 'completed' && state !== 'failed') return withdrawn ? { kind: 'withdrawn', job } : 'pending';
    const stored = state === 'unknown' ? undefined : await Job.fromId(this.getQueue(), String(job.id));
    if (!stored && withdrawn) return { kind: 'withdrawn', job };
    if (!stored) {
      const held = await kind.whenGone();
      if (held) return { kind: 'completed', result: held as R };
      throw new VmError(`${kind.what} job ${job.id} disappeared before it finished`);
    }
    if (state === 'completed') return { kind: 'completed', result: stored.returnvalue as R };
    if (state === 'failed') return { kind: 'failed', job: stored };
    // Withdrawn and settled: still queued, it ends as cancelled when a worker takes it.
    if (withdrawn) return { kind: 'withdrawn', job: stored };
    return 'pending';
  }

  /** Whether the assignment's lease is still held (the VM is in_use under that lease). */
  async holds(assignment: VmAssignment): Promise<boolean> {
    return this.leases.holds(assignment);
  }

  /**
   * Extends the lease; returns the assignment with its new expiry. Throws LeaseLost when the lease
   * is no longer held (expired and reclaimed, released; reason state_lost when it went with a loss
   * of the pool's state), VmDescriptorNotFound when the VM is gone, DataFormatTooNew (nothing
   * changed) when the pool's data format is past this package's: upgrade the package.
   */
  async renew(assignment: VmAssignment): Promise<VmAssignment> {
    return this.leases.renewHeld(assignment);
  }

  /**
   * Renews every lease of a set (POST /api/v1/acquire-set's `vms`, VmManager.acquireVmSet) in one
   * call; returns the assignments with their new expiries, in the same order. Every lease is
   * renewed even when one is gone; then the first LeaseLost (or VmDescriptorNotFound) is thrown.
   * DataFormatTooNew (nothing changed) when the pool's data format is past this package's.
   */
  async renewAll(assignments: readonly VmAssignment[]): Promise<VmAssignment[]> {
    const results = await Promise.allSettled(assignments.map((a) => this.leases.renewHeld(a)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return results.map((r) => (r as PromiseFulfilledResult<VmAssignment>).value);
  }

  /**
   * Gives the VM back. Returns false, changing nothing, when the lease is no longer held (the VM
   * was reclaimed, released already, or is in use under another lease). With `outcome: 'failed'`,
   * an autohold rule that matches keeps the VM for debugging instead of returning it to the pool.
   * Throws DataFormatTooNew, changing nothing, when the pool's data format is past this package's
   * (the VM stays in use until its lease runs out): upgrade the package.
   */
  async release(assignment: VmAssignment, options: ReleaseOptions = {}): Promise<boolean> {
    return this.leases.releaseHeld({ ...assignment, outcome: releaseOutcomeOf(options.outcome) }, this.logger);
  }

  /**
   * Acquires a VM, runs fn with it while renewing the lease, and always releases it: with outcome
   * `failed` when fn throws (an autohold rule may keep the VM for debugging), else without one. The
   * signal given to fn aborts when the lease is lost (fn should stop using the VM), or when the
   * pool refuses its renewal for a data format past this package's (reason DataFormatTooNew). A
   * release refused for that reason throws DataFormatTooNew unless fn threw.
   */
  async withVm<T>(
    request: AcquireRequestData,
    fn: (assignment: VmAssignment, signal: AbortSignal) => Promise<T> | T,
    options: WithVmOptions = {},
  ): Promise<T> {
    const assignment = await this.acquire(request, options);
    const renewing = this.keepRenewed(assignment, (a) => a.leaseExpiresAt, (a) => this.renew(a), assignment.vmName, options.renewEveryMs);
    let failed = false;
    try {
      return await fn(assignment, renewing.lost);
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      const last = renewing.stop();
      const outcome = failed ? ('failed' as const) : undefined;
      const refused = await this.releaseAfterUse([last], outcome);
      // fn's own error wins; else the builder learns that it must be upgraded.
      if (refused && !failed) throw refused;
    }
  }

  /**
   * Acquires several VMs at once (acquireSet), runs fn with them while renewing every lease
   * (renewAll), and always releases them all: with outcome `failed` when fn throws (an autohold
   * rule may keep them for debugging), else without one (as success). The signal given to fn
   * aborts when a lease of the set is lost (fn should stop using the VMs).
   */
  async withVmSet<T>(
    request: AcquireSetRequestData,
    fn: (set: VmSetAssignment, signal: AbortSignal) => Promise<T> | T,
    options: WithVmSetOptions = {},
  ): Promise<T> {
    const set = await this.acquireSet(request, options);
    const renewing = this.keepRenewed(
      set,
      (s) => Math.min(...s.vms.map((a) => a.leaseExpiresAt)),
      async (s) => ({ ...s, vms: await this.renewAll(s.vms) }),
      set.vms.map((a) => a.vmName).join(','),
      options.renewEveryMs,
    );
    let failed = false;
    try {
      return await fn(set, renewing.lost);
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      const last = renewing.stop();
      const outcome = failed ? ('failed' as const) : undefined;
      const refused = await this.releaseAfterUse(last.vms, outcome);
      if (refused && !failed) throw refused;
    }
  }

  /**
   * The release at the end of withVm and withVmSet: every VM, errors logged. Returns the
   * DataFormatTooNew of a release the pool refused for its data format (thrown to the caller), else null.
   */
  private async releaseAfterUse(assignments: readonly VmAssignment[], outcome: 'failed' | undefined): Promise<DataFormatTooNew | null> {
    const errors = await Promise.all(
      assignments.map((a) =>
        this.release(a, { outcome }).then(
          () => null,
          (err: Error) => {
            this.logger.error({ vmName: a.vmName, err: err.message }, 'release failed');
            return err;
          },
        ),
      ),
    );
    return errors.find((err): err is DataFormatTooNew => err instanceof DataFormatTooNew) ?? null;
  }

  /**
   * Renews `held` (a lease, or a set's leases) in the background until stopped: every
   * `everyMs`, else a third of the time left on the earliest lease. `lost` aborts (and renewing
   * ends) when a lease is lost, or when the pool refuses the renewal for its data format (no later
   * renewal would pass: the lease runs out); other errors are retried. stop() returns the latest
   * renewed value.
   */
  private keepRenewed<H>(
    held: H,
    expiresAt: (h: H) => number,
    renew: (h: H) => Promise<H>,
    vmNames: string,
    everyMs: number | undefined,
  ): { lost: AbortSignal; stop(): H } {
    let current = held;
    const lost = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    const schedule = () => {
      if (stopped) return;
      const every = everyMs ?? Math.max(50, Math.floor((expiresAt(current) - this.clock()) / 3));
      timer = setTimeout(async () => {
        try {
          current = await renew(current);
        } catch (err) {
          if (err instanceof LeaseLost || err instanceof VmDescriptorNotFound || err instanceof DataFormatTooNew) {
            this.logger.error({ vmName: vmNames, err: (err as Error).message }, err instanceof DataFormatTooNew ? 'lease renewal refused while the VM was in use' : 'lease lost while the VM was in use');
            lost.abort(err);
            return;
          }
          this.logger.warn({ vmName: vmNames, err: (err as Error).message }, 'lease renew failed; retrying');
        }
        schedule();
      }, every);
    };
    schedule();
    return {
      lost: lost.signal,
      stop() {
        stopped = true;
        clearTimeout(timer);
        return current;
      },
    };
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
