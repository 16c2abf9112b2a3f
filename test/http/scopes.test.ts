import { chromium, type Browser } from 'playwright-core';
import { Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { openApiDocument } from '../../src/http/openapi.js';
import { ROUTE_SCOPES, scopeMay } from '../../src/http/scopes.js';
import type { WebScope } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { freePort, startWorkerProcess, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';
import { TOOLS, describeWithTools } from '../helpers/tools.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, webTestConfig } from './fixtures.js';

// A real web process with a token of each scope: every route answers each scope as the table of
// scopes (src/http/scopes.ts, shown in docs/security.md) says, a read token reads and changes
// nothing, and every answer carries the browser headers.

const READ_TOKEN = 'read-token-0123456789abcdef';
const TOKENS: Record<WebScope, string> = { read: READ_TOKEN, builder: BUILDER_TOKEN, admin: ADMIN_TOKEN };

const prefix = uniquePrefix('scopes');
const redis = connect();
const input = webTestConfig({
  web: {
    auth: {
      tokens: [
        { name: 'prometheus', token: READ_TOKEN, scopes: ['read'] },
        { name: 'ci', token: BUILDER_TOKEN, scopes: ['builder'] },
        { name: 'ops', token: ADMIN_TOKEN, scopes: ['admin'] },
      ],
    },
  },
});
let vmm: VmManager;
let web: WorkerProcess;
let base: string;

function call(path: string, method: string, token?: string, headers: Record<string, string> = {}): Promise<Response> {
  const h = new Headers(headers);
  if (token) h.set('authorization', `Bearer ${token}`);
  const changes = method !== 'GET' && method !== 'HEAD';
  if (changes) h.set('content-type', 'application/json');
  return fetch(new URL(path.replace(/^\//, ''), base), { method, headers: h, body: changes ? '{}' : undefined });
}

/** A path of the route that names nothing that exists (a change, if allowed, finds nothing to change). */
function examplePath(route: string): string {
  const [method, path] = route.split(' ') as [string, string];
  const board = method === 'GET' ? 'api/queues' : 'api/queues/vm-nosuch/pause';
  return path.replace(':name', 'nosuchvm').replace(':id', 'nosuchtask').replace(':group', 'nosuchgroup').replace(/\/\*$/, `/${board}`);
}

beforeAll(async () => {
  vmm = new VmManager(parseConfig(input, {}), { redis, prefix });
  await vmm.markServerStart();
  await vmm.addVmToPool('10.9.8.1', 'v1', 'base');
  await vmm.startVmCheck('v1');
  await vmm.recordHealthCheckResult('v1', true);
  const port = await freePort();
  web = await startWorkerProcess('web', { REDIS_URL, VMPOOL_PREFIX: prefix, PORT: String(port) }, 30_000, {
    args: ['--config', writeConfigFile(input)],
    ready: '"web listening"',
  });
  base = `http://127.0.0.1:${port}/`;
}, 60_000);

afterAll(async () => {
  await web?.stop();
  await vmm?.close();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

describe('scopes on a running web process', () => {
  it('every route answers each scope as the table of scopes says', async () => {
    for (const entry of ROUTE_SCOPES) {
      for (const route of entry.routes) {
        const method = route.split(' ')[0]!;
        const path = examplePath(route);
        for (const scope of ['read', 'builder', 'admin'] as const) {
          const res = await call(path, method, TOKENS[scope]);
          const what = `${route} (${method} ${path}) with a ${scope} token: ${res.status}`;
          if (scopeMay(entry, scope)) {
            expect([401, 403], what).not.toContain(res.status);
          } else {
            expect(res.status, what).toBe(403);
            expect(((await res.json()) as { error: string }).error, what).toBe('forbidden');
          }
        }
        const anonymous = await call(path, method);
        expect(anonymous.status, `${route} without a token`).toBe(entry.scopes === 'none' ? 200 : 401);
      }
    }
  });

  it('the table names every route of the API', () => {
    const tabled = new Set(ROUTE_SCOPES.flatMap((e) => e.routes));
    const api = Object.entries(openApiDocument.paths).flatMap(([template, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} /api/v1${template.replace(/\{([^}]+)\}/g, ':$1')}`),
    );
    expect(api.length).toBeGreaterThan(10);
    for (const route of api) expect(tabled.has(route), `${route} is not in ROUTE_SCOPES (src/http/scopes.ts)`).toBe(true);
  });

  it('the OpenAPI document names the same scopes as the table', () => {
    for (const [template, ops] of Object.entries(openApiDocument.paths)) {
      for (const [method, op] of Object.entries(ops as Record<string, { security?: { bearer: string[] }[] }>)) {
        const route = `${method.toUpperCase()} /api/v1${template.replace(/\{([^}]+)\}/g, ':$1')}`;
        const entry = ROUTE_SCOPES.find((e) => e.routes.includes(route))!;
        const documented = (op.security ?? []).flatMap((s) => s.bearer).sort();
        const tabled = Array.isArray(entry.scopes) ? (entry.scopes.length > 0 ? [...entry.scopes].sort() : ['admin']) : [];
        expect(documented, route).toEqual(tabled);
      }
    }
  });

  it('a read token reads the metrics, the pool page, the VMs (no lease id) and the audit trail, and changes nothing', async () => {
    const metrics = await call('/metrics', 'GET', READ_TOKEN);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toContain('vmpool_vms');
    const page = await call('/', 'GET', READ_TOKEN);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('data-vm="v1"');
    await vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'alice/p', workerId: 'w', taskId: 'scopes-task' });
    const vms = (await (await call('/api/v1/vms', 'GET', READ_TOKEN)).json()) as { vms: Record<string, unknown>[] };
    const v1 = vms.vms.find((v) => v.vmName === 'v1')!;
    expect(v1).toMatchObject({ state: 'in_use', owner: 'alice' });
    expect(Object.keys(v1)).not.toContain('leaseId');
    expect(JSON.stringify(vms)).not.toMatch(/leaseId/);
    const events = (await (await call('/api/v1/events', 'GET', READ_TOKEN)).json()) as { events: unknown[] };
    expect(events.events.length).toBeGreaterThan(0);
    const status = await call('/api/v1/requests/scopes-task', 'GET', READ_TOKEN);
    expect([200, 404]).toContain(status.status);

    for (const [method, path] of [
      ['POST', '/api/v1/vms/v1/terminate'],
      ['POST', '/api/v1/vms/v1/hold'],
      ['POST', '/api/v1/vms/v1/release'],
      ['POST', '/api/v1/groups/base/drain'],
      ['DELETE', '/api/v1/requests/scopes-task'],
    ] as const) {
      expect((await call(path, method, READ_TOKEN)).status, `${method} ${path}`).toBe(403);
    }
    const after = await vmm.getVmRecord('v1');
    expect(after).toMatchObject({ state: 'in_use', heldBy: null });
    expect(await vmm.drainedSince('base')).toBeNull();
  });

  it('a read token never sees a lease id: not in the audit trail (an admin still does)', async () => {
    await vmm.addVmToPool('10.9.8.2', 'v2', 'base');
    await vmm.startVmCheck('v2');
    await vmm.recordHealthCheckResult('v2', true);
    const a = await vmm.acquireVm({ groups: [0], owner: 'carol', sandbox: 'carol/p', workerId: 'w', taskId: 'scopes-lease' });
    const leaseId = (await vmm.getVmRecord(a.vmName)).leaseId ?? '';
    expect(leaseId.length).toBeGreaterThan(8);
    await vmm.renewLease(a.vmName, leaseId);
    const asRead = await (await call('/api/v1/events?limit=1000', 'GET', READ_TOKEN)).text();
    expect(asRead).toContain(a.vmName);
    expect(asRead).not.toContain(leaseId);
    const asAdmin = await (await call('/api/v1/events?limit=1000', 'GET', ADMIN_TOKEN)).text();
    expect(asAdmin).toContain(leaseId);
  });

  it('a read token never sees a lease id in Bull Board either (an acquire job\'s result carries one)', async () => {
    const leaseId = 'lease-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
    const queue = vmm.queue('vm-acquire');
    // Completed by a worker as an acquire worker completes it: its result is the assignment, lease and all.
    const connection = connect({ maxRetriesPerRequest: null });
    const worker = new Worker('vm-acquire', async () => ({ vmName: 'v9', leaseId }), { connection, prefix: queue.opts.prefix });
    const done = new Promise<void>((resolve) => worker.on('completed', () => resolve()));
    await queue.add('acquire', { owner: 'dave' }, { jobId: 'scopes-acquire-done' });
    await done;
    await worker.close();
    await connection.quit();
    try {
      const asRead = await (await call('/admin/queues/api/queues/vm-acquire/scopes-acquire-done', 'GET', READ_TOKEN)).text();
      expect(asRead).toContain('scopes-acquire-done');
      expect(asRead).not.toContain(leaseId);
      const listed = await (await call('/admin/queues/api/queues?activeQueue=vm-acquire&status=completed', 'GET', READ_TOKEN)).text();
      expect(listed).toContain('scopes-acquire-done');
      expect(listed).not.toContain(leaseId);
      const asAdmin = await (await call('/admin/queues/api/queues/vm-acquire/scopes-acquire-done', 'GET', ADMIN_TOKEN)).text();
      expect(asAdmin).toContain(leaseId);
    } finally {
      await queue.remove('scopes-acquire-done');
    }
  });

  it('a read token gets Bull Board read-only and cannot use its changes; an admin can', async () => {
    const asRead = (await (await call('/admin/queues/api/queues', 'GET', READ_TOKEN)).json()) as { queues: { name: string; readOnlyMode: boolean }[] };
    expect(asRead.queues.length).toBeGreaterThan(0);
    expect(asRead.queues.every((q) => q.readOnlyMode)).toBe(true);
    const asAdmin = (await (await call('/admin/queues/api/queues', 'GET', ADMIN_TOKEN)).json()) as { queues: { readOnlyMode: boolean }[] };
    expect(asAdmin.queues.every((q) => !q.readOnlyMode)).toBe(true);

    const queue = vmm.queue('vm-terminate');
    await queue.add('probe', { vmName: 'nobody' }, { jobId: 'scopes-probe', delay: 3_600_000 });
    for (const [method, path] of [
      ['PUT', '/admin/queues/api/queues/vm-terminate/pause'],
      ['PUT', '/admin/queues/api/queues/vm-terminate/promote'],
      ['POST', '/admin/queues/api/queues/vm-terminate/add'],
      ['PUT', '/admin/queues/api/queues/vm-terminate/scopes-probe/promote'],
      ['PUT', '/admin/queues/api/queues/vm-terminate/empty'],
      ['PUT', '/admin/queues/api/queues/pause'],
    ] as const) {
      expect((await call(path, method, READ_TOKEN)).status, `${method} ${path}`).toBe(403);
    }
    expect(await queue.isPaused()).toBe(false);
    expect(await queue.getJobState('scopes-probe')).toBe('delayed');
    // The same change as an admin goes through: the 403 above was the scope.
    expect((await call('/admin/queues/api/queues/vm-terminate/pause', 'PUT', ADMIN_TOKEN)).status).toBe(200);
    expect(await queue.isPaused()).toBe(true);
    await queue.resume();
    await queue.remove('scopes-probe');
  });

  it('every answer forbids framing and sniffing and sends no Referer', async () => {
    for (const path of ['/', '/admin/queues', '/api/v1/groups', '/metrics', '/healthz']) {
      const res = await call(path, 'GET', READ_TOKEN);
      expect(res.headers.get('content-security-policy'), path).toContain("frame-ancestors 'none'");
      expect(res.headers.get('x-frame-options'), path).toBe('DENY');
      expect(res.headers.get('x-content-type-options'), path).toBe('nosniff');
      expect(res.headers.get('referrer-policy'), path).toBe('no-referrer');
    }
  });
});

describeWithTools('chromium', 'the pool page and Bull Board under the CSP, in Chromium, with a read token', () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: TOOLS.chromium.command,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }, 60_000);
  afterAll(async () => browser?.close());

  it('both run their scripts, with no CSP violation', async () => {
    const context = await browser.newContext({ httpCredentials: { username: 'prometheus', password: READ_TOKEN } });
    const violations: string[] = [];
    context.on('console', (msg) => {
      if (/Content Security Policy|Content-Security-Policy/i.test(msg.text())) violations.push(msg.text());
    });
    const page = await context.newPage();
    await page.goto(base, { waitUntil: 'domcontentloaded' });
    // The page's inline script ran: it adds the local date to each time.
    await expect.poll(() => page.evaluate(() => document.querySelector('time[data-ms]')?.textContent ?? ''), { timeout: 10_000 }).toContain('(');
    // A read token may change nothing: the page shows no hold, terminate or drain button.
    expect(await page.locator('button[data-action]').count()).toBeGreaterThan(0);
    expect(await page.locator('button[data-action]:visible').count()).toBe(0);
    await page.goto(new URL('admin/queues', base).href, { waitUntil: 'domcontentloaded' });
    await expect.poll(() => page.getByText('vm-acquire').count(), { timeout: 20_000 }).toBeGreaterThan(0);
    expect(violations).toEqual([]);
    await context.close();
  }, 60_000);
});
