import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWebKit, type WebKit } from './fixtures.js';

// POST /acquire-set against a real web server and the real Redis (open mode).
describe('HTTP API: POST /acquire-set', () => {
  let kit: WebKit;
  const json = async (res: Response) => ({ status: res.status, body: (await res.json()) as any });
  const post = async (body: unknown) => json(await kit.fetch('/api/v1/acquire-set', { method: 'POST', json: body }));

  beforeAll(async () => {
    kit = await createWebKit('acquire-set');
    await kit.addReady('b1', '10.1.0.1', 0);
  });
  afterAll(async () => kit?.close());

  it('waits holding nothing, then returns every VM of the set with its own lease; renew and release each', async () => {
    const answer = post({ owner: 'alice', sandbox: 'sb', vms: [{ groups: ['base'] }, { arch: 'aarch64' }], requestId: 'r-1', timeoutMs: 10_000 });
    // The set cannot be had yet: b1 is not taken meanwhile.
    await new Promise((r) => setTimeout(r, 600));
    expect((await kit.vmm.getVmByName('b1')).state).toBe('ready');
    await kit.addReady('a1', '10.2.0.1', 1);
    const { status, body } = await answer;
    expect(status).toBe(200);
    expect(body.vms.map((v: any) => [v.vmName, v.group])).toEqual([
      ['b1', 'base'],
      ['a1', 'arm'],
    ]);
    expect(body.vms[0].leaseId).not.toBe(body.vms[1].leaseId);

    // The same request id (a retry after a lost answer) gets the same VMs and leases.
    const again = await post({ owner: 'alice', sandbox: 'sb', vms: [{ groups: ['base'] }, { arch: 'aarch64' }], requestId: 'r-1', timeoutMs: 1_000 });
    expect(again.body.vms).toEqual(body.vms);

    for (const v of body.vms) {
      const renewed = await json(await kit.fetch(`/api/v1/vms/${v.vmName}/renew`, { method: 'POST', json: { leaseId: v.leaseId } }));
      expect(renewed.status).toBe(200);
      const released = await json(await kit.fetch(`/api/v1/vms/${v.vmName}/release`, { method: 'POST', json: { leaseId: v.leaseId } }));
      expect(released.status).toBe(200);
    }
  });

  it('answers 503 when the whole set does not come in time, having taken nothing', async () => {
    await kit.addReady('b9', '10.1.0.9', 0);
    const res = await post({ owner: 'bob', sandbox: 'x', vms: [{ groups: ['base'] }, { groups: ['base'] }], timeoutMs: 300 });
    expect(res).toMatchObject({ status: 503, body: { error: 'no_vm_available' } });
    expect((await kit.vmm.getVmByName('b9')).state).toBe('ready');
  });

  it('rejects invalid bodies with 400', async () => {
    for (const body of [
      { owner: 'a', sandbox: 's', vms: [] },
      { owner: 'a', sandbox: 's', vms: [{}] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['nosuch'] }] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['base'], arch: 'x86_64' }] },
      { owner: 'a', sandbox: 's', vms: [{ groups: ['base'] }], extra: 1 },
    ]) {
      expect((await post(body)).status).toBe(400);
    }
  });
});

describe('POST /acquire-set while the web process stops', () => {
  let kit: WebKit | undefined;
  afterAll(async () => kit?.close());

  it('answers a waiting set with 503 shutting_down and Retry-After at once; it takes nothing', async () => {
    kit = await createWebKit('acquire-set-stop');
    await kit.addReady('b1', '10.1.0.1', 0);
    const pending = kit.fetch('/api/v1/acquire-set', { method: 'POST', json: { owner: 'alice', sandbox: 'sb', vms: [{ groups: ['base'] }, { groups: ['arm'] }], timeoutMs: 60_000 } });
    // Let it try (and find no arm VM) at least once.
    await new Promise((r) => setTimeout(r, 400));
    const stopping = kit.web.stop(10_000);
    const res = await pending;
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(await res.json()).toMatchObject({ error: 'no_vm_available', details: { reason: 'shutting_down' } });
    await stopping;
    expect((await kit.vmm.getVmByName('b1')).state).toBe('ready');
  });
});
