import type { Config } from '../config.js';
import type { JobContext } from './context.js';
import type { ProcessorSpec } from './runtime.js';
import { healthProcessor } from './health.js';
import { spawnProcessor } from './spawn.js';
import { terminateProcessor } from './terminate.js';

/** Process types that run BullMQ workers (the Procfile adds `web`). */
export const WORKER_PROCESS_TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'] as const;
export type WorkerProcessType = (typeof WORKER_PROCESS_TYPES)[number];

export interface ProcessTypeSpec {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  processor: ProcessorSpec<any, unknown>;
  /** Where the concurrency comes from; reconcile always runs one job at a time. */
  concurrencyKey?: keyof Config['concurrency'];
  beforeStart?(ctx: JobContext): Promise<void>;
  afterStop?(ctx: JobContext): Promise<void>;
}

export const processTypeSpecs: Record<WorkerProcessType, ProcessTypeSpec> = {
  spawn: { processor: spawnProcessor, concurrencyKey: 'spawn' },
  health: { processor: healthProcessor, concurrencyKey: 'health' },
  terminate: { processor: terminateProcessor, concurrencyKey: 'terminate' },
  acquire: { processor: spawnProcessor, concurrencyKey: 'acquire' }, // replaced below when wired
  reconcile: { processor: spawnProcessor }, // replaced below when wired
};

export function isWorkerProcessType(value: string): value is WorkerProcessType {
  return (WORKER_PROCESS_TYPES as readonly string[]).includes(value);
}
