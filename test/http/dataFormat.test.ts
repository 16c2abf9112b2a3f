import { Queue } from 'bullmq';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { startWebServer, type RunningWebServer } from '../../src/http/server.js';
import { DATA_FORMAT_VERSION, type Migration } from '../../src/pool/dataFormat.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { ACQUIRE_QUEUE } from '../../queues/acquire.js';
import { waitFor } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

// A web process older than the pool's data format (src/pool/dataFormat.ts) writes nothing it does
// not understand: it serves reads, answers every change with 503 naming the version it needs, and
// says so on /healthz and /readyz; one of a newer version migrates the pool at start, as every
// process does.
const base = uniquePrefix('web-dataformat');
const redis = connect();
const config = parseConfig({ redis: { url: REDIS_URL }, vm_cycle_timeout: 0.5, groups: [{ name: 'base', archs: ['x86_64'], max_vm_total: 2 }] }, {});
const newer = DATA_FORMAT_VERSION + 1;
let n = 0;
const opened: { web?: RunningWebServer; vmm: VmManager; prefix: string }[] = [];

afterAll(async () => {
  for (const o of opened) {
    await o.web?.stop(2_000);
    await o.vmm.close();
    await deleteKeysWithPrefix(redis, o.prefix);
  }
  await redis.quit();
});

/** A pool with one ready VM, `vm-1`, and the test's own manager on it. */
async function pool() {
  const prefix = `${base}-${++n}`;
  const vmm = new VmManager(config, { redis, prefix });
  const entry: (typeof opened)[number] = { vmm, prefix };
  opened.push(entry);
  await vmm.markServerStart();
  await vmm.addVmToPool('10.70.0.1', 'vm-1', 0);
  await vmm.startVmCheck('vm-1');
  await vmm.recordHealthCheckResult('vm-1', true);
  const start = async (options: Parameters<typeof startWebServer>[1] = {}) => {
    entry.web = await startWebServer(config, { prefix, port: 0, ...options });
    return entry.web;
  };
  const call = (web: RunningWebServer, method: string, path: string, body?: unknown) =>
    fetch(new URL(path.replace(/^\//, ''), web.url), { method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { prefix, keys: poolKeys(prefix), vmm, start, call };
}

/** Every change the API offers, on the pool's one VM and group. */
const changes = [
  ['POST', '/api/v1/acquire', { owner: 'alice', sandbox: 'alice/p', arch: 'x86_64', taskId: 't1', timeoutMs: 1_000 }],
  ['POST', '/api/v1/vms/vm-1/hold', { reason: 'look' }],
  ['DELETE', '/api/v1/vms/vm-1/hold', {}],
  ['POST', '/api/v1/vms/vm-1/terminate', {}],
  ['POST', '/api/v1/vms/vm-1/release', {}],
  ['POST', '/api/v1/vms/vm-1/renew', { leaseId: 'l' }],
  ['POST', '/api/v1/groups/base/drain', {}],
  ['DELETE', '/api/v1/groups/base/breaker', {}],
  ['DELETE', '/api/v1/requests/t1', {}],
] as const;

describe('web and the data format', () => {
  it('started on a pool newer than it knows: reads go on, every change is refused with 503 naming the version, nothing is written', async () => {
    const p = await pool();
    await redis.hset(p.keys.dataFormat, 'version', String(newer));
    const marker = await redis.hgetall(p.keys.poolState);
    const auditLength = await redis.xlen(p.keys.auditEvents);
    const web = await p.start();
    expect(web.refusal()?.needed).toBe(newer);

    for (const [method, path, body] of changes) {
      const res = await p.call(web, method, path, body);
      expect(res.status, `${method} ${path}`).toBe(503);
      const answer = (await res.json()) as { error: string; message: string; details: Record<string, unknown> };
      expect(answer, `${method} ${path}`).toMatchObject({ error: 'not_ready', details: { reason: 'data_format_too_new', needed: newer, known: DATA_FORMAT_VERSION } });
      expect(answer.message).toContain(`the pool's data format is version ${newer}, and this vmpool knows versions up to ${DATA_FORMAT_VERSION}`);
    }
    // Reads go on.
    expect((await p.call(web, 'GET', '/api/v1/vms/vm-1')).status).toBe(200);
    expect((await p.call(web, 'GET', '/api/v1/groups')).status).toBe(200);
    expect((await p.call(web, 'GET', '/')).status).toBe(200);
    // The probes say it: alive, not ready.
    const health = await p.call(web, 'GET', '/healthz');
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'refusing_changes', reason: 'data_format_too_new', needed: newer, known: DATA_FORMAT_VERSION });
    const ready = await p.call(web, 'GET', '/readyz');
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ error: 'not_ready', details: { reason: 'data_format_too_new', needed: newer } });

    // Nothing written: the VM as it was, no acquire job, no audit event, the marker and the version untouched.
    expect(await p.vmm.getVmRecord('vm-1')).toMatchObject({ state: 'ready', heldBy: null });
    const queue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix: p.prefix });
    expect(await queue.count()).toBe(0);
    await queue.close();
    expect(await redis.xlen(p.keys.auditEvents)).toBe(auditLength);
    expect(await redis.hgetall(p.keys.poolState)).toEqual(marker);
    expect(await redis.hget(p.keys.dataFormat, 'version')).toBe(String(newer));
  });

  it('running when a newer process migrates the pool past it: from then on it refuses changes', async () => {
    const p = await pool();
    const web = await p.start();
    expect(web.refusal()).toBeNull();
    expect(await (await p.call(web, 'GET', '/healthz')).json()).toEqual({ status: 'ok' });
    const held = await p.call(web, 'POST', '/api/v1/vms/vm-1/hold', { reason: 'before' });
    expect(held.status).toBe(200);
    expect((await p.call(web, 'DELETE', '/api/v1/vms/vm-1/hold', {})).status).toBe(200);

    // A process of the next release starts a migration.
    await redis.hset(p.keys.dataFormat, 'migrating', String(newer), 'migration', 'next');
    await waitFor(() => web.refusal(), 10_000, 'the refusal');
    const res = await p.call(web, 'POST', '/api/v1/vms/vm-1/hold', { reason: 'after' });
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ details: { reason: 'data_format_too_new', needed: newer } });
    expect(await p.vmm.getVmRecord('vm-1')).toMatchObject({ heldBy: null });
    expect((await p.call(web, 'GET', '/api/v1/vms/vm-1')).status).toBe(200);
    expect((await p.call(web, 'GET', '/readyz')).status).toBe(503);
  });

  it('of a newer version than the pool: it migrates the pool at start, then serves changes', async () => {
    const p = await pool();
    expect(await redis.hget(p.keys.dataFormat, 'version')).toBeNull();
    const ran: string[] = [];
    const migration: Migration = { version: newer, name: 'web-test', run: async () => void ran.push('ran') };
    const web = await p.start({ dataFormat: { known: newer, quiesceMs: 0, migrations: [...Array.from({ length: newer - 2 }, (_, i) => ({ version: i + 2, name: `noop${i + 2}`, run: async () => undefined })), migration] } });
    expect(ran).toEqual(['ran']);
    expect(await redis.hget(p.keys.dataFormat, 'version')).toBe(String(newer));
    expect(web.refusal()).toBeNull();
    expect((await p.call(web, 'POST', '/api/v1/vms/vm-1/hold', { reason: 'mine' })).status).toBe(200);
  });

  it('started while Redis does not answer: changes are refused until it has read the data format', async () => {
    // A port where no Redis listens (the shared Redis is left alone).
    const away = parseConfig({ redis: { url: 'redis://127.0.0.1:1' }, groups: [{ name: 'base', archs: ['x86_64'] }] }, {});
    const web = await startWebServer(away, { port: 0 });
    try {
      expect(web.refusal()).toMatchObject({ reason: 'data_format_unchecked', known: DATA_FORMAT_VERSION });
      const res = await fetch(new URL('api/v1/vms/vm-1/hold', web.url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ error: 'not_ready', details: { reason: 'data_format_unchecked' } });
      expect(await (await fetch(new URL('healthz', web.url))).json()).toMatchObject({ status: 'refusing_changes', reason: 'data_format_unchecked' });
    } finally {
      await web.stop(1_000);
    }
  });
});
