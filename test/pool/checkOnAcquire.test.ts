import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

// failCheckOnAcquire (check_on_acquire's failure): the assignment just made is undone in one script
// (lease, task, the job's assignment record) and the VM is terminating; an assignment under another
// lease is left alone. A re-run of the job before the check collects the same VM (so it is checked
// again), and after the failure gets another one.
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-check-on-acquire');
});
afterAll(async () => kit.close());

beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

const jobId = 'acquire-check-1';
const waiter = { member: `${String(T0).padStart(15, '0')}|${jobId}`, jobId, priority: 0, deadline: T0 + 600_000 };
const request = { groups: ['base'], owner: 'alice', sandbox: 'alice/p', workerId: 'w', taskId: 't-1' };

async function acquired() {
  const attempt = await kit.vmm.tryAcquireVm(request, waiter);
  if (attempt.status !== 'acquired' && attempt.status !== 'reattached') throw new Error(`not acquired: ${attempt.status}`);
  return attempt;
}

describe('failCheckOnAcquire', () => {
  it("undoes the job's assignment and terminates the VM; the job's next run gets another VM", async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.addReady('a2', '10.0.0.2');
    const first = await acquired();
    // The job dies before its check: its re-run collects the same VM and lease (and checks it again).
    const rerun = await acquired();
    expect([rerun.vm.vmName, rerun.leaseId]).toEqual([first.vm.vmName, first.leaseId]);

    expect(await kit.vmm.failCheckOnAcquire(first.vm.vmName, first.leaseId, jobId, 'tcp 10.0.0.1:22: ECONNREFUSED')).toBe(true);
    const record = await kit.vmm.getVmRecord(first.vm.vmName);
    expect([record.state, record.leaseId, record.taskId]).toEqual(['terminating', null, null]);
    expect(await kit.redis.exists(kit.keys.acquireAssignment(jobId))).toBe(0);
    expect(await kit.vmm.getVmByTaskId('t-1', 'alice')).toBeNull();
    const events = (await kit.vmm.reader.auditEvents({ vm: first.vm.vmName, limit: 100 })).events.map((e) => [e.event, e.reason]);
    expect(events).toEqual(expect.arrayContaining([['check_failed', 'check_on_acquire'], ['terminate_requested', 'check_on_acquire']]));

    const next = await acquired();
    expect(next.vm.vmName).not.toBe(first.vm.vmName);
    // Done twice (a retried call): nothing more changes.
    expect(await kit.vmm.failCheckOnAcquire(first.vm.vmName, first.leaseId, jobId, 'again')).toBe(false);
    expect((await kit.vmm.getVmRecord(next.vm.vmName)).state).toBe('in_use');
  });

  it('leaves a VM in use under another lease alone', async () => {
    await kit.addReady('a1', '10.0.0.1');
    const given = await acquired();
    expect(await kit.vmm.failCheckOnAcquire(given.vm.vmName, 'another-lease', jobId, 'late')).toBe(false);
    const record = await kit.vmm.getVmRecord(given.vm.vmName);
    expect([record.state, record.leaseId]).toEqual(['in_use', given.leaseId]);
    expect(await kit.redis.exists(kit.keys.acquireAssignment(jobId))).toBe(1);
  });
});
