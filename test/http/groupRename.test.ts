import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_TOKEN, BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// POST /api/v1/groups/{group}/rename: `vmpool group rename` over HTTP (admin scope). The renamed
// group is not in the web process's config: it shows as removed from config, and drains.
let kit: WebKit;
beforeAll(async () => {
  kit = await createWebKit('group-rename', webTestConfig({ web: { auth: { tokens: [{ token: ADMIN_TOKEN, scopes: ['admin'] }, { token: BUILDER_TOKEN, scopes: ['builder'] }] } } }));
  await kit.addReady('r-arm-1', '10.61.0.1', 'arm');
  await kit.vmm.registerConfigGroups();
});
afterAll(async () => kit?.close());

describe('POST /api/v1/groups/{group}/rename', () => {
  it('renames a group with its VMs (admin only); the new name drains as removed until the config names it', async () => {
    const post = (group: string, json: unknown, token = ADMIN_TOKEN) => kit.fetch(`/api/v1/groups/${group}/rename`, { method: 'POST', json, token });
    expect((await post('arm', { to: 'arm64' }, BUILDER_TOKEN)).status).toBe(403);
    expect((await post('sparc', { to: 'sparc64' })).status).toBe(404);
    expect((await post('arm', { to: 'no:colon' })).status).toBe(400);
    expect((await post('arm', { to: 'base' })).status).toBe(400);
    expect((await kit.vmm.getVmByName('r-arm-1')).group).toBe('arm');

    const res = await post('1', { to: 'arm64' });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ from: 'arm', to: 'arm64', vms: 1 });
    expect((await kit.vmm.getVmByName('r-arm-1')).group).toBe('arm64');
    const groups = (await (await kit.fetch('/api/v1/groups', { token: ADMIN_TOKEN })).json()) as { groups: { id: number | null; name: string; removedFromConfig: boolean; total: number }[] };
    expect(groups.groups.map((g) => [g.name, g.id, g.removedFromConfig, g.total])).toEqual([
      ['base', 0, false, 0],
      ['arm', 1, false, 0],
      ['arm64', null, true, 1],
    ]);
    const vms = (await (await kit.fetch('/api/v1/vms?group=arm64', { token: ADMIN_TOKEN })).json()) as { vms: { vmName: string; groupIndex: number | null }[] };
    expect(vms.vms).toMatchObject([{ vmName: 'r-arm-1', groupIndex: null }]);
    expect(await (await kit.fetch('/', { token: ADMIN_TOKEN })).text()).toContain('removed from config');
  });
});
