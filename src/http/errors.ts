import type { NextFunction, Request, Response } from 'express';
import type { Logger } from '../logger.js';
import { InvalidVmRequest, LeaseLost, NoVmAvailable, TaskConflict, TooManyWaiting, UnknownGroup, VmDescriptorNotFound, VmError } from '../pool/types.js';
import { ConfigError } from '../config/index.js';
import { DataFormatTooNew } from '../pool/dataFormatVersion.js';

/** Error codes of the API; each maps to one HTTP status. */
export const ErrorCodes = {
  validation_error: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  misdirected_request: 421,
  too_many_requests: 429,
  no_vm_available: 503,
  not_ready: 503,
  internal_error: 500,
} as const;
export type ErrorCode = keyof typeof ErrorCodes;

/** An API error: sent as `{ error, message, details }` with the code's status. */
export class HttpError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }

  get status(): number {
    return ErrorCodes[this.code];
  }
}

/**
 * Maps pool errors to API errors; anything unknown is a 500:
 *   400 validation_error  a malformed request (InvalidVmRequest: an unknown group or state, a bad name)
 *   404 not_found         no such VM (VmDescriptorNotFound)
 *   409 conflict          the VM's state or lease refuses it (LeaseLost, any other VmError); the
 *                         owner's task belongs to another sandbox (TaskConflict, reason task_conflict)
 *   429 too_many_requests the owner has max_waiting_per_owner requests waiting (TooManyWaiting, reason
 *                         too_many_waiting; Retry-After)
 *   503 no_vm_available   no VM came within the request's timeout (NoVmAvailable)
 *   503 not_ready         the pool's data format moved past this process's before its heartbeat
 *                         saw it, and a script refused the write (DataFormatTooNew, reason
 *                         data_format_too_new, as the refusal of changes that follows)
 */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof VmDescriptorNotFound) return new HttpError('not_found', err.message, { vmName: err.vmName });
  if (err instanceof LeaseLost) return new HttpError('conflict', err.message, { reason: err.reason, vmName: err.vmName });
  if (err instanceof TaskConflict) return new HttpError('conflict', err.message, { reason: 'task_conflict', taskId: err.taskId });
  if (err instanceof TooManyWaiting) {
    return new HttpError('too_many_requests', err.message, { reason: 'too_many_waiting', group: err.group, limit: err.limit, retryAfter: err.retryAfterSeconds });
  }
  if (err instanceof DataFormatTooNew) return new HttpError('not_ready', err.message, { reason: 'data_format_too_new', needed: err.needed, known: err.known });
  if (err instanceof NoVmAvailable) return new HttpError('no_vm_available', err.message, { reason: err.message });
  if (err instanceof UnknownGroup) return new HttpError('validation_error', err.message, { group: err.group });
  if (err instanceof InvalidVmRequest) return new HttpError('validation_error', err.message, {});
  if (err instanceof VmError || err instanceof ConfigError) return new HttpError('conflict', err.message, {});
  const e = err as { type?: string; status?: number; message?: string };
  // body-parser: malformed JSON, body too large, wrong charset.
  if (e && e.status === 413 && typeof e.type === 'string') {
    return new HttpError('payload_too_large', `request body too large: ${e.message ?? e.type}`, { type: e.type });
  }
  if (e && typeof e.status === 'number' && e.status >= 400 && e.status < 500 && typeof e.type === 'string') {
    return new HttpError('validation_error', `invalid request body: ${e.message ?? e.type}`, { type: e.type });
  }
  return new HttpError('internal_error', 'internal error', {});
}

export function sendError(res: Response, err: HttpError): void {
  if (err.code === 'method_not_allowed' && Array.isArray(err.details.allow)) res.setHeader('Allow', (err.details.allow as string[]).join(', '));
  if (err.code === 'too_many_requests' && typeof err.details.retryAfter === 'number') res.setHeader('Retry-After', String(err.details.retryAfter));
  res.status(err.status).json({ error: err.code, message: err.message, details: err.details });
}

/** The last middleware: every error becomes `{ error, message, details }`. */
export function errorHandler(logger: Logger) {
  return (err: unknown, req: Request, res: Response, next: NextFunction): void => {
    if (res.headersSent) {
      next(err);
      return;
    }
    const httpError = toHttpError(err);
    if (httpError.status >= 500 && httpError.code === 'internal_error') logger.error({ err, url: req.originalUrl }, 'request failed');
    sendError(res, httpError);
  };
}
