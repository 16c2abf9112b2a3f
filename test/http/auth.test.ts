import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/index.js';
import { assertBindAllowed, isLoopbackHost, WebAuthRequired } from '../../src/http/auth.js';
import { startWebServer } from '../../src/http/server.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, JSON_TYPE, createWebKit, webTestConfig, type WebKit } from './fixtures.js';

describe('binding and tokens', () => {
  it('knows loopback addresses', () => {
    for (const h of ['127.0.0.1', '127.3.4.5', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'example.org', '128.0.0.1']) expect(isLoopbackHost(h), h).toBe(false);
  });

  it('refuses to start off loopback without a token, before listening', async () => {
    const config = parseConfig(webTestConfig({ web: { host: '0.0.0.0' } }), {});
    expect(() => assertBindAllowed(config.web)).toThrow(WebAuthRequired);
    await expect(startWebServer(config, { port: 0 })).rejects.toBeInstanceOf(WebAuthRequired);
    const withToken = parseConfig(webTestConfig({ web: { host: '0.0.0.0', auth: { token: ADMIN_TOKEN } } }), {});
    expect(() => assertBindAllowed(withToken.web)).not.toThrow();
    const loopback = parseConfig(webTestConfig({ web: { host: '127.0.0.1' } }), {});
    expect(() => assertBindAllowed(loopback.web)).not.toThrow();
  });

  it('rejects short tokens and unknown scopes in the config', () => {
    expect(() => parseConfig(webTestConfig({ web: { auth: { token: 'short' } } }), {})).toThrow(ConfigError);
    expect(() => parseConfig(webTestConfig({ web: { auth: { tokens: [{ token: BUILDER_TOKEN, scopes: ['root' as 'admin'] }] } } }), {})).toThrow(/web\.auth\.tokens\.0\.scopes/);
  });
});

describe('auth with tokens', () => {
  let kit: WebKit;

  beforeAll(async () => {
    kit = await createWebKit(
      'auth',
      webTestConfig({ web: { auth: { token: ADMIN_TOKEN, tokens: [{ name: 'ci-builder', token: BUILDER_TOKEN, scopes: ['builder'] }] } } }),
    );
    await kit.startAcquireWorker();
    await kit.addReady('v1', '10.9.0.1', 0);
  });
  afterAll(async () => kit?.close());

  const adminRoutes: [string, string][] = [
    ['GET', '/'],
    ['GET', '/metrics'],
    ['GET', '/admin/queues'],
    ['GET', '/api/v1/openapi.json'],
    ['GET', '/api/v1/vms'],
    ['GET', '/api/v1/vms/v1'],
    ['GET', '/api/v1/groups'],
    ['POST', '/api/v1/vms/v1/hold'],
    ['DELETE', '/api/v1/vms/v1/hold'],
    ['POST', '/api/v1/vms/v1/terminate'],
  ];
  const builderRoutes: [string, string][] = [
    ['POST', '/api/v1/acquire'],
    ['POST', '/api/v1/vms/v1/release'],
    ['POST', '/api/v1/vms/v1/renew'],
  ];

  it('/healthz needs no token', async () => {
    expect((await kit.fetch('/healthz')).status).toBe(200);
  });

  it('every other route answers 401 without a token or with a wrong one', async () => {
    for (const [method, path] of [...adminRoutes, ...builderRoutes, ['GET', '/readyz'] as const]) {
      for (const token of [undefined, 'wrong-token-0123456789abcdef']) {
        const res = await kit.fetch(path, { method, token, ...(method === 'POST' ? { json: {} } : {}) });
        expect(res.status, `${method} ${path} token=${token}`).toBe(401);
        expect(res.headers.get('www-authenticate')).toContain('Bearer');
        const body = (await res.json()) as any;
        expect(body).toMatchObject({ error: 'unauthorized', details: {} });
      }
    }
    expect((await kit.vmm.getVmRecord('v1')).heldBy).toBeNull();
    expect((await kit.vmm.getVmRecord('v1')).state).toBe('ready');
  });

  it('a builder token may acquire, renew and release, and nothing else (403)', async () => {
    for (const [method, path] of adminRoutes) {
      const res = await kit.fetch(path, { method, token: BUILDER_TOKEN, ...(method === 'POST' ? { json: {} } : {}) });
      expect(res.status, `${method} ${path}`).toBe(403);
      expect(((await res.json()) as any).error).toBe('forbidden');
    }
    expect((await kit.vmm.getVmRecord('v1')).state).toBe('ready');
    // The readiness probe takes any valid token.
    expect((await kit.fetch('/readyz', { token: BUILDER_TOKEN })).status).toBe(200);

    const acquired = await kit.fetch('/api/v1/acquire', { method: 'POST', token: BUILDER_TOKEN, json: { owner: 'ci', sandbox: 's', groups: [0], timeoutMs: 5_000 } });
    expect(acquired.status).toBe(200);
    const a = (await acquired.json()) as any;
    expect(a.vmName).toBe('v1');
    const renew = await kit.fetch('/api/v1/vms/v1/renew', { method: 'POST', token: BUILDER_TOKEN, json: { leaseId: a.leaseId } });
    expect(renew.status).toBe(200);
    // Without its lease a builder may not release (an admin may).
    const noLease = await kit.fetch('/api/v1/vms/v1/release', { method: 'POST', token: BUILDER_TOKEN, json: {} });
    expect(noLease.status).toBe(400);
    expect((await kit.vmm.getVmRecord('v1')).state).toBe('in_use');
    const release = await kit.fetch('/api/v1/vms/v1/release', { method: 'POST', token: BUILDER_TOKEN, json: { leaseId: a.leaseId } });
    expect(release.status).toBe(200);
    expect((await kit.vmm.getVmRecord('v1')).state).toBe('ready');
  });

  it('an admin token may do everything; the pool page also takes it as a Basic password', async () => {
    for (const [method, path] of [
      ['GET', '/'],
      ['GET', '/readyz'],
      ['GET', '/metrics'],
      ['GET', '/admin/queues'],
      ['GET', '/api/v1/openapi.json'],
      ['GET', '/api/v1/vms'],
      ['GET', '/api/v1/vms/v1'],
      ['GET', '/api/v1/groups'],
    ] as const) {
      expect((await kit.fetch(path, { method, token: ADMIN_TOKEN })).status, `${method} ${path}`).toBe(200);
    }
    const hold = await kit.fetch('/api/v1/vms/v1/hold', { method: 'POST', token: ADMIN_TOKEN, json: {} });
    expect(hold.status).toBe(200);
    expect((await kit.vmm.getVmRecord('v1')).heldBy).toBe('admin');
    expect((await kit.fetch('/api/v1/vms/v1/hold', { method: 'DELETE', token: ADMIN_TOKEN, headers: JSON_TYPE })).status).toBe(200);

    const basic = `Basic ${Buffer.from(`operator:${ADMIN_TOKEN}`).toString('base64')}`;
    const page = await kit.fetch('/', { headers: { authorization: basic } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('data-vm="v1"');
    const wrongBasic = `Basic ${Buffer.from(`operator:${BUILDER_TOKEN}x`).toString('base64')}`;
    expect((await kit.fetch('/', { headers: { authorization: wrongBasic } })).status).toBe(401);

    const term = await kit.fetch('/api/v1/vms/v1/terminate', { method: 'POST', token: ADMIN_TOKEN, json: {} });
    expect(term.status).toBe(202);
    expect((await kit.vmm.getVmRecord('v1')).state).toBe('terminating');
  });
});
