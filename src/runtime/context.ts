import type { Queue } from 'bullmq';
import type { RedisConnection } from '../redis.js';
import type { Config } from '../config.js';
import type { HealthCheck } from '../health/types.js';
import type { Logger } from '../logger.js';
import type { Clock, VmManager } from '../pool/vmManager.js';
import type { Provider } from '../providers/types.js';
import type { QueueName } from '../../queues/names.js';

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
  provider(group: number): Provider;
  /** The health check of a group, created once per group. */
  healthCheck(group: number): HealthCheck;
}
