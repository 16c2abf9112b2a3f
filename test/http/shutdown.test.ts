import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireJobId } from '../../src/client/index.js';
import { ACQUIRE_QUEUE } from '../../queues/acquire.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { createWebKit, type WebKit } from './fixtures.js';

// A stopping web process answers its waiting POST /acquire at once (503, Retry-After) and
// withdraws their requests: removed when no worker had them, out of the line (and failed by the
// worker) when one waited with them. Real Redis, real HTTP, a real acquire worker in this process.
describe('web shutdown with waiting acquires', () => {
  const kits: WebKit[] = [];
  const queues: Queue[] = [];
  afterAll(async () => {
    for (const q of queues) await q.close();
    for (const k of kits) await k.close();
  });

  async function kit(name: string): Promise<{ kit: WebKit; queue: Queue }> {
    const k = await createWebKit(name);
    kits.push(k);
    const queue = new Queue(ACQUIRE_QUEUE, { connection: k.redis, prefix: k.prefix });
    queues.push(queue);
    return { kit: k, queue };
  }

  const request = (taskId: string) => ({ owner: 'alice', sandbox: 'alice/p', groups: ['arm'], taskId, timeoutMs: 60_000 });

  async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
    const end = Date.now() + 10_000;
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  it('answers a request waiting in the line with 503 and Retry-After at once; it leaves the line and its job fails, taking no VM', async () => {
    const { kit: k, queue } = await kit('shutdown-line');
    const worker = await k.startAcquireWorker();
    const pending = k.fetch('/api/v1/acquire', { method: 'POST', json: request('t-line') });
    await until(async () => (await k.redis.zcard(k.keys.waiters('arm'))) === 1, 'the request in the line');
    const stopAt = Date.now();
    const stopping = k.web.stop(10_000);
    const res = await pending;
    expect(Date.now() - stopAt).toBeLessThan(1_500);
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(await res.json()).toMatchObject({ error: 'no_vm_available', details: { reason: 'shutting_down' } });
    await stopping;
    expect(Date.now() - stopAt).toBeLessThan(3_000);
    // Out of the line and the demand at once, though the worker still holds the job.
    expect(await k.redis.zcard(k.keys.waiters('arm'))).toBe(0);
    expect(await k.redis.zcard(k.keys.demand('arm'))).toBe(0);
    expect(await k.vmm.countDemand('arm')).toBe(0);
    // A VM that the request could take now must not go to it: the worker wakes, sees the
    // withdrawal and fails the job.
    await k.addReady('arm-1', '10.60.0.1', 1);
    const job = (await Job.fromId(queue, acquireJobId('t-line', 'alice')))!;
    await until(async () => (await job.getState()) === 'failed', 'the withdrawn job to fail');
    expect((await Job.fromId(queue, job.id!))!.failedReason).toMatch(/^cancelled: the web process is shutting down/);
    expect((await k.vmm.getVmRecord('arm-1')).state).toBe('ready');
    await worker.stop(5_000);
  });

  it('removes a request no acquire worker had taken, and refuses new acquires while stopping', async () => {
    const { kit: k, queue } = await kit('shutdown-queued');
    const pending = k.fetch('/api/v1/acquire', { method: 'POST', json: request('t-queued') });
    await until(async () => (await queue.getJobCounts('waiting')).waiting === 1, 'the queued job');
    const stopping = k.web.stop(10_000);
    const res = await pending;
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    await stopping;
    expect(await Job.fromId(queue, acquireJobId('t-queued', 'alice'))).toBeUndefined();
  });

  it('fails a withdrawn job that a stopping worker had handed back, when the next worker takes it', async () => {
    const { kit: k, queue } = await kit('shutdown-handback');
    // What a handed-back job looks like: queued again, and withdrawn by the web process (its
    // cancel record, as cancelAcquire writes it when the web process stops).
    const job = await queue.add('acquire', request('t-back'), { jobId: acquireJobId('t-back', 'alice') });
    await k.vmm.cancelAcquire({ member: acquireWaiterMember(job.timestamp, job.id!), jobId: job.id! }, 'the web process is shutting down', 60_000);
    await k.addReady('arm-2', '10.60.0.2', 1);
    const worker = await k.startAcquireWorker();
    await until(async () => (await job.getState()) === 'failed', 'the handed-back job to fail');
    expect((await Job.fromId(queue, job.id!))!.failedReason).toMatch(/^cancelled: the web process is shutting down/);
    expect((await k.vmm.getVmRecord('arm-2')).state).toBe('ready');
    await worker.stop(5_000);
  });
});
