import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// The autohold routes (admin) and the release body's outcome, against the real web process code.
describe('autohold over HTTP', () => {
  let kit: WebKit;
  beforeAll(async () => {
    kit = await createWebKit('http-autohold', webTestConfig());
  });
  afterAll(async () => kit?.close());

  it('adds, lists and deletes rules; a release with outcome failed is held by the rule, shown on the pool page', async () => {
    const bad = await kit.fetch('/api/v1/autoholds', { method: 'POST', json: { count: 0, reason: 'x' } });
    expect(bad.status).toBe(400);
    expect(((await (await kit.fetch('/api/v1/autoholds')).json()) as { rules: unknown[] }).rules).toEqual([]);

    const added = await kit.fetch('/api/v1/autoholds', { method: 'POST', json: { owner: 'alice', count: 1, for: 600, reason: 'flaky test' } });
    expect(added.status).toBe(201);
    const { rule } = (await added.json()) as { rule: { id: number; count: number; group: string } };
    expect(rule).toMatchObject({ count: 1, group: '*' });

    await kit.addReady('ah-v1', '10.66.0.1');
    const vm = await kit.vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/p', workerId: 'w' });
    const leaseId = (await kit.vmm.getVmRecord(vm.vmName)).leaseId!;
    const badOutcome = await kit.fetch(`/api/v1/vms/${vm.vmName}/release`, { method: 'POST', json: { leaseId, outcome: 'meh' } });
    expect(badOutcome.status).toBe(400);
    expect((await kit.vmm.getVmRecord(vm.vmName)).state).toBe('in_use');
    const released = await kit.fetch(`/api/v1/vms/${vm.vmName}/release`, { method: 'POST', json: { leaseId, outcome: 'failed' } });
    expect(released.status).toBe(200);
    expect(((await released.json()) as { vm: { heldBy: string } }).vm.heldBy).toBe(`autohold:${rule.id}`);
    expect(((await (await kit.fetch('/api/v1/autoholds')).json()) as { rules: unknown[] }).rules).toEqual([]);
    expect(await (await kit.fetch('/')).text()).toContain(`autohold:${rule.id}`);

    const second = (await (await kit.fetch('/api/v1/autoholds', { method: 'POST', json: { count: 3, reason: 'later' } })).json()) as { rule: { id: number } };
    const page = await (await kit.fetch('/')).text();
    expect(page).toContain(`data-autohold="${second.rule.id}"`);
    expect(page).toContain('later');
    expect((await kit.fetch(`/api/v1/autoholds/${second.rule.id}`, { method: 'DELETE', json: {} })).status).toBe(200);
    expect((await kit.fetch(`/api/v1/autoholds/${second.rule.id}`, { method: 'DELETE', json: {} })).status).toBe(404);
    expect((await kit.fetch('/api/v1/autoholds/abc', { method: 'DELETE', json: {} })).status).toBe(400);
  });
});
