import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { ZodType } from 'zod';
import type { Config } from '../config/index.js';
import { configSecrets } from '../config/redaction.js';
import type { HealthCheck } from '../health/types.js';
import type { HealthCheckDeps } from '../health/index.js';
import { createLogger, type Logger } from '../logger.js';
import { VmManager, type Clock } from '../pool/vmManager.js';
import type { Provider, ProviderDeps, ProviderGroup } from '../providers/types.js';
import { assertPrefixFits, createProducerConnection, createWorkerConnection } from '../redis.js';
import type { QueueName } from '../../queues/names.js';
import { QueueSet } from '../../queues/queueSet.js';
import type { JobContext } from './context.js';
import type { FaultPoint } from './settings.js';
import { formatZodError } from '../validation.js';
import { recordJobMetrics, type JobOutcome } from '../metrics/shared.js';

export type ProviderFactory = (group: ProviderGroup, deps: ProviderDeps) => Provider;
export type HealthCheckFactory = (group: ProviderGroup, deps: HealthCheckDeps) => HealthCheck;

export interface JobContextOptions {
  logger?: Logger;
  clock?: Clock;
  /** Overrides config.redis.prefix. */
  prefix?: string;
  providerFactory: ProviderFactory;
  healthCheckFactory: HealthCheckFactory;
  /** Tests only (VMPOOL_FAULT): see JobContext.faultPoint. */
  faultPoint?: FaultPoint;
}

export interface OwnedJobContext extends JobContext {
  close(): Promise<void>;
}

export function createJobContext(config: Config, options: JobContextOptions): OwnedJobContext {
  const logger = options.logger ?? createLogger('vmpool');
  const clock = options.clock ?? Date.now;
  const prefix = options.prefix ?? config.redis.prefix;
  // On a Cluster the prefix needs a hash tag: refused before any connection is opened.
  assertPrefixFits(config.redis, prefix);
  const connection = createProducerConnection(config.redis);
  connection.on('error', (err) => logger.warn({ err: err.message }, 'Redis connection error'));
  const queues = new QueueSet(connection, prefix, (err, name) => logger.warn({ err: err.message, queue: name }, 'queue error'));
  const vmm = new VmManager(config, { redis: connection, prefix, logger, clock, queues });
  // Masked in every hook output that is logged or kept.
  const secrets = configSecrets(config);
  const providers = new Map<string, Provider>();
  const checks = new Map<string, HealthCheck>();
  const providerGroup = (group: string): ProviderGroup => vmm.providerGroup(group);
  const provider = (group: string): Provider => {
    let p = providers.get(group);
    if (!p) {
      p = options.providerFactory(providerGroup(group), { logger, secrets });
      providers.set(group, p);
    }
    return p;
  };
  return {
    config,
    vmm,
    logger,
    prefix,
    clock,
    connection,
    workerId: `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`,
    ...(options.faultPoint ? { faultPoint: options.faultPoint } : {}),
    queue: (name) => queues.get(name),
    provider,
    healthCheck(group) {
      let c = checks.get(group);
      if (!c) {
        // The `provider` check asks the group's provider itself.
        // accept-new host keys are kept beside the VM records (vmm.rememberHostKey).
        c = options.healthCheckFactory(providerGroup(group), { logger, secrets, provider: provider(group), hostKeys: vmm });
        checks.set(group, c);
      }
      return c;
    },
    async close() {
      await queues.close();
      await vmm.close();
      await connection.quit().catch(() => connection.disconnect());
    },
  };
}

/** How one queue's jobs are processed: the payload schema and the processor. */
export interface ProcessorSpec<Data, Result> {
  queue: QueueName;
  schema: ZodType<Data>;
  process(job: Job, data: Data, ctx: JobContext): Promise<Result>;
  /**
   * Runs once a job has failed for good, also when the processor never saw the last attempt (a job
   * that stalled more than jobs.max_stalled_count times: its processes crashed), so that what the
   * job held in the pool is given back.
   */
  onFinalFailure?(job: Job, ctx: JobContext): Promise<void>;
  /**
   * BullMQ lock and stalled-check periods (ms) for this queue, when they should follow something
   * other than config.jobs (reconcile: its cycle period, so a dead replica's cycle comes back soon).
   */
  lockTimings?(config: Config): { lockDuration: number; stalledInterval: number };
}

export interface RunningWorker {
  queue: QueueName;
  worker: Worker;
  /** Stops taking jobs and waits for active ones; after the deadline, lets them go to stalled recovery. */
  close(deadlineMs: number): Promise<void>;
}

/**
 * Starts a BullMQ worker with its own blocking connection. A payload that fails its schema fails
 * the job at once (no retry) with the reason, and the processor never sees it.
 */
export function runWorker<Data, Result>(
  ctx: OwnedJobContext,
  spec: ProcessorSpec<Data, Result>,
  concurrency: number,
): RunningWorker {
  const log = ctx.logger.child({ queue: spec.queue });
  const connection = createWorkerConnection(ctx.config.redis);
  connection.on('error', (err) => log.warn({ err: err.message }, 'Redis connection error'));
  const worker = new Worker(
    spec.queue,
    async (job: Job) => {
      const parsed = spec.schema.safeParse(job.data);
      if (!parsed.success) {
        throw new UnrecoverableError(`invalid ${spec.queue} payload: ${formatZodError(parsed.error)}`);
      }
      return spec.process(job, parsed.data, ctx);
    },
    {
      connection,
      prefix: ctx.prefix,
      concurrency,
      name: ctx.workerId,
      // A dead process's active jobs come back to waiting once their lock lapses.
      ...(spec.lockTimings?.(ctx.config) ?? { lockDuration: ctx.config.jobs.lock_duration * 1000, stalledInterval: ctx.config.jobs.stalled_interval * 1000 }),
      maxStalledCount: ctx.config.jobs.max_stalled_count,
    },
  );
  worker.on('failed', (job, err) => {
    log.warn({ jobId: job?.id, attempt: job?.attemptsMade, err: err.message }, 'job failed');
    if (job) recordMetrics(job, 'failed', { error: err });
    // finishedOn is set only when the job will not be retried.
    if (job?.finishedOn && spec.onFinalFailure) {
      spec.onFinalFailure(job, ctx).catch((e: Error) => log.warn({ jobId: job.id, err: e.message }, 'could not clean up after a failed job'));
    }
  });
  // Cluster-wide job metrics live in Redis, so any web replica reports every worker's share.
  const recordMetrics = (job: Job, outcome: JobOutcome, detail: { result?: unknown; error?: Error }) => {
    recordJobMetrics(ctx.connection, ctx.prefix, spec.queue, job, outcome, { ...detail, now: ctx.clock() }).catch((err: Error) =>
      log.warn({ err: err.message, jobId: job.id }, 'could not record job metrics'),
    );
  };
  worker.on('completed', (job, result) => recordMetrics(job, 'completed', { result }));
  worker.on('error', (err) => log.error({ err: err.message }, 'worker error'));
  return {
    queue: spec.queue,
    worker,
    async close(deadlineMs) {
      // Closing a worker whose connections are still initializing ends in an unhandled 'error' from
      // BullMQ (a crash on SIGTERM just after start): let them finish first, bounded for a Redis away.
      let readyTimer: NodeJS.Timeout | undefined;
      await Promise.race([
        worker.waitUntilReady().then(
          () => undefined,
          () => undefined,
        ),
        new Promise<void>((resolve) => {
          readyTimer = setTimeout(resolve, Math.min(2_000, deadlineMs));
        }),
      ]);
      clearTimeout(readyTimer);
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<'deadline'>((resolve) => {
        timer = setTimeout(() => resolve('deadline'), deadlineMs);
      });
      const outcome = await Promise.race([worker.close().then(() => 'closed' as const), deadline]);
      clearTimeout(timer);
      if (outcome === 'deadline') {
        log.warn({ deadlineMs }, 'active jobs did not finish before the deadline; leaving them to stalled-job recovery');
        await worker.close(true);
      }
      await connection.quit().catch(() => connection.disconnect());
    },
  };
}
