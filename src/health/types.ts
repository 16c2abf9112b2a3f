import type { ProviderGroup } from '../providers/types.js';

export interface HealthCheckTarget {
  vmName: string;
  vmIp: string;
  group: ProviderGroup;
}

export interface HealthCheckResult {
  ok: boolean;
  /** One line for logs and the job's result: what was checked and what came back. */
  detail: string;
}

/** A way to tell whether a machine is healthy (Copr: ssh `echo hello`). */
export interface HealthCheck {
  readonly type: string;
  /** Resolves (never rejects) within timeoutMs. */
  check(target: HealthCheckTarget, options: { timeoutMs: number; log?: (line: string) => void | Promise<void> }): Promise<HealthCheckResult>;
}
