import { describe, expect, it } from 'vitest';
import { acquireJobId, isAcquireJobId } from '../../queues/acquire.js';
import { healthJobDeduplicationId } from '../../queues/health.js';
import { spawnJobId } from '../../queues/spawn.js';
import { leakTerminateJobId, lossSweepTerminateJobId, spawnOrphanTerminateJobId, spawnStopTerminateJobId, terminateJobId } from '../../queues/terminate.js';
import { acquireJobId as clientAcquireJobId } from '../../src/client/index.js';

const T = 1_750_000_000_000;

// Running pools and re-runs find their jobs by these ids: their form must not change.
describe('job ids', () => {
  it('keep their form', () => {
    expect(acquireJobId('build:42/x86')).toBe('acquire-build%3A42%2Fx86');
    expect(acquireJobId(undefined)).toMatch(/^acquire-[0-9a-f-]{36}$/);
    expect(acquireJobId('')).toMatch(/^acquire-[0-9a-f-]{36}$/);
    expect(spawnJobId('s-1')).toBe('spawn-s-1');
    expect(healthJobDeduplicationId('vm-1')).toBe('health-vm-1');
    expect(terminateJobId('vm-1', T)).toBe(`terminate-vm-1-${T}`);
    expect(leakTerminateJobId(2, 'vm-1.example', T)).toBe(`leak-g2-vm-1.example-${T}`);
    expect(lossSweepTerminateJobId(2, 'vm-1', 'gen-a')).toBe('lost-g2-vm-1-gen-a');
    expect(spawnStopTerminateJobId('s-1', 'vm-1')).toBe('spawn-stop-s-1-vm-1');
    expect(spawnOrphanTerminateJobId('vm-1', T)).toBe(`orphan-vm-1-${T}`);
  });

  it('the client exports the same acquireJobId', () => {
    expect(clientAcquireJobId).toBe(acquireJobId);
  });

  it('tell an acquire job id from a task id', () => {
    expect(isAcquireJobId(acquireJobId('t-1'))).toBe(true);
    expect(isAcquireJobId('t-1')).toBe(false);
  });

  it('a leaked machine gets one id per machine and first sighting, without ":" and not a plain integer', () => {
    const id = leakTerminateJobId(2, 'vm-1.example', T);
    expect(id).not.toBe(leakTerminateJobId(2, 'vm-1.example', T + 1));
    expect(id).not.toBe(leakTerminateJobId(1, 'vm-1.example', T));
    expect(id).not.toContain(':');
    expect(/^\d+$/.test(id)).toBe(false);
  });
});
