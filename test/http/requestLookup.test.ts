import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ACQUIRE_QUEUE, acquireJobId, acquireSetRequestId, addAcquireJob, addAcquireSetJob } from '../../queues/acquire.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// GET /api/v1/requests/:id by task id, with a token bound to named owners: the owners' own job ids
// are read, never a SCAN of the whole Redis (which any tenant could make the pool run at will).
describe('request lookup by task id with an owner-bound token', () => {
  let kit: WebKit;
  let scans = 0;
  beforeAll(async () => {
    kit = await createWebKit('requestlookup', webTestConfig({ web: { auth: { tokens: [{ name: 'alice-ci', token: BUILDER_TOKEN, scopes: ['builder'], owners: ['alice', 'alice-2'] }] } } }));
    // Counts the web process's SCANs (its own reader, in this process).
    const reader = kit.web.vmm.reader;
    const scanKeys = reader.scanKeys.bind(reader);
    reader.scanKeys = (glob: string) => {
      scans += 1;
      return scanKeys(glob);
    };
    const queue = kit.vmm.queue(ACQUIRE_QUEUE);
    await addAcquireJob(queue, { owner: 'alice', sandbox: 'a/p', groups: [0], taskId: 'lookup-task', timeoutMs: 600_000 }, { jobId: acquireJobId('lookup-task', 'alice'), timestamp: Date.now() });
    await addAcquireJob(queue, { owner: 'bob', sandbox: 'b/p', groups: [0], taskId: 'lookup-task', timeoutMs: 600_000 }, { jobId: acquireJobId('lookup-task', 'bob'), timestamp: Date.now() });
  });
  afterAll(async () => kit?.close());

  it("finds the token's owner's request, not another's, without scanning", async () => {
    const res = await kit.fetch('/api/v1/requests/lookup-task', { token: BUILDER_TOKEN });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { owner: string }).owner).toBe('alice');
    const none = await kit.fetch('/api/v1/requests/no-such-task', { token: BUILDER_TOKEN });
    expect(none.status).toBe(404);
    expect(scans).toBe(0);
  });
});

// A set's request (an acquire-set job, queued: no acquire worker runs here) by its job id, and by its
// request id per owner, as task ids are; an id that names a task and a set of one owner is a 409.
describe('request lookup of sets', () => {
  let kit: WebKit;
  const get = async (path: string, token?: string) => {
    const res = await kit.fetch(path, token ? { token } : {});
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  beforeAll(async () => {
    kit = await createWebKit('requestlookup-set', webTestConfig({ web: { auth: { tokens: [{ name: 'alice-ci', token: BUILDER_TOKEN, scopes: ['builder'], owners: ['alice'] }, { name: 'admin', token: ADMIN_TOKEN, scopes: ['admin'] }] } } }));
    const queue = kit.vmm.queue(ACQUIRE_QUEUE);
    const set = { owner: 'alice', sandbox: 'a/p', vms: [{ groups: ['base'] }, { arch: 'aarch64' }], timeoutMs: 600_000 };
    await addAcquireSetJob(queue, { ...set, requestId: 'set-req' }, { jobId: acquireSetRequestId('alice', 'set-req'), timestamp: Date.now() });
    await addAcquireSetJob(queue, { ...set, owner: 'bob', requestId: 'set-req' }, { jobId: acquireSetRequestId('bob', 'set-req'), timestamp: Date.now() });
    // The same id as a task of alice and as a set request of alice.
    await addAcquireSetJob(queue, { ...set, requestId: 'both' }, { jobId: acquireSetRequestId('alice', 'both'), timestamp: Date.now() });
    await addAcquireJob(queue, { owner: 'alice', sandbox: 'a/p', groups: ['base'], taskId: 'both', timeoutMs: 600_000 }, { jobId: acquireJobId('both', 'alice'), timestamp: Date.now() });
  });
  afterAll(async () => kit?.close());

  it("finds the token's owner's set by request id and by job id, with its items; another owner's is a 404", async () => {
    const byRequest = await get('/api/v1/requests/set-req', BUILDER_TOKEN);
    expect(byRequest).toMatchObject({
      status: 200,
      body: { id: 'set-alice+set-req', kind: 'acquire-set', requestId: 'set-req', taskId: null, owner: 'alice', state: 'queued', groups: ['base', 'arm'], items: [{ groups: ['base'] }, { groups: ['arm'] }], vms: null, assignment: null },
    });
    expect((await get('/api/v1/requests/set-alice+set-req', BUILDER_TOKEN)).body).toEqual(byRequest.body);
    expect((await get('/api/v1/requests/set-bob+set-req', BUILDER_TOKEN)).status).toBe(404);
    // An admin (any owner): two owners' request ids are ambiguous without ?owner=.
    expect((await get('/api/v1/requests/set-req', ADMIN_TOKEN)).body.details).toMatchObject({ reason: 'ambiguous_task' });
    expect((await get('/api/v1/requests/set-req?owner=bob', ADMIN_TOKEN)).body.id).toBe('set-bob+set-req');
  });

  it('an id naming a task and a set of one owner is a 409 ambiguous_request; each is found by its job id', async () => {
    const res = await get('/api/v1/requests/both', BUILDER_TOKEN);
    expect(res).toMatchObject({ status: 409, body: { details: { reason: 'ambiguous_request', owner: 'alice' } } });
    expect(res.body.message).toContain('give the job id');
    expect((await get('/api/v1/requests/set-alice+both', BUILDER_TOKEN)).body.kind).toBe('acquire-set');
    expect((await get(`/api/v1/requests/${acquireJobId('both', 'alice')}`, BUILDER_TOKEN)).body.kind).toBe('acquire');
  });

  it('DELETE withdraws a queued set: its job is gone or fails as cancelled', async () => {
    const res = await kit.fetch('/api/v1/requests/set-alice+set-req', { method: 'DELETE', token: BUILDER_TOKEN, json: {} });
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ id: 'set-alice+set-req', kind: 'acquire-set' });
    const queue = kit.vmm.queue(ACQUIRE_QUEUE);
    // Queued (no acquire worker): it fails as cancelled when a worker takes it; the withdrawal is recorded now.
    expect(['waiting', 'failed']).toContain(await queue.getJobState('set-alice+set-req'));
  });
});
