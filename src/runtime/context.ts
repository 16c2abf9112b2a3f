import type { Queue } from 'bullmq';
import type { RedisConnection } from '../redis.js';
import type { Config } from '../config/index.js';
import type { HealthCheck } from '../health/types.js';
import type { Logger } from '../logger.js';
import type { Clock, VmManager } from '../pool/vmManager.js';
import type { Provider } from '../providers/types.js';
import type { PoolStateWatch } from './poolStateWatch.js';
import type { QueueName } from '../../queues/names.js';
import type { FaultPoint } from './settings.js';

/**
 * Everything a job processor needs, owned by one process. Processors get it instead of building
 * connections, loggers or queues of their own.
 */
export interface JobContext {
  config: Config;
  vmm: VmManager;
  logger: Logger;
  prefix: string;
  clock: Clock;
  /** This process's name, for BullMQ and the VM's `usedByWorker`: host, pid and a random suffix. */
  workerId: string;
  /** Producer connection (fails fast); shared by vmm and the queues below. */
  connection: RedisConnection;
  /** A Queue handle for adding jobs, created once per process. */
  queue(name: QueueName): Queue;
  /** The provider of a group, created once per group. */
  provider(group: string): Provider;
  /** The health check of a group, created once per group. */
  healthCheck(group: string): HealthCheck;
  /**
   * The process's watch over the pool's state in Redis (poolStateWatch.ts), when the runtime runs
   * one: periodic paths (each reconcile cycle) ask it for a check.
   */
  poolState?: PoolStateWatch;
  /** Tests only (VMPOOL_FAULT): the step where this process SIGKILLs itself (crashAt). */
  faultPoint?: FaultPoint;
}

/** Tests only: a crash (SIGKILL of this process) when the process was started with this fault point. */
export function crashAt(ctx: JobContext, point: FaultPoint): void {
  if (ctx.faultPoint !== point) return;
  ctx.logger.warn({ faultPoint: point }, 'VMPOOL_FAULT: crashing here (tests only)');
  process.kill(process.pid, 'SIGKILL');
}
