/**
 * The registry of the Procfile's worker process types. Each has its processor in the file of its
 * name (acquire.ts, spawn.ts, health.ts, terminate.ts, reconcile.ts); the runtime (src/runtime/)
 * runs them, given this registry by workers/<type>.ts and by `vmpool start`.
 */
import type { ProcessTypeRegistry } from '../runtime/boot.js';
import { acquireProcessor, startAcquireLine, stopAcquireWaits } from './acquire.js';
import { healthProcessor } from './health.js';
import { afterPoolStateEvent, prepareReconcile, reconcileProcessor } from './reconcile.js';
import { spawnProcessor, stopSpawns } from './spawn.js';
import { terminateProcessor } from './terminate.js';

/** Process types that run BullMQ workers (the Procfile adds `web`). */
export const WORKER_PROCESS_TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'] as const;
export type WorkerProcessType = (typeof WORKER_PROCESS_TYPES)[number];

export const processTypeSpecs: ProcessTypeRegistry<WorkerProcessType> = {
  acquire: { processor: acquireProcessor, concurrencyKey: 'acquire', beforeStart: startAcquireLine, beforeStop: stopAcquireWaits },
  spawn: { processor: spawnProcessor, concurrencyKey: 'spawn', beforeStop: stopSpawns },
  health: { processor: healthProcessor, concurrencyKey: 'health' },
  terminate: { processor: terminateProcessor, concurrencyKey: 'terminate' },
  reconcile: { processor: reconcileProcessor, beforeStart: prepareReconcile, afterPoolStateEvent },
};

export function isWorkerProcessType(value: string): value is WorkerProcessType {
  return (WORKER_PROCESS_TYPES as readonly string[]).includes(value);
}
