import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/program.js';
import { parseConfig } from '../../src/config/index.js';
import { groupSummaries } from '../../src/poolView.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { decideStartSpawnIfRequired } from '../../src/reconcile/decisions.js';
import { VmMaster } from '../../src/reconcile/vmMaster.js';
import { writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from '../http/fixtures.js';

// `vmpool drain GROUP` / `undrain`: at run time, a group spawns nothing (as max_vm_total: 0) while
// its VMs are still served and retired by their timeouts; shown by `vmpool info`, the API and the pool page.
const input = { redis: { url: REDIS_URL }, groups: [{ name: 'builders', min_ready: 2, vm_spawn_min_interval: 0, vm_dirty_terminating_timeout: 60 }, { name: 'other' }] };

describe('the decision', () => {
  it('spawns nothing for a drained group, whatever min_ready and demand ask', () => {
    const config = parseConfig(input, {});
    const group = { group: 'builders', spawnsInFlight: [], demand: 3, lastSpawnStart: null };
    const now = 1_750_000_000_000;
    expect(decideStartSpawnIfRequired({ vms: [], groups: [group], serverStart: 0 }, config, now)).toHaveLength(2);
    expect(decideStartSpawnIfRequired({ vms: [], groups: [{ ...group, drained: true }], serverStart: 0 }, config, now)).toEqual([]);
  });
});

describe('vmpool drain and undrain', () => {
  const prefix = uniquePrefix('rtdrain');
  const clock = { now: 1_750_000_000_000 };
  let redis: Redis;
  let vmm: VmManager;
  let master: VmMaster;
  const file = writeConfigFile(input);
  let out = '';
  const io = { out: (t: string) => (out += t), err: (t: string) => (out += t), env: { VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent' } };
  const cli = async (...args: string[]) => {
    out = '';
    const code = await runCli(['--config', file, ...args], io);
    return { code, out };
  };
  const spawnsInFlight = async () => (await vmm.getSpawnsInFlight('builders')).length;

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
    master = new VmMaster(vmm);
    await vmm.markServerStart();
  });
  beforeEach(async () => {
    await deleteKeysWithPrefix(redis, prefix);
    await vmm.markServerStart();
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it('stops spawns, keeps serving and retiring the VMs, and undrain brings spawns back', async () => {
    await vmm.addVmToPool('10.6.0.1', 'kept-1', 'builders');
    await vmm.startVmCheck('kept-1');
    await vmm.recordHealthCheckResult('kept-1', true);

    const drained = await cli('drain', 'builders');
    expect(drained).toEqual({ code: 0, out: 'group builders drained: nothing is spawned for it; its 1 VM is still served and retired by their timeouts (undo: vmpool undrain builders)\n' });
    // The CLI runs on the real clock.
    const since = (await vmm.drainedSince('builders'))!;
    expect(Math.abs(since - Date.now())).toBeLessThan(60_000);
    expect((await cli('drain', '0')).out).toBe(`group builders was already drained (since ${new Date(since).toISOString()})\n`);
    expect((await cli('info')).out).toMatch(/Group 0 \(builders, archs: -\): 1 VMs, max 8, drained just now \(vmpool undrain builders\)/);
    const [summary] = await groupSummaries(vmm);
    expect(summary).toMatchObject({ drained: true, drainedSince: since });

    // min_ready 2 asks for spawns; none start. The VM is still handed out and retired by the dirty timeout.
    expect((await master.doCycle()).counts.startSpawnIfRequired).toBe(0);
    expect(await spawnsInFlight()).toBe(0);
    const vm = await vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/p', workerId: 'w' });
    expect(vm.vmName).toBe('kept-1');
    await vmm.releaseVm('kept-1');
    clock.now += 61_000;
    const report = await master.doCycle();
    expect(report.counts).toMatchObject({ startSpawnIfRequired: 0, removeOldDirtyVms: 1 });
    // The other group was never drained.
    expect(await vmm.drainedSince('other')).toBeNull();

    expect(await cli('undrain', 'builders')).toEqual({ code: 0, out: 'group builders undrained\n' });
    expect((await cli('undrain', 'builders')).out).toBe('group builders was not drained\n');
    expect((await master.doCycle()).counts.startSpawnIfRequired).toBe(2);
    expect(await spawnsInFlight()).toBe(2);
  });

  it('refuses an unknown group with exit 2, changing nothing', async () => {
    const res = await cli('drain', 'nope');
    expect(res.code).toBe(2);
    expect(res.out).toContain('unknown group "nope"; groups: 0 (builders), 1 (other)');
    expect(await vmm.drainedSince('builders')).toBeNull();
  });
});

describe('POST and DELETE /api/v1/groups/:group/drain', () => {
  let kit: WebKit;
  beforeAll(async () => {
    kit = await createWebKit('rtdrain-http', webTestConfig({ web: { auth: { tokens: [{ token: ADMIN_TOKEN, scopes: ['admin'] }, { token: BUILDER_TOKEN, scopes: ['builder'] }] } } }));
  });
  afterAll(async () => kit?.close());

  it('drains and undrains (admin only), and the pool page shows it', async () => {
    expect((await kit.fetch('/api/v1/groups/base/drain', { method: 'POST', json: {}, token: BUILDER_TOKEN })).status).toBe(403);
    expect((await kit.fetch('/api/v1/groups/nope/drain', { method: 'POST', json: {}, token: ADMIN_TOKEN })).status).toBe(404);
    expect((await kit.fetch('/api/v1/groups/base/drain', { method: 'POST', token: ADMIN_TOKEN })).status).toBe(415);
    expect(await kit.vmm.drainedSince('base')).toBeNull();

    const res = await kit.fetch('/api/v1/groups/base/drain', { method: 'POST', json: {}, token: ADMIN_TOKEN });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { drained: boolean; changed: boolean; group: { id: number; drained: boolean; drainedSince: number } };
    expect(body).toMatchObject({ drained: true, changed: true, group: { id: 0, drained: true } });
    expect(body.group.drainedSince).toBe(await kit.vmm.drainedSince('base'));
    expect(((await (await kit.fetch('/api/v1/groups/0/drain', { method: 'POST', json: {}, token: ADMIN_TOKEN })).json()) as { changed: boolean }).changed).toBe(false);

    const page = await (await kit.fetch('/', { token: ADMIN_TOKEN })).text();
    const base = page.slice(page.indexOf('data-group="0"'), page.indexOf('data-group="1"'));
    expect(base).toMatch(/<p class="drained" data-drained="1"><span class="drained-badge">drained since <time [^>]*>[^<]+<\/time><\/span>: nothing is spawned/);
    expect(base).toContain('data-action="undrain" data-group="base"');
    expect(page.slice(page.indexOf('data-group="1"'))).toContain('data-action="drain" data-group="arm"');
    const metrics = await (await kit.fetch('/metrics', { token: ADMIN_TOKEN })).text();
    expect(metrics).toContain('vmpool_group_drained{group="base"} 1');
    expect(metrics).toContain('vmpool_group_drained{group="arm"} 0');

    const undo = await kit.fetch('/api/v1/groups/base/drain', { method: 'DELETE', json: {}, token: ADMIN_TOKEN });
    expect(((await undo.json()) as { drained: boolean; changed: boolean }).changed).toBe(true);
    expect(await kit.vmm.drainedSince('base')).toBeNull();
    const groups = (await (await kit.fetch('/api/v1/groups', { token: ADMIN_TOKEN })).json()) as { groups: { drained: boolean; drainedSince: number | null }[] };
    expect(groups.groups[0]).toMatchObject({ drained: false, drainedSince: null });
  });

  it('a group whose config sets max_vm_total: 0 shows as drained by its config, with no undrain button', async () => {
    const zero = await createWebKit('rtdrain-zero', webTestConfig({ groups: [{ name: 'hand', max_vm_total: 0 }] }));
    try {
      const page = await (await zero.fetch('/')).text();
      expect(page).toContain('drained by its config (max_vm_total: 0)');
      expect(page).not.toContain('data-action="undrain"');
    } finally {
      await zero.close();
    }
  });
});
