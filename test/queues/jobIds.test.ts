import { describe, expect, it } from 'vitest';
import { acquireJobId, acquireJobIdPatternOfTask, acquireSetRequestId, isAcquireJobId, legacyAcquireJobId } from '../../queues/acquire.js';
import { healthJobDeduplicationId } from '../../queues/health.js';
import { spawnJobId } from '../../queues/spawn.js';
import { leakTerminateJobId, lossSweepTerminateJobId, spawnOrphanTerminateJobId, spawnStopTerminateJobId, terminateJobId } from '../../queues/terminate.js';
import { acquireJobId as clientAcquireJobId } from '../../src/client/index.js';

const T = 1_750_000_000_000;

// Running pools and re-runs find their jobs by these ids: their form must not change.
describe('job ids', () => {
  it('keep their form', () => {
    expect(acquireJobId('build:42/x86', 'alice')).toBe('acquire-alice+build%3A42%2Fx86');
    expect(legacyAcquireJobId('build:42/x86')).toBe('acquire-build%3A42%2Fx86');
    expect(acquireJobId(undefined)).toMatch(/^acquire-[0-9a-f-]{36}$/);
    expect(acquireJobId('')).toMatch(/^acquire-[0-9a-f-]{36}$/);
    expect(spawnJobId('s-1')).toBe('spawn-s-1');
    expect(healthJobDeduplicationId('vm-1')).toBe('health-vm-1');
    expect(terminateJobId('vm-1', T)).toBe(`terminate-vm-1-${T}`);
    expect(leakTerminateJobId('arm', 'vm-1.example', T)).toBe(`leak-garm+vm-1.example+${T}`);
    expect(lossSweepTerminateJobId('arm', 'vm-1', 'gen-a')).toBe('lost-garm+vm-1+gen-a');
    expect(spawnStopTerminateJobId('s-1', 'vm-1')).toBe('spawn-stop-s-1-vm-1');
    expect(spawnOrphanTerminateJobId('vm-1', T)).toBe(`orphan-vm-1-${T}`);
  });

  it("give each owner's set request ids their own identity", () => {
    // ('a:b', 'c') and ('a', 'b:c') once shared `set:a:b:c`: one owner's retry dropped the other's re-run records.
    expect(acquireSetRequestId('a:b', 'c')).toBe('set-a%3Ab+c');
    expect(acquireSetRequestId('a', 'b:c')).toBe('set-a+b%3Ac');
    expect(acquireSetRequestId('a|b', 'x#1')).toBe('set-a%7Cb+x%231');
    expect(acquireSetRequestId('alice')).toMatch(/^set-[0-9a-f-]{36}$/);
  });

  it('the client exports the same acquireJobId', () => {
    expect(clientAcquireJobId).toBe(acquireJobId);
  });

  it('tell an acquire job id from a task id', () => {
    expect(isAcquireJobId(acquireJobId('t-1', 'alice'))).toBe(true);
    expect(isAcquireJobId('t-1')).toBe(false);
  });

  it('an acquire job id of a task names its owner, injectively (task ids are per owner)', () => {
    // Pairs that a plain joiner would confuse give distinct ids: '+' never comes out of encodeURIComponent.
    const pairs: [string, string][] = [['b+c', 'a'], ['c', 'a+b'], ['c', 'a%2Bb'], ['b', 'a'], ['a', 'b'], ['t', 'alice'], ['t', 'bob']];
    const ids = pairs.map(([task, owner]) => acquireJobId(task, owner));
    expect(new Set(ids).size).toBe(pairs.length);
    for (const id of ids) expect(id.split('+')).toHaveLength(2);
    expect(acquireJobId('t', 'alice')).not.toBe(acquireJobId('t', 'bob'));
    // A task id without its owner is a mistake, not a shared job id.
    expect(() => (acquireJobId as (t: string) => string)('t')).toThrow(TypeError);
    // The pattern of a task of any owner: '*' in a task id is matched as itself.
    expect(acquireJobIdPatternOfTask('x*y')).toBe('acquire-*+x\\*y');
  });

  it('a leaked machine gets one id per machine and first sighting, without ":" and not a plain integer', () => {
    const id = leakTerminateJobId('arm', 'vm-1.example', T);
    expect(id).not.toBe(leakTerminateJobId('arm', 'vm-1.example', T + 1));
    expect(id).not.toBe(leakTerminateJobId('base', 'vm-1.example', T));
    expect(id).not.toContain(':');
    expect(/^\d+$/.test(id)).toBe(false);
  });

  it("a leaked or swept machine's id names its group and machine injectively ('-' is in both)", () => {
    // Joined by '-', these pairs once shared one id: the second leak's pass found the first's job.
    const pairs: [string, string][] = [['a', 'b-c'], ['a-b', 'c'], ['a', 'b+c'], ['a+b', 'c'], ['a', 'b%2Bc'], ['a', 'b:c']];
    const leaks = pairs.map(([group, machine]) => leakTerminateJobId(group, machine, T));
    const swept = pairs.map(([group, machine]) => lossSweepTerminateJobId(group, machine, 'gen-1'));
    expect(new Set(leaks).size).toBe(pairs.length);
    expect(new Set(swept).size).toBe(pairs.length);
    for (const id of [...leaks, ...swept]) {
      expect(id.split('+')).toHaveLength(3);
      expect(id).not.toContain(':');
    }
  });
});
