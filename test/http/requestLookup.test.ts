import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ACQUIRE_QUEUE, acquireJobId, addAcquireJob } from '../../queues/acquire.js';
import { BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from './fixtures.js';

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
