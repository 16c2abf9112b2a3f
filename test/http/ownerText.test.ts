import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWebKit, type WebKit } from './fixtures.js';

// Owners and task ids name Redis keys and BullMQ job ids (as UTF-8): text that is not well-formed
// Unicode (a lone surrogate, which JSON can carry) is refused as a bad request, not a 500.
describe('owner and task id text', () => {
  let kit: WebKit;
  beforeAll(async () => {
    kit = await createWebKit('ownertext');
  });
  afterAll(async () => kit?.close());

  for (const [field, value] of [
    ['owner', { owner: 'alice\ud800', sandbox: 's', taskId: 't1' }],
    ['taskId', { owner: 'alice', sandbox: 's', taskId: 't\udc00' }],
  ] as const) {
    it(`a lone surrogate in ${field} is a 400`, async () => {
      const res = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { ...value, groups: ['base'], timeoutMs: 1000 } });
      const body = (await res.json()) as { error: string };
      expect(res.status).toBe(400);
      expect(body.error).toBe('validation_error');
    });
  }
});
