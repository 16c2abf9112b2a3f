import { describe, expect, it } from 'vitest';
import { InvalidVmRequest, NoVmAvailable, VmError } from '../../src/pool/types.js';
import { AcquireFailures, NO_VM_AVAILABLE_PREFIX, acquireFailureOf, acquireJobError, noVmAvailableReason } from '../../queues/acquire.js';

/** A failed acquire job as BullMQ stores it: its failedReason and its progress. */
const failedJob = (failedReason: string, progress: unknown) => ({ failedReason, progress: progress as number | object });

describe('acquire job failures', () => {
  it('turn back into NoVmAvailable by their failure code, with the reason as message', () => {
    const reason = noVmAvailableReason('no VM for owner alice within 400 ms');
    expect(reason.startsWith(`${NO_VM_AVAILABLE_PREFIX} `)).toBe(true);
    const err = acquireJobError(failedJob(reason, { failure: AcquireFailures.NO_VM_AVAILABLE }));
    expect(err).toBeInstanceOf(NoVmAvailable);
    expect(err.message).toBe(reason);
  });

  it('turn an invalid request into InvalidVmRequest, anything else into VmError', () => {
    const invalid = acquireJobError(failedJob('unknown group 9; groups are 0..2', { failure: AcquireFailures.INVALID_REQUEST }));
    expect(invalid).toBeInstanceOf(InvalidVmRequest);
    expect(invalid.message).toBe('acquire failed: unknown group 9; groups are 0..2');
    const refused = acquireJobError(failedJob('task t already holds VM v', { failure: AcquireFailures.REFUSED }));
    expect(refused).toBeInstanceOf(VmError);
    expect(refused).not.toBeInstanceOf(InvalidVmRequest);
    expect(refused).not.toBeInstanceOf(NoVmAvailable);
  });

  it('never read the message: a reason that merely looks like NoVmAvailable, with no code, is a VmError', () => {
    for (const progress of [0, null, undefined, {}, { failure: 'something else' }, 'no_vm_available']) {
      const job = failedJob(noVmAvailableReason('job stalled more than allowable limit'), progress);
      expect(acquireFailureOf(job)).toBeNull();
      const err = acquireJobError(job);
      expect(err).toBeInstanceOf(VmError);
      expect(err).not.toBeInstanceOf(NoVmAvailable);
    }
  });
});
