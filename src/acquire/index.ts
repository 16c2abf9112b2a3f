export { processAcquireJob, acquireProcessor, stopAcquireWaits, resolveRequestGroups, NO_VM_AVAILABLE_PREFIX } from './processor.js';
export type { AcquireProcessOptions } from './processor.js';
export { ReadySignal } from './readySignal.js';
