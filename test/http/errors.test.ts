import { describe, expect, it } from 'vitest';
import { toHttpError } from '../../src/http/errors.js';
import { DataFormatTooNew } from '../../src/pool/dataFormat.js';
import { InvalidVmRequest, LeaseLost, NoVmAvailable, UnknownGroup, VmDescriptorNotFound, VmError } from '../../src/pool/types.js';

describe('toHttpError', () => {
  it.each([
    ['an unknown group', new UnknownGroup(9, ['base', 'arm']), 400, 'validation_error'],
    ['another malformed request', new InvalidVmRequest('acquireVm needs an owner'), 400, 'validation_error'],
    ['a VM not found', new VmDescriptorNotFound('vm-x'), 404, 'not_found'],
    ['a lease mismatch', new LeaseLost('vm-x', 'l1', 'lease_mismatch'), 409, 'conflict'],
    ['a lease gone', new LeaseLost('vm-x', 'l1', 'not_in_use'), 409, 'conflict'],
    ['a refusal by the VM state', new VmError('VM vm-x is terminating and cannot be held'), 409, 'conflict'],
    ['no VM available', new NoVmAvailable('NoVmAvailable: no VM within 300 ms'), 503, 'no_vm_available'],
    ['anything else', new Error('boom'), 500, 'internal_error'],
  ])('maps %s to %i', (_what, err, status, code) => {
    const httpError = toHttpError(err);
    expect(httpError.status).toBe(status);
    expect(httpError.code).toBe(code);
  });

  it('maps a write refused for a newer data format to 503 not_ready, as the refusal of changes that follows', () => {
    const httpError = toHttpError(new DataFormatTooNew(3, 2, 'the release of VM vm-x'));
    expect(httpError.status).toBe(503);
    expect(httpError.code).toBe('not_ready');
    expect(httpError.details).toEqual({ reason: 'data_format_too_new', needed: 3, known: 2 });
  });

  it('names the unknown group in the details', () => {
    expect(toHttpError(new UnknownGroup(9, ['base', 'arm'])).details).toEqual({ group: 9 });
  });
});
