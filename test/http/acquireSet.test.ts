import { request as httpRequest } from 'node:http';
import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ACQUIRE_QUEUE, AcquireFailures, AcquireJobNames, acquireFailureOf, acquireSetRequestId } from '../../queues/acquire.js';
import { until } from '../acquire/fixtures.js';
import { createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// POST /acquire-set against a real web server, the real acquire worker (the acquire-set job waits
// in the acquire line as one request) and the real Redis (open mode); GET and DELETE
// /requests/:id for a set.
const json = async (res: Response) => ({ status: res.status, body: (await res.json()) as any });

describe('HTTP API: POST /acquire-set', () => {
  let kit: WebKit;
  let queue: Queue;
  const post = async (body: unknown) => json(await kit.fetch('/api/v1/acquire-set', { method: 'POST', json: body }));
  const status = async (id: string, query = '') => json(await kit.fetch(`/api/v1/requests/${encodeURIComponent(id)}${query}`));

  beforeAll(async () => {
    // 'spare' never has a VM here: a set asking for it waits until withdrawn.
    kit = await createWebKit(
      'acquire-set',
      webTestConfig({
        groups: [
          { name: 'base', archs: ['x86_64'], max_vm_per_user: 2, min_ready: 1, max_vm_total: 6 },
          { name: 'arm', archs: ['aarch64'], max_vm_per_user: 1, max_vm_total: 3 },
          { name: 'spare', archs: ['riscv64'], max_vm_per_user: 2, max_vm_total: 3 },
        ],
      }),
    );
    await kit.startAcquireWorker();
    queue = new Queue(ACQUIRE_QUEUE, { connection: kit.redis, prefix: kit.prefix });
    await kit.addReady('b1', '10.1.0.1', 0);
  });
  afterAll(async () => {
    await queue?.close();
    await kit?.close();
  });

  it('waits as one acquire-set job holding nothing, then returns every VM of the set with its own lease; renew and release each', async () => {
    const answer = post({ owner: 'alice', sandbox: 'sb', vms: [{ groups: [0] }, { arch: 'aarch64' }], requestId: 'r-1', timeoutMs: 20_000 });
    const jobId = acquireSetRequestId('alice', 'r-1');
    // It waits (the set cannot be had yet), by its job id and by its request id of the owner.
    let waiting: any;
    await until(async () => {
      const res = await status(jobId);
      waiting = res.body;
      return res.status === 200 && waiting.state === 'waiting';
    }, 'the set waiting', 15_000);
    expect(waiting).toMatchObject({ id: jobId, kind: 'acquire-set', requestId: 'r-1', taskId: null, owner: 'alice', sandbox: 'sb', items: [{ groups: ['base'] }, { groups: ['arm'] }], vms: null });
    // Why: b1 can serve its first VM; its second (arm) cannot be had now.
    expect(waiting.waiting).toMatchObject({ set: 2, unavailableVms: [{ index: 2, groups: ['arm'] }] });
    expect((await status('r-1', '?owner=alice')).body.id).toBe(jobId);
    expect((await status('r-1')).body.id).toBe(jobId);
    // The job in Redis names its groups (index 0 became 'base').
    const job = (await Job.fromId(queue, jobId))!;
    expect(job.name).toBe(AcquireJobNames.ACQUIRE_SET);
    expect(job.data).toMatchObject({ vms: [{ groups: ['base'] }, { arch: 'aarch64' }], requestId: 'r-1' });
    // Nothing is held while the set waits.
    expect((await kit.vmm.getVmByName('b1')).state).toBe('ready');

    await kit.addReady('a1', '10.2.0.1', 1);
    const { status: code, body } = await answer;
    expect(code).toBe(200);
    expect(body.vms.map((v: any) => [v.vmName, v.group])).toEqual([
      ['b1', 'base'],
      ['a1', 'arm'],
    ]);
    expect(Object.keys(body.vms[0]).sort()).toEqual(['group', 'leaseExpiresAt', 'leaseId', 'vmIp', 'vmName']);
    expect(body.vms[0].leaseId).not.toBe(body.vms[1].leaseId);
    const done = (await status(jobId)).body;
    expect(done).toMatchObject({ state: 'assigned', vms: [{ vmName: 'b1' }, { vmName: 'a1' }] });
    expect(done.vms[0].leaseId).toBeUndefined();

    // The same request id (a retry after a lost answer) gets the same VMs and leases.
    const again = await post({ owner: 'alice', sandbox: 'sb', vms: [{ groups: ['base'] }, { arch: 'aarch64' }], requestId: 'r-1', timeoutMs: 1_000 });
    expect(again.body.vms).toEqual(body.vms);

    for (const v of body.vms) {
      const renewed = await json(await kit.fetch(`/api/v1/vms/${v.vmName}/renew`, { method: 'POST', json: { leaseId: v.leaseId } }));
      expect(renewed.status).toBe(200);
      const released = await json(await kit.fetch(`/api/v1/vms/${v.vmName}/release`, { method: 'POST', json: { leaseId: v.leaseId } }));
      expect(released.status).toBe(200);
    }
  }, 40_000);

  it('answers 503 when the whole set does not come in time, having taken nothing', async () => {
    await kit.addReady('b9', '10.1.0.9', 0);
    const res = await post({ owner: 'bob', sandbox: 'x', vms: [{ groups: ['base'] }, { groups: ['base'] }], requestId: 'too-many', timeoutMs: 300 });
    expect(res).toMatchObject({ status: 503, body: { error: 'no_vm_available' } });
    expect((await kit.vmm.getVmByName('b9')).state).toBe('ready');
    expect((await status('too-many', '?owner=bob')).body).toMatchObject({ kind: 'acquire-set', state: 'failed', failure: { code: AcquireFailures.NO_VM_AVAILABLE } });
  }, 20_000);

  it('DELETE /requests/:id withdraws a waiting set: its job fails as cancelled and the POST is answered', async () => {
    const answer = post({ owner: 'carol', sandbox: 'x', vms: [{ groups: ['base'] }, { groups: ['spare'] }], requestId: 'to-cancel', timeoutMs: 20_000 });
    const jobId = acquireSetRequestId('carol', 'to-cancel');
    await until(async () => (await status(jobId)).body.state === 'waiting', 'the set waiting', 15_000);
    const del = await json(await kit.fetch('/api/v1/requests/to-cancel?owner=carol', { method: 'DELETE', json: {} }));
    expect(del.status).toBe(202);
    expect(del.body).toMatchObject({ id: jobId, kind: 'acquire-set', state: 'failed', failure: { code: AcquireFailures.CANCELLED } });
    const res = await answer;
    expect(res.status).not.toBe(200);
    // Finished: a second DELETE is a 409.
    expect((await kit.fetch(`/api/v1/requests/${jobId}`, { method: 'DELETE', json: {} })).status).toBe(409);
  }, 30_000);

  it('a builder that drops the connection withdraws its set', async () => {
    const u = new URL('/api/v1/acquire-set', kit.url);
    const req = httpRequest({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ owner: 'dave', sandbox: 'x', vms: [{ groups: ['spare'] }, { groups: ['spare'] }], requestId: 'gone', timeoutMs: 20_000 }));
    const jobId = acquireSetRequestId('dave', 'gone');
    await until(async () => (await status(jobId)).body.state === 'waiting', 'the set waiting', 15_000);
    req.destroy();
    await until(async () => {
      const state = await queue.getJobState(jobId);
      return state === 'failed' || state === 'unknown';
    }, 'the set withdrawn', 15_000);
    const job = await Job.fromId(queue, jobId);
    if (job) expect(acquireFailureOf(job)).toBe(AcquireFailures.CANCELLED);
  }, 30_000);

  it('rejects invalid bodies with 400, naming the item', async () => {
    for (const body of [
      { owner: 'a', sandbox: 's', vms: [] },
      { owner: 'a', sandbox: 's', vms: [{}] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['nosuch'] }] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['base'], arch: 'x86_64' }] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['base'] }], extra: 1 },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['base'] }, { arch: 'sparc' }] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['base'] }], priority: 1 },
    ]) {
      expect((await post(body)).status).toBe(400);
    }
    expect((await post({ owner: 'a', sandbox: 's', vms: [{ groups: ['base'] }, { arch: 'sparc' }] })).body.message).toContain('vms[1]');
    // Nothing was enqueued for any of them.
    expect((await queue.getJobs(['waiting', 'delayed', 'active', 'failed', 'completed'])).filter((j) => j.data?.owner === 'a')).toEqual([]);
  });
});

describe('POST /acquire-set while the web process stops', () => {
  let kit: WebKit | undefined;
  afterAll(async () => kit?.close());

  it('answers a waiting set with 503 shutting_down and Retry-After at once, and withdraws it; it takes nothing', async () => {
    kit = await createWebKit('acquire-set-stop');
    await kit.startAcquireWorker();
    await kit.addReady('b1', '10.1.0.1', 0);
    const pending = kit.fetch('/api/v1/acquire-set', { method: 'POST', json: { owner: 'alice', sandbox: 'sb', vms: [{ groups: ['base'] }, { groups: ['arm'] }], requestId: 'stop', timeoutMs: 60_000 } });
    const k = kit;
    await until(async () => (await (await k.fetch(`/api/v1/requests/${acquireSetRequestId('alice', 'stop')}`)).json() as any).state === 'waiting', 'the set waiting', 15_000);
    const stopping = kit.web.stop(10_000);
    const res = await pending;
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(await res.json()).toMatchObject({ error: 'no_vm_available', details: { reason: 'shutting_down' } });
    await stopping;
    expect((await kit.vmm.getVmByName('b1')).state).toBe('ready');
    const queue = new Queue(ACQUIRE_QUEUE, { connection: kit.redis, prefix: kit.prefix });
    try {
      await until(async () => ['failed', 'unknown'].includes(await queue.getJobState(acquireSetRequestId('alice', 'stop'))), 'the set withdrawn', 15_000);
    } finally {
      await queue.close();
    }
  }, 40_000);
});
