import { type Config } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { DataFormat, DataFormatTooNew, type DataFormatOptions } from '../pool/dataFormat.js';
import type { JobContext } from './context.js';
import { PoolStateWatch, poolStateCheckMs, type PoolStateEvent } from './poolStateWatch.js';
import type { ConcurrencyOverrides } from './settings.js';
import { createJobContext, runWorker, type OwnedJobContext, type RunningWorker, type JobContextOptions, type ProcessorSpec } from './worker.js';

/** How the workers of one process type run: its processor, its concurrency and what it does around start and stop. */
export interface ProcessTypeSpec {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  processor: ProcessorSpec<any, unknown>;
  /** Where the concurrency comes from; without it the worker runs one job at a time. */
  concurrencyKey?: keyof Config['concurrency'];
  beforeStart?(ctx: JobContext): Promise<void>;
  /**
   * Runs once the worker is closing (for jobs that would otherwise wait until the deadline), given
   * the stop's deadline (ms from now).
   */
  beforeStop?(ctx: JobContext, deadlineMs: number): Promise<void>;
  /** Runs after the pool recovered from a loss of its state in Redis, or Redis restarted (poolStateWatch.ts). */
  afterPoolStateEvent?(ctx: JobContext, event: PoolStateEvent): Promise<void>;
}

/** The process types a process can run, by name (src/processors/index.ts has the Procfile's). */
export type ProcessTypeRegistry<T extends string> = Readonly<Record<T, ProcessTypeSpec>>;

export interface BootOptions extends Partial<Pick<JobContextOptions, 'providerFactory' | 'healthCheckFactory' | 'clock' | 'prefix' | 'faultPoint'>> {
  logger?: Logger;
  /** <TYPE>_CONCURRENCY (Settings.concurrency); a type without one runs concurrency.<type> of the config. */
  concurrency?: ConcurrencyOverrides;
  /** The data format this process knows and its migrations (default: this release's; tests give their own). */
  dataFormat?: Pick<DataFormatOptions, 'known' | 'migrations' | 'lockTtlMs' | 'quiesceMs'>;
  /**
   * Called once the process stopped its workers because the pool's data format moved past its own
   * (another process of a newer release migrated it); a worker process exits then.
   */
  onRefused?: (err: DataFormatTooNew) => void;
}

export interface RunningProcess {
  ctx: OwnedJobContext;
  workers: RunningWorker[];
  /** Graceful stop: workers first (bounded by the deadline), then connections. */
  stop(deadlineMs?: number): Promise<void>;
}

/** Starts the workers of the given process types of the registry in this process, sharing one JobContext. */
export async function startProcessTypes<T extends string>(
  registry: ProcessTypeRegistry<T>,
  types: readonly T[],
  config: Config,
  options: BootOptions,
): Promise<RunningProcess> {
  const logger = options.logger ?? createLogger(`vmpool-${types.join('+')}`);
  const { providerFactory, healthCheckFactory } = await defaultFactories(options);
  const ctx = createJobContext(config, {
    logger,
    clock: options.clock,
    prefix: options.prefix,
    providerFactory,
    healthCheckFactory,
    faultPoint: options.faultPoint,
  });
  // The data format first: a newer pool is refused before anything is written, an older one is
  // migrated (or waited for) before any worker takes a job.
  const dataFormat = new DataFormat({ redis: ctx.connection, prefix: ctx.prefix, logger, clock: options.clock, groups: config.groups.map((g) => g.name), ...options.dataFormat });
  try {
    await dataFormat.ensure();
  } catch (err) {
    await ctx.close();
    throw err;
  }
  // Until the workers run, a refusal is kept, and start ends with it.
  let refusedAtStart: number | null = null;
  let refuse = (needed: number) => {
    refusedAtStart = needed;
  };
  // Every process watches the pool's state in Redis, and recovers it after a loss without a restart.
  const poolState = new PoolStateWatch({
    dataFormat: { format: dataFormat, onNewer: (needed) => refuse(needed) },
    vmm: ctx.vmm,
    redis: ctx.connection,
    logger,
    intervalMs: poolStateCheckMs(config),
    onEvent: async (event) => {
      for (const type of types) await registry[type].afterPoolStateEvent?.(ctx, event);
    },
  });
  ctx.poolState = poolState;
  // Before any worker takes a job: a process started on a Redis that restarted checks it first.
  await poolState.check('start');
  if (refusedAtStart !== null) {
    await poolState.stop();
    await ctx.close();
    throw new DataFormatTooNew(refusedAtStart, dataFormat.known);
  }
  poolState.start();
  const workers: RunningWorker[] = [];
  for (const type of types) {
    const spec = registry[type];
    const concurrency = spec.concurrencyKey ? (options.concurrency?.[spec.concurrencyKey] ?? config.concurrency[spec.concurrencyKey]) : 1;
    await spec.beforeStart?.(ctx);
    workers.push(runWorker(ctx, spec.processor, concurrency));
    logger.info({ type, queue: spec.processor.queue, concurrency, prefix: ctx.prefix }, 'worker started');
  }
  let stopping: Promise<void> | undefined;
  const running: RunningProcess = {
    ctx,
    workers,
    stop(deadlineMs = 10_000) {
      stopping ??= (async () => {
        // Closing first stops taking new jobs; then jobs that would wait until the deadline let go.
        const closing = workers.map((w) => w.close(deadlineMs));
        await Promise.all(types.map((type) => registry[type].beforeStop?.(ctx, deadlineMs)));
        await Promise.all(closing);
        await poolState.stop();
        await ctx.close();
      })();
      return stopping;
    },
  };
  refuse = (needed) => {
    const err = new DataFormatTooNew(needed, dataFormat.known);
    logger.error({ needed, known: dataFormat.known }, `data format: ${err.message}; stopping the workers`);
    void running.stop().then(
      () => options.onRefused?.(err),
      () => options.onRefused?.(err),
    );
  };
  // A heartbeat that refused while the workers were starting.
  if (refusedAtStart !== null) refuse(refusedAtStart);
  return running;
}

async function defaultFactories(options: BootOptions): Promise<Pick<JobContextOptions, 'providerFactory' | 'healthCheckFactory'>> {
  const providerFactory = options.providerFactory ?? (await import('../providers/index.js')).createProvider;
  const healthCheckFactory = options.healthCheckFactory ?? (await import('../health/index.js')).createHealthCheck;
  return { providerFactory, healthCheckFactory };
}

/**
 * Stops on SIGTERM or SIGINT: stop() must finish within the deadline, else the process exits
 * anyway (its active jobs come back through BullMQ's stalled-job recovery). The text stop()
 * resolves to, if any, is the last log line (default `stopped`).
 */
export function stopOnSignals(stop: (deadlineMs: number) => Promise<string | void>, logger: Logger, deadlineMs: number): void {
  let firstSignalAt: number | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (firstSignalAt !== undefined) {
      // One stop often arrives twice at once (Ctrl-C reaches npm and its child; `timeout` signals
      // the child and its group): only a signal repeated later means "now".
      if (Date.now() - firstSignalAt < 1_000) return;
      logger.warn({ signal }, 'second signal, exiting now');
      process.exit(1);
    }
    firstSignalAt = Date.now();
    logger.info({ signal, deadlineMs }, 'shutting down');
    const hardExit = setTimeout(() => {
      logger.error({ deadlineMs }, 'shutdown deadline passed, exiting');
      process.exit(1);
    }, deadlineMs + 2_000);
    hardExit.unref();
    stop(deadlineMs).then(
      (lastWords) => {
        logger.info(lastWords || 'stopped');
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
