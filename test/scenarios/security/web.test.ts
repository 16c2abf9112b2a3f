import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig, redactedConfig } from '../../../src/config/index.js';
import { DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS } from '../../../src/http/api.js';
import { hostAllowed, hostHeaderName, mayActFor, ownerPatternMatches } from '../../../src/http/auth.js';
import { RedisUnreachable, redisUnreachableHint } from '../../../src/redis.js';
import { redactUrl } from '../../../src/text/redact.js';
import { rawRequest } from '../../helpers/http.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from '../../http/fixtures.js';

describe('Host header check (DNS rebinding)', () => {
  let kit: WebKit;
  let named: WebKit;
  let port: string;

  beforeAll(async () => {
    // Open mode: loopback, no token: everyone on this machine is admin, but only by a loopback name.
    kit = await createWebKit('sec-host', webTestConfig());
    port = new URL(kit.url).port;
    await kit.addReady('h1', '10.9.1.1', 0);
    // Other names served need a token (an open process with a public name does not start).
    named = await createWebKit('sec-host-named', webTestConfig({ web: { allowed_hosts: ['pool.example.org', '*.farm.example.org'], public_url: 'https://vmpool.example.com/', auth: { token: ADMIN_TOKEN } } }));
  });
  afterAll(async () => {
    await kit?.close();
    await named?.close();
  });

  it('refuses another name with 421 on every surface, and changes nothing', async () => {
    const json = { 'content-type': 'application/json' };
    const attempts: { method: string; path: string; headers?: Record<string, string>; body?: string }[] = [
      { method: 'GET', path: '/' },
      { method: 'GET', path: '/readyz' },
      { method: 'GET', path: '/metrics' },
      { method: 'GET', path: '/api/v1/vms' },
      { method: 'GET', path: '/api/v1/openapi.json' },
      { method: 'GET', path: '/admin/queues' },
      { method: 'POST', path: '/api/v1/vms/h1/hold', headers: { ...json, origin: `http://rebind.evil:${port}` }, body: '{}' },
      { method: 'POST', path: '/api/v1/vms/h1/terminate', headers: { ...json, origin: `http://rebind.evil:${port}` }, body: '{}' },
      { method: 'PUT', path: '/admin/queues/api/queues/vm-acquire/pause', headers: { origin: `http://rebind.evil:${port}` } },
    ];
    for (const a of attempts) {
      const res = await rawRequest(kit.url, { ...a, host: `rebind.evil:${port}` });
      expect(res.status, `${a.method} ${a.path}`).toBe(421);
      expect(JSON.parse(res.body).error).toBe('misdirected_request');
    }
    const vm = await kit.vmm.getVmRecord('h1');
    expect(vm.state).toBe('ready');
    expect(vm.heldBy).toBeNull();
    const acquireQueue = new Queue('vm-acquire', { connection: kit.redis, prefix: kit.prefix });
    expect(await acquireQueue.isPaused()).toBe(false);
    await acquireQueue.close();
  });

  it('answers loopback names, the configured hosts and the public URL host', async () => {
    const namedPort = new URL(named.url).port;
    const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
    const hosts = [`127.0.0.1:${namedPort}`, `localhost:${namedPort}`, `[::1]:${namedPort}`, 'pool.example.org', `POOL.example.org:${namedPort}`, 'a.farm.example.org', 'vmpool.example.com'];
    for (const host of hosts) {
      const res = await rawRequest(named.url, { path: '/api/v1/groups', host, headers });
      expect(res.status, host).toBe(200);
    }
    for (const host of ['farm.example.org', 'evilfarm.example.org', 'example.org', 'pool.example.org.evil', 'a b', 'x:y:z']) {
      const res = await rawRequest(named.url, { path: '/api/v1/groups', host, headers });
      expect(res.status, JSON.stringify(host)).toBe(421);
    }
  });

  it('keeps /healthz open for probes that use any address', async () => {
    const res = await rawRequest(kit.url, { path: '/healthz', host: '10.1.2.3:8080' });
    expect(res.status).toBe(200);
  });

  it('parses Host values strictly', () => {
    expect(hostHeaderName('Example.ORG:8080')).toBe('example.org');
    expect(hostHeaderName('[::1]:80')).toBe('::1');
    expect(hostHeaderName('127.0.0.1')).toBe('127.0.0.1');
    for (const bad of [undefined, '', 'a b', 'x:y:z', 'host:99999999', '[zz]:1', 'é.example']) expect(hostHeaderName(bad), String(bad)).toBeNull();
    const web = parseConfig(webTestConfig({ web: { host: '10.0.0.5', auth: { token: ADMIN_TOKEN } } }), {}).web;
    expect(hostAllowed(web, '10.0.0.5')).toBe(true);
    expect(hostAllowed(web, '10.0.0.6')).toBe(false);
    const any = parseConfig(webTestConfig({ web: { host: '0.0.0.0', auth: { token: ADMIN_TOKEN } } }), {}).web;
    expect(hostAllowed(any, '0.0.0.0')).toBe(false);
  });
});

describe('builder tokens bound to owners', () => {
  let kit: WebKit;
  const COPR_TOKEN = 'copr-builder-token-0123456789';

  beforeAll(async () => {
    kit = await createWebKit(
      'sec-owners',
      webTestConfig({
        web: {
          auth: {
            token: ADMIN_TOKEN,
            tokens: [
              { name: 'copr', token: COPR_TOKEN, scopes: ['builder'], owners: ['copr-*', 'alice'] },
              { name: 'dispatcher', token: BUILDER_TOKEN, scopes: ['builder'] },
            ],
          },
        },
      }),
    );
    await kit.startAcquireWorker();
    await kit.addReady('o1', '10.9.2.1', 0);
    await kit.addReady('o2', '10.9.2.2', 0);
    await kit.addReady('o3', '10.9.2.3', 0);
  });
  afterAll(async () => kit?.close());

  const acquire = (token: string, owner: string, taskId: string) =>
    kit.fetch('/api/v1/acquire', { method: 'POST', token, json: { owner, sandbox: `${owner}/p`, groups: [0], taskId, timeoutMs: 5_000 } });

  it('refuses an owner outside the token list with 403, before anything is enqueued', async () => {
    const res = await acquire(COPR_TOKEN, 'mallory', 'sec-task-m');
    expect(res.status).toBe(403);
    const body = (await res.json()) as { error: string; details: { owner: string } };
    expect(body.error).toBe('forbidden');
    expect(body.details.owner).toBe('mallory');
    const acquireQueue = new Queue('vm-acquire', { connection: kit.redis, prefix: kit.prefix });
    expect(await acquireQueue.getJobCounts()).toEqual(expect.not.objectContaining({ waiting: 1 }));
    expect(await acquireQueue.getJobs(['waiting', 'active', 'completed', 'failed', 'prioritized', 'delayed'])).toEqual([]);
    await acquireQueue.close();
    expect((await kit.vmm.getAllVms()).filter((v) => v.owner !== null)).toEqual([]);
  });

  it('serves owners that match a pattern, and lets admins and unbound tokens act for anyone', async () => {
    const a = await acquire(COPR_TOKEN, 'copr-fedora', 'sec-task-c');
    expect(a.status).toBe(200);
    expect(((await a.json()) as { vmName: string }).vmName).toMatch(/^o[12]$/);
    const b = await acquire(BUILDER_TOKEN, 'mallory', 'sec-task-d');
    expect(b.status).toBe(200);
    expect(mayActFor({ name: 'admin', scopes: ['admin'], owners: ['x'] }, 'anyone')).toBe(true);
  });

  it('waits 55 s by default over HTTP, under what common proxies and clients allow', async () => {
    const res = await kit.fetch('/api/v1/acquire', { method: 'POST', token: BUILDER_TOKEN, json: { owner: 'dave', sandbox: 'dave/p', groups: [0], taskId: 'sec-task-t' } });
    expect(res.status).toBe(200);
    const acquireQueue = new Queue('vm-acquire', { connection: kit.redis, prefix: kit.prefix });
    const [job] = (await acquireQueue.getJobs(['completed'])).filter((j) => j.data.taskId === 'sec-task-t');
    await acquireQueue.close();
    expect(job?.data.timeoutMs).toBe(DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS);
    expect(DEFAULT_HTTP_ACQUIRE_TIMEOUT_MS).toBeLessThan(60_000);
  });

  it('matches owner patterns literally except for *', () => {
    expect(ownerPatternMatches('copr-*', 'copr-')).toBe(true);
    expect(ownerPatternMatches('copr-*', 'copr-a.b')).toBe(true);
    expect(ownerPatternMatches('copr-*', 'xcopr-a')).toBe(false);
    expect(ownerPatternMatches('a.c', 'abc')).toBe(false);
    expect(ownerPatternMatches('a+(b)', 'a+(b)')).toBe(true);
    expect(ownerPatternMatches('*', 'anything\nat all')).toBe(true);
  });
});

describe('secrets never printed', () => {
  it('masks the password of a URL, and only that', () => {
    expect(redactUrl('redis://default:s3cret@db.example:6380/2')).toBe('redis://default:***@db.example:6380/2');
    expect(redactUrl('redis://:s3cret@db.example:6380')).toBe('redis://:***@db.example:6380');
    expect(redactUrl('redis://127.0.0.1:6379')).toBe('redis://127.0.0.1:6379');
    expect(redactUrl('not a url user:pw@host')).not.toContain('pw');
  });

  it('keeps the Redis password out of the unreachable hint and the error', () => {
    const url = 'redis://default:hunter2-secret@127.0.0.1:1';
    expect(redisUnreachableHint(url, true)).not.toContain('hunter2');
    const err = new RedisUnreachable(url);
    expect(JSON.stringify({ message: err.message, url: err.url })).not.toContain('hunter2');
  });

  it('keeps tokens, provider environments and passwords out of config errors and printed configs', () => {
    let message = '';
    try {
      parseConfig(webTestConfig({ web: { auth: { token: 'shortsecret' } } }), {});
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      message = (err as Error).message;
    }
    expect(message).toContain('web.auth.token');
    expect(message).not.toContain('shortsecret');

    const config = parseConfig(
      {
        redis: { url: 'redis://u:topsecret@127.0.0.1:6379' },
        web: { auth: { token: ADMIN_TOKEN, tokens: [{ token: BUILDER_TOKEN, scopes: ['builder'] }] } },
        groups: [{ name: 'g', provider: { type: 'command', spawn_cmd: '/bin/true', terminate_cmd: '/bin/true', env: { OS_PASSWORD: 'cloudsecret' } }, check: { type: 'tcp', port: 22 } }],
      },
      {},
    );
    const printed = JSON.stringify(redactedConfig(config));
    for (const secret of ['topsecret', ADMIN_TOKEN, BUILDER_TOKEN, 'cloudsecret']) expect(printed).not.toContain(secret);
    expect(printed).toContain('OS_PASSWORD');
    // The original is untouched.
    expect(config.web.auth.token).toBe(ADMIN_TOKEN);
  });
});
