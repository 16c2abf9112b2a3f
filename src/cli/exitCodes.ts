import { ConfigError } from '../config/index.js';
import { NoVmAvailable, TooManyWaiting, VmDescriptorNotFound } from '../pool/types.js';

/**
 * Exit codes of `vmpool`, for scripts:
 *   0 ok · 1 error (including a refusal by the VM's state, or Redis unreachable) ·
 *   2 usage or config error · 3 VM not found · 4 no VM available (acquire timed out) ·
 *   5 too many requests waiting (the owner is at max_waiting_per_owner; try again later)
 */
export const ExitCodes = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  NO_VM: 4,
  TOO_MANY_WAITING: 5,
} as const;
export type ExitCode = (typeof ExitCodes)[keyof typeof ExitCodes];

/** An error the CLI reports with a given exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof ConfigError) return ExitCodes.USAGE;
  if (err instanceof VmDescriptorNotFound) return ExitCodes.NOT_FOUND;
  if (err instanceof NoVmAvailable) return ExitCodes.NO_VM;
  if (err instanceof TooManyWaiting) return ExitCodes.TOO_MANY_WAITING;
  return ExitCodes.ERROR;
}
