export { parseConfig, loadConfig, ConfigError, configSchema, groupConfigSchema } from './config.js';
export type { Config, ConfigInput, GroupConfig, ConfigIssue } from './config.js';
export { VmManager } from './pool/vmManager.js';
export type { VmManagerOptions, AcquireRequest, HealthCheckRecord, HealthCheckOutcome, Clock } from './pool/vmManager.js';
export {
  VmStates,
  VmError,
  NoVmAvailable,
  VmDescriptorNotFound,
  VM_NAME_PATTERN,
  isValidVmName,
  isValidVmIp,
} from './pool/types.js';
export type { VmDescriptor, VmState } from './pool/types.js';
export { createLogger } from './logger.js';
export { QueueNames, ALL_QUEUE_NAMES } from '../queues/names.js';
