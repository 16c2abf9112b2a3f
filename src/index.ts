export { parseConfig, loadConfig, ConfigError, configSchema, groupConfigSchema, configJsonSchema, launchFingerprint, GROUP_NAME_PATTERN, groupNameOf, groupIndexOf, isGroupName } from './config/index.js';
export type { Config, ConfigInput, GroupConfig, ConfigIssue, GroupRef } from './config/index.js';
export type { GroupRename } from './pool/groupNames.js';
export { VmManager } from './pool/vmManager.js';
export type { VmManagerOptions, AcquireRequest, AcquireSetItem, AcquireSetRequest, AcquireSetAttempt, HealthCheckRecord, HealthCheckOutcome, Clock } from './pool/vmManager.js';
export {
  VmStates,
  VmError,
  InvalidVmRequest,
  UnknownGroup,
  NoVmAvailable,
  VmDescriptorNotFound,
  VM_NAME_PATTERN,
  isValidVmName,
  isValidVmIp,
} from './pool/types.js';
export type { VmDescriptor, VmState } from './pool/types.js';
export { createLogger } from './logger.js';
export { QueueNames, ALL_QUEUE_NAMES } from '../queues/names.js';
export { createProvider, CommandProvider, LocalProvider, ProviderError, parseSpawnOutput, parseListOutput } from './providers/index.js';
export type { Provider, ProviderDeps, ProviderGroup, ProviderMachine, SpawnRequest, SpawnedMachine, TerminateRequest } from './providers/index.js';
export { createHealthCheck, SshHealthCheck, TcpHealthCheck, CommandHealthCheck } from './health/index.js';
export type { HealthCheck, HealthCheckResult, HealthCheckTarget } from './health/index.js';
export type { ProviderConfig, CheckConfig } from './config/index.js';
export { VmMaster, CYCLE_STEPS, LAST_VM_SPAWN_START, DEFAULT_CYCLE_LOCK_TTL_MS, cycleLockKey } from './reconcile/vmMaster.js';
export type { VmMasterOptions, CycleReport, CycleStep, ReconcileStep } from './reconcile/vmMaster.js';
export type { CycleLock } from './pool/locks.js';
export {
  decideRemoveOldDirtyVms,
  decideCheckVmsHealth,
  decideRecheckAfterServerStart,
  decideFinalizeLongHealthChecks,
  decideTerminateAgain,
  decideStartSpawnIfRequired,
  spawnFigures,
} from './reconcile/decisions.js';
export type { ReconcileAction, PoolSnapshot, GroupSnapshot, SpawnInFlight, SpawnReason, SpawnFigures } from './reconcile/decisions.js';
export { decideOrphans } from './reconcile/orphanDecisions.js';
export type { OrphanPoolVm, OrphanDecision, OrphanInput } from './reconcile/orphanDecisions.js';
export { processReconcileJob, reconcileProcessor, ensureReconcileScheduler, RECONCILE_JOB_NAME } from './processors/reconcile.js';
export { createWebApp, BOARD_PATH } from './http/app.js';
export type { WebAppDeps, ChangesRefused } from './http/app.js';
export { startWebServer, runWebProcess } from './http/server.js';
export type { WebServerOptions, RunningWebServer } from './http/server.js';
export { WebAuthRequired, isLoopbackHost, assertBindAllowed } from './http/auth.js';
export type { Principal } from './http/auth.js';
export { HttpError, ErrorCodes } from './http/errors.js';
export { openApiDocument } from './http/openapi.js';
export { DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS } from './http/api.js';
export { createMetricsRegistry } from './metrics/registry.js';
export { sharedMetrics, recordJobMetrics } from './metrics/shared.js';
export { webConfigSchema, webScopes } from './config/index.js';
export type { WebConfig, WebScope } from './config/index.js';
export type { VmRecord } from './pool/types.js';
export { VmPoolClient, AcquireAborted, SetRequestConflict, acquireJobId } from './client/index.js';
export type { VmPoolClientOptions, AcquireOptions, WithVmOptions, WithVmSetOptions } from './client/index.js';
export { processAcquireJob, acquireProcessor, startAcquireLine, stopAcquireWaits, NO_VM_AVAILABLE_PREFIX } from './processors/acquire.js';
export { explainWait, describeWait, WAIT_REASONS, type WaitReason, type WaitStatus, type GroupWait, type UnavailableVm } from './acquire/why.js';
export { LeaseLost, TaskConflict, TooManyWaiting } from './pool/types.js';
export { DataFormatTooNew, DATA_FORMAT_VERSION } from './pool/dataFormatVersion.js';
export { acquireWaiterMember } from './pool/vmManager.js';
export type { AcquireWaiter, AcquireAttempt, ExpiredLease } from './pool/vmManager.js';
export { acquireRequestSchema, acquireJobOptions, DEFAULT_ACQUIRE_TIMEOUT_MS, ACQUIRE_QUEUE, AcquireFailures, acquireFailureOf, acquireJobError } from '../queues/acquire.js';
export type { AcquireRequestData, VmAssignment, AcquireFailure } from '../queues/acquire.js';
export { acquireSetRequestSchema, acquireSetRequestId, MAX_SET_ITEMS, AcquireJobNames, acquireJobPayloadSchema, isAcquireSetPayload } from '../queues/acquire.js';
export type { AcquireSetRequestData, AcquireSetItemData, VmSetAssignment } from '../queues/acquire.js';
// Spawn crash safety: a stopped spawn names the machine it may have made; a spawn that lost its slot adds no VM.
export { SpawnAborted } from './providers/types.js';
export type { PrintedMachine } from './providers/types.js';
export { SpawnSlotLost } from './pool/types.js';
export type { SpawnAttemptStart } from './pool/types.js';
export { auditEventTypes, DEFAULT_AUDIT_MAX_EVENTS } from './pool/audit.js';
export type { AuditEvent, AuditEventType, AuditPage, AuditQuery } from './pool/audit.js';
export { WriteNotReplicated, replicaWaitOf } from './redis.js';
export type { RedisConnection, RedisTarget, ReplicaWait } from './redis.js';
export type { RedisEndpointConfig } from './redisEndpoint.js';
export type { HostKeyStore, HealthCheckDeps } from './health/index.js';
export { Autoholds, RELEASE_OUTCOMES, autoholdRuleInputSchema } from './pool/autohold.js';
export type { AutoholdRule, AutoholdRuleInput, ReleaseOptions, ReleaseOutcome } from './pool/autohold.js';
export { Quotas } from './pool/quota.js';
export type { CachedQuota, QuotaFull } from './pool/quota.js';
export { parseQuotaReport, quotaReportSchema, vmResources, accountLimitsForPool } from './reconcile/quota.js';
export type { QuotaReport, Resources } from './reconcile/quota.js';
