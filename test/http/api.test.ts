import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { startWebServer } from '../../src/http/server.js';
import { openApiDocument } from '../../src/http/openapi.js';
import { QueueNames } from '../../queues/names.js';
import { JSON_TYPE, createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// The HTTP API against a real web server, the real acquire worker and the real Redis (open mode:
// bound to loopback without tokens). Auth is covered in auth.test.ts.
describe('HTTP API', () => {
  let kit: WebKit;
  const json = async (res: Response) => ({ status: res.status, body: (await res.json()) as any });

  beforeAll(async () => {
    kit = await createWebKit('api');
    await kit.startAcquireWorker();
    await kit.addReady('b1', '10.1.0.1', 0);
    await kit.addReady('b2', '10.1.0.2', 0);
    await kit.addReady('a1', '10.2.0.1', 1);
    await kit.vmm.addVmToPool('10.1.0.3', 'b3', 'base'); // got_ip
  });
  afterAll(async () => kit?.close());

  it('/healthz and /readyz answer', async () => {
    expect(await json(await kit.fetch('/healthz'))).toEqual({ status: 200, body: { status: 'ok' } });
    expect(await json(await kit.fetch('/readyz'))).toEqual({ status: 200, body: { status: 'ready' } });
  });

  it('/readyz is 503 when Redis does not answer', async () => {
    // A web process pointed at a port where no Redis listens (the shared Redis is left alone).
    const config = parseConfig(webTestConfig({ redis: { url: 'redis://127.0.0.1:1' } }), {});
    const web = await startWebServer(config, { port: 0 });
    try {
      const res = await fetch(new URL('readyz', web.url));
      const body = (await res.json()) as any;
      expect(res.status).toBe(503);
      expect(body).toMatchObject({ error: 'not_ready', message: expect.stringContaining('Redis') });
      expect((await fetch(new URL('healthz', web.url))).status).toBe(200);
    } finally {
      await web.stop(1_000);
    }
  });

  it('GET /vms lists the pool, with filters', async () => {
    const all = await json(await kit.fetch('/api/v1/vms'));
    expect(all.status).toBe(200);
    const pool = await kit.vmm.getAllVms();
    expect(all.body.vms.map((v: any) => v.vmName).sort()).toEqual(pool.map((v) => v.vmName).sort());
    const b1 = all.body.vms.find((v: any) => v.vmName === 'b1');
    expect(b1).toMatchObject({ vmIp: '10.1.0.1', group: 'base', groupName: 'base', state: 'ready', heldBy: null });
    expect(b1).not.toHaveProperty('leaseId');

    const arm = await json(await kit.fetch('/api/v1/vms?group=arm'));
    expect(arm.body.vms.map((v: any) => v.vmName)).toEqual(['a1']);
    expect((await json(await kit.fetch('/api/v1/vms?group=1'))).body.vms.map((v: any) => v.vmName)).toEqual(['a1']);
    const gotIp = await json(await kit.fetch('/api/v1/vms?state=got_ip'));
    expect(gotIp.body.vms.map((v: any) => v.vmName)).toEqual(['b3']);
    expect((await json(await kit.fetch('/api/v1/vms?owner=nobody'))).body.vms).toEqual([]);

    const badState = await json(await kit.fetch('/api/v1/vms?state=sleeping'));
    expect(badState).toMatchObject({ status: 400, body: { error: 'validation_error', details: { state: 'sleeping' } } });
    expect((await json(await kit.fetch('/api/v1/vms?group=nope'))).status).toBe(400);
  });

  it('GET /vms pages in name order with cursor and limit, through the filters', async () => {
    const names = (await kit.vmm.getAllVms()).map((v) => v.vmName).sort((a, b) => (a < b ? -1 : 1));
    expect(names.length).toBeGreaterThan(2);
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: any = await json(await kit.fetch(`/api/v1/vms?limit=2${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`));
      expect(page.status).toBe(200);
      expect(page.body.vms.length).toBeLessThanOrEqual(2);
      seen.push(...page.body.vms.map((v: any) => v.vmName));
      cursor = page.body.next;
      pages++;
    } while (cursor !== null && pages < 100);
    expect(seen).toEqual(names);
    expect(pages).toBe(Math.ceil(names.length / 2));
    // The whole list fits in the default page: next is null.
    expect((await json(await kit.fetch('/api/v1/vms'))).body.next).toBeNull();
    const base = (await kit.vmm.getAllVms()).filter((v) => v.group === 'base').map((v) => v.vmName).sort((a, b) => (a < b ? -1 : 1));
    const first = await json(await kit.fetch('/api/v1/vms?group=base&limit=1'));
    expect(first.body).toMatchObject({ next: base.length > 1 ? base[0] : null });
    expect(first.body.vms.map((v: any) => v.vmName)).toEqual([base[0]]);
    for (const bad of ['0', '5001', 'x', '1.5']) {
      expect(await json(await kit.fetch(`/api/v1/vms?limit=${bad}`))).toMatchObject({ status: 400, body: { error: 'validation_error', details: { limit: bad } } });
    }
    expect((await json(await kit.fetch('/api/v1/vms?cursor=..bad..'))).status).toBe(400);
  });

  it('GET /vms/:name returns one VM; 404 unknown, 400 invalid name', async () => {
    const one = await json(await kit.fetch('/api/v1/vms/b3'));
    expect(one).toMatchObject({ status: 200, body: { vmName: 'b3', state: 'got_ip', groupName: 'base' } });
    const missing = await json(await kit.fetch('/api/v1/vms/zzz'));
    expect(missing).toMatchObject({ status: 404, body: { error: 'not_found', details: { vmName: 'zzz' } } });
    expect(typeof missing.body.message).toBe('string');
    expect((await json(await kit.fetch('/api/v1/vms/..bad..'))).status).toBe(400);
  });

  it('GET /groups reports limits, counts per state, min_ready, demand and spawns in flight', async () => {
    await kit.vmm.registerSpawn('arm', 'spawn-test-1');
    const { status, body } = await json(await kit.fetch('/api/v1/groups'));
    expect(status).toBe(200);
    const [base, arm] = body.groups;
    const baseVms = await kit.vmm.getAllVmsInGroup('base');
    expect(base).toMatchObject({ id: 0, name: 'base', archs: ['x86_64'], minReady: 1, total: baseVms.length, demand: 0, spawnsInFlight: 0 });
    expect(base.limits).toEqual({ max_vm_total: 6, max_vm_per_user: 2, max_spawn_processes: 2, owner_vm_limit: 2 });
    expect(base.counts.ready).toBe(baseVms.filter((v) => v.state === 'ready').length);
    expect(base.counts.got_ip).toBe(1);
    expect(arm).toMatchObject({ id: 1, name: 'arm', minReady: 0, spawnsInFlight: 1, total: 1 });
    await kit.vmm.finishSpawn('arm', 'spawn-test-1');
  });

  it('POST /acquire returns the assignment; renew and release work with its lease', async () => {
    const acquired = await json(await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'alice', sandbox: 'sb', arch: 'aarch64', timeoutMs: 5_000 } }));
    expect(acquired.status).toBe(200);
    const a = acquired.body;
    expect(a).toMatchObject({ vmName: 'a1', vmIp: '10.2.0.1', group: 'arm' });
    const record = await kit.vmm.getVmRecord('a1');
    expect(record).toMatchObject({ state: 'in_use', owner: 'alice', sandbox: 'sb', leaseId: a.leaseId, leaseExpiresAt: a.leaseExpiresAt });

    const renewed = await json(await kit.fetch('/api/v1/vms/a1/renew', { method: 'POST', json: { leaseId: a.leaseId } }));
    expect(renewed).toMatchObject({ status: 200, body: { vmName: 'a1', leaseId: a.leaseId } });
    expect(renewed.body.leaseExpiresAt).toBe((await kit.vmm.getVmRecord('a1')).leaseExpiresAt);

    const wrongRenew = await json(await kit.fetch('/api/v1/vms/a1/renew', { method: 'POST', json: { leaseId: 'not-the-lease' } }));
    expect(wrongRenew).toMatchObject({ status: 409, body: { error: 'conflict', details: { reason: 'lease_mismatch' } } });
    const wrongRelease = await json(await kit.fetch('/api/v1/vms/a1/release', { method: 'POST', json: { leaseId: 'not-the-lease' } }));
    expect(wrongRelease.status).toBe(409);
    expect((await kit.vmm.getVmRecord('a1')).state).toBe('in_use');

    const released = await json(await kit.fetch('/api/v1/vms/a1/release', { method: 'POST', json: { leaseId: a.leaseId } }));
    // The HTTP record keeps boundToUser, the deprecated alias of owner, for clients written before it.
    expect(released).toMatchObject({ status: 200, body: { released: true, vm: { vmName: 'a1', state: 'ready', owner: 'alice', boundToUser: 'alice' } } });
    expect((await kit.vmm.getVmRecord('a1')).state).toBe('ready');
    const again = await json(await kit.fetch('/api/v1/vms/a1/release', { method: 'POST', json: {} }));
    expect(again).toMatchObject({ status: 409, body: { details: { reason: 'not_in_use', state: 'ready' } } });
    const renewReleased = await json(await kit.fetch('/api/v1/vms/a1/renew', { method: 'POST', json: { leaseId: a.leaseId } }));
    expect(renewReleased).toMatchObject({ status: 409, body: { details: { reason: 'not_in_use' } } });
    expect((await kit.fetch('/api/v1/vms/nope/renew', { method: 'POST', json: { leaseId: 'x' } })).status).toBe(404);
    expect((await kit.fetch('/api/v1/vms/nope/release', { method: 'POST', json: {} })).status).toBe(404);
  });

  it('POST /acquire answers 503 with the reason when no VM comes in time', async () => {
    // The only arm VM (a1) is bound to alice's sandbox, so carol finds nothing there.
    const res = await json(await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'carol', sandbox: 'y', groups: [1], timeoutMs: 300 } }));
    expect(res.status).toBe(503);
    expect(res.body.error).toBe('no_vm_available');
    expect(res.body.details.reason).toMatch(/NoVmAvailable|no VM/i);
    expect((await kit.vmm.getVmRecord('a1')).state).toBe('ready');
  });

  it('POST /acquire rejects invalid bodies with 400 and enqueues nothing', async () => {
    const queue = new Queue(QueueNames.ACQUIRE, { connection: kit.redis, prefix: kit.prefix });
    try {
      const before = await queue.getJobCountByTypes('waiting', 'active', 'completed', 'failed', 'delayed', 'prioritized');
      const bad: unknown[] = [
        { sandbox: 'sb', arch: 'x86_64' }, // no owner
        { owner: 'a', sandbox: 'sb' }, // neither groups nor arch
        { owner: 'a', sandbox: 'sb', arch: 'x86_64', groups: [0] }, // both
        { owner: 'a', sandbox: 'sb', groups: [7] }, // unknown group
        { owner: 'a', sandbox: 'sb', arch: 'sparc' }, // no group has the arch
        { owner: 'a', sandbox: 'sb', arch: 'x86_64', extra: 1 }, // unknown key
        { owner: 'a', sandbox: 'sb', arch: 'x86_64', timeoutMs: -1 },
        '{"owner": ', // malformed JSON
      ];
      for (const body of bad) {
        const res = await json(await kit.fetch('/api/v1/acquire', { method: 'POST', json: body }));
        expect(res.status, JSON.stringify(body)).toBe(400);
        expect(res.body.error).toBe('validation_error');
        expect(res.body.message).toBeTruthy();
      }
      const after = await queue.getJobCountByTypes('waiting', 'active', 'completed', 'failed', 'delayed', 'prioritized');
      expect(after).toBe(before);
    } finally {
      await queue.close();
    }
  });

  it('hold and unhold a VM; refusals are 409 and 404', async () => {
    const held = await json(await kit.fetch('/api/v1/vms/b2/hold', { method: 'POST', json: { by: 'ops-team' } }));
    expect(held).toMatchObject({ status: 200, body: { held: true, vm: { vmName: 'b2', heldBy: 'ops-team' } } });
    expect(await kit.redis.hget(kit.keys.vm('b2'), 'held_by')).toBe('ops-team');
    expect(await kit.redis.zscore(kit.keys.readyClean('base'), 'b2')).toBeNull();

    const twice = await json(await kit.fetch('/api/v1/vms/b2/hold', { method: 'POST', json: {} }));
    expect(twice).toMatchObject({ status: 409, body: { details: { reason: 'already_held', heldBy: 'ops-team' } } });
    expect((await kit.fetch('/api/v1/vms/b2/hold', { method: 'POST', json: { by: '' } })).status).toBe(400);

    const unheld = await json(await kit.fetch('/api/v1/vms/b2/hold', { method: 'DELETE', headers: JSON_TYPE }));
    expect(unheld).toMatchObject({ status: 200, body: { held: false, vm: { heldBy: null } } });
    expect(await kit.redis.zscore(kit.keys.readyClean('base'), 'b2')).not.toBeNull();
    expect((await json(await kit.fetch('/api/v1/vms/b2/hold', { method: 'DELETE', headers: JSON_TYPE }))).body.details.reason).toBe('not_held');
    expect((await kit.fetch('/api/v1/vms/nope/hold', { method: 'POST', json: {} })).status).toBe(404);
    expect((await kit.fetch('/api/v1/vms/nope/hold', { method: 'DELETE', headers: JSON_TYPE })).status).toBe(404);
  });

  it('terminate enqueues an operator termination; refusals are 409 and 404', async () => {
    const res = await json(await kit.fetch('/api/v1/vms/b3/terminate', { method: 'POST', json: {} }));
    expect(res).toMatchObject({ status: 202, body: { terminating: true, vm: { vmName: 'b3', state: 'terminating' } } });
    const rec = await kit.vmm.getVmRecord('b3');
    expect(rec.state).toBe('terminating');
    const queue = new Queue(QueueNames.TERMINATE, { connection: kit.redis, prefix: kit.prefix });
    try {
      const jobs = await queue.getJobs(['waiting', 'prioritized', 'delayed']);
      expect(jobs.map((j) => j.data)).toContainEqual({ vmName: 'b3', reason: 'operator' });
    } finally {
      await queue.close();
    }
    expect((await json(await kit.fetch('/api/v1/vms/b3/terminate', { method: 'POST', json: {} }))).body.details.reason).toBe('already_terminating');
    const holdTerminating = await json(await kit.fetch('/api/v1/vms/b3/hold', { method: 'POST', json: {} }));
    expect(holdTerminating.status).toBe(409);
    expect((await kit.fetch('/api/v1/vms/nope/terminate', { method: 'POST', json: {} })).status).toBe(404);
    expect((await kit.fetch('/api/v1/vms/b1/terminate', { method: 'POST', json: { force: true } })).status).toBe(400);
  });

  it('refuses POST and DELETE without Content-Type: application/json (415), changing nothing', async () => {
    // What a cross-site page can send without a CORS preflight: a form (url-encoded, multipart or
    // text/plain), or an empty POST with no content type at all.
    await kit.addReady('c1', '10.1.0.9', 0);
    const notJson: [string, RequestInit][] = [
      ['form', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'by=attacker' }],
      ['multipart', { body: (() => { const f = new FormData(); f.set('by', 'attacker'); return f; })() }],
      ['text/plain', { headers: { 'content-type': 'text/plain' }, body: '{}' }],
      ['missing', {}],
    ];
    for (const action of ['terminate', 'hold']) {
      for (const [what, init] of notJson) {
        const res = await json(await kit.fetch(`/api/v1/vms/c1/${action}`, { method: 'POST', ...init }));
        expect(res.status, `${action} ${what}`).toBe(415);
        expect(res.body).toMatchObject({ error: 'unsupported_media_type', message: expect.stringContaining('application/json'), details: {} });
      }
    }
    const untouched = await kit.vmm.getVmRecord('c1');
    expect(untouched).toMatchObject({ state: 'ready', heldBy: null });
    expect(await kit.redis.zscore(kit.keys.readyClean('base'), 'c1')).not.toBeNull();

    // DELETE needs the type too (the page's own script sends it); the hold stays.
    expect((await kit.fetch('/api/v1/vms/c1/hold', { method: 'POST', json: { by: 'ops' } })).status).toBe(200);
    const unholdBare = await json(await kit.fetch('/api/v1/vms/c1/hold', { method: 'DELETE' }));
    expect(unholdBare).toMatchObject({ status: 415, body: { error: 'unsupported_media_type' } });
    expect((await kit.vmm.getVmRecord('c1')).heldBy).toBe('ops');
    // A charset parameter is fine.
    const unheld = await kit.fetch('/api/v1/vms/c1/hold', { method: 'DELETE', headers: { 'content-type': 'application/json; charset=utf-8' } });
    expect(unheld.status).toBe(200);
    expect((await kit.vmm.getVmRecord('c1')).heldBy).toBeNull();

    // Every documented POST and DELETE refuses a bare request, and an acquire form enqueues nothing.
    const queue = new Queue(QueueNames.ACQUIRE, { connection: kit.redis, prefix: kit.prefix });
    try {
      const before = await queue.getJobCountByTypes('waiting', 'active', 'completed', 'failed', 'delayed', 'prioritized');
      const writes = Object.entries(openApiDocument.paths).flatMap(([path, ops]) =>
        Object.keys(ops)
          .filter((m) => m === 'post' || m === 'delete')
          .map((m) => [m.toUpperCase(), path.replace('{name}', 'c1').replace('{group}', 'base').replace('{id}', '1')] as const),
      );
      expect(writes.length).toBe(14);
      for (const [method, path] of writes) {
        expect((await kit.fetch(`/api/v1${path}`, { method })).status, `${method} ${path}`).toBe(415);
      }
      const form = 'owner=attacker&sandbox=x&arch=x86_64';
      const acquireForm = await kit.fetch('/api/v1/acquire', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form });
      expect(acquireForm.status).toBe(415);
      expect(await queue.getJobCountByTypes('waiting', 'active', 'completed', 'failed', 'delayed', 'prioritized')).toBe(before);
    } finally {
      await queue.close();
    }
    expect(await kit.vmm.getVmRecord('c1')).toMatchObject({ state: 'ready', heldBy: null, owner: null });
  });

  it('unknown routes are 404 JSON errors', async () => {
    const res = await json(await kit.fetch('/api/v1/nothing'));
    expect(res).toMatchObject({ status: 404, body: { error: 'not_found' } });
    expect((await kit.fetch('/nothing-here')).status).toBe(404);
  });

  it('publishes an OpenAPI document that lists every route, and every listed route exists', async () => {
    const { status, body } = await json(await kit.fetch('/api/v1/openapi.json'));
    expect(status).toBe(200);
    expect(body.openapi).toMatch(/^3\./);
    const listed = Object.entries(body.paths as Record<string, Record<string, unknown>>).flatMap(([path, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`),
    );
    expect(listed.sort()).toEqual(
      [
        'POST /acquire',
        'POST /acquire-set',
        'GET /vms',
        'GET /vms/{name}',
        'POST /vms/{name}/release',
        'POST /vms/{name}/renew',
        'POST /vms/{name}/terminate',
        'POST /vms/{name}/hold',
        'DELETE /vms/{name}/hold',
        'GET /groups',
        'DELETE /groups/{group}/breaker',
        'POST /groups/{group}/drain',
        'DELETE /groups/{group}/drain',
        'GET /autoholds',
        'POST /autoholds',
        'DELETE /autoholds/{id}',
        'POST /groups/{group}/rename',
        'GET /events',
        'GET /requests/{id}',
        'DELETE /requests/{id}',
        'GET /openapi.json',
      ].sort(),
    );
    expect(body).toEqual(JSON.parse(JSON.stringify(openApiDocument)));
    // Each documented route is served: a request reaches its handler (never "no such API route").
    for (const entry of listed) {
      const [method, path] = entry.split(' ') as [string, string];
      const res = await kit.fetch(`/api/v1${path.replace('{name}', 'no-such-vm').replace('{group}', 'no-such-group').replace('{id}', 'no-such-request')}`, { method, ...(method === 'POST' ? { json: {} } : {}), ...(method === 'DELETE' ? { headers: JSON_TYPE } : {}) });
      const text = await res.text();
      expect(text, entry).not.toContain('no such API route');
    }
  });
});
