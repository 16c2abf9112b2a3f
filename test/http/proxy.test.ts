import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { ExitCodes } from '../../src/cli/exitCodes.js';
import { ROOT, freePort, nodeArgsFor, startWorkerProcess, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';
import { ADMIN_TOKEN, webTestConfig } from './fixtures.js';

// An open web process (no token) behind a reverse proxy would make every caller the proxy forwards
// an admin: with a public name (public_url, allowed_hosts) it refuses to start, and `config check`
// says so; on loopback without one, a request that carries a proxy's headers is refused.

const prefix = uniquePrefix('proxy');
const redis = connect();
const running: WorkerProcess[] = [];

afterAll(async () => {
  await Promise.all(running.map((w) => w.stop()));
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

/** Runs an entry to its end (it must end within the timeout): its exit code and output. */
function runToEnd(entry: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgsFor(entry), ...args], {
      cwd: ROOT,
      env: { ...process.env, REDIS_URL, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${entry} ${args.join(' ')} still runs after ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

async function startWeb(input: ConfigInput): Promise<string> {
  const port = await freePort();
  const web = await startWorkerProcess('web', { REDIS_URL, VMPOOL_PREFIX: prefix, PORT: String(port) }, 30_000, {
    args: ['--config', writeConfigFile(input)],
    ready: '"web listening"',
  });
  running.push(web);
  return `http://127.0.0.1:${port}/`;
}

describe('no open web process behind a proxy', () => {
  it.each([
    ['public_url', { public_url: 'https://vmpool.example.org/' }],
    ['allowed_hosts', { allowed_hosts: ['vmpool.example.org'] }],
  ])('with %s and no token, web refuses to start and config check says why', async (_key, web) => {
    const file = writeConfigFile(webTestConfig({ web }));
    const started = await runToEnd('workers/web.ts', ['--config', file]);
    expect(started.code, started.out).toBe(ExitCodes.USAGE);
    expect(started.out).toContain('web.public_url or web.allowed_hosts is set');
    expect(started.out).toContain('set web.auth.token');
    expect(started.out).not.toContain('"web listening"');

    const checked = await runToEnd('src/cli/main.ts', ['config', 'check', file]);
    expect(checked.code, checked.out).toBe(ExitCodes.USAGE);
    expect(checked.out).toContain('web.public_url or web.allowed_hosts is set');
    expect(checked.out).not.toContain(': ok');
  });

  it('with public_url and a token, web starts and config check says ok; a proxied request with the token is served', async () => {
    const input = webTestConfig({ web: { public_url: 'https://vmpool.example.org/', auth: { token: ADMIN_TOKEN } } });
    const checked = await runToEnd('src/cli/main.ts', ['config', 'check', writeConfigFile(input)]);
    expect(checked.code, checked.out).toBe(0);
    expect(checked.out).toContain(': ok');
    const base = await startWeb(input);
    const headers = { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https', host: 'vmpool.example.org' };
    expect((await fetch(new URL('api/v1/groups', base), { headers })).status).toBe(401);
    expect((await fetch(new URL('api/v1/groups', base), { headers: { ...headers, authorization: `Bearer ${ADMIN_TOKEN}` } })).status).toBe(200);
  });

  it('an open process on loopback serves callers on this machine, and refuses requests that came through a proxy', async () => {
    const base = await startWeb(webTestConfig());
    expect((await fetch(new URL('api/v1/groups', base))).status).toBe(200);
    const proxied: Record<string, string>[] = [
      { 'x-forwarded-for': '203.0.113.9' },
      { forwarded: 'for=203.0.113.9;proto=https' },
      { 'x-forwarded-host': 'vmpool.example.org' },
      { 'x-forwarded-proto': 'https' },
      { 'x-real-ip': '203.0.113.9' },
      { via: '1.1 proxy' },
    ];
    for (const headers of proxied) {
      for (const path of ['api/v1/groups', 'api/v1/vms', 'metrics', 'admin/queues/api/queues', '']) {
        const res = await fetch(new URL(path, base), { headers });
        const what = `/${path} with ${JSON.stringify(headers)}`;
        expect(res.status, what).toBe(403);
        const body = (await res.json()) as { error: string; message: string };
        expect(body.error, what).toBe('forbidden');
        expect(body.message, what).toContain('set web.auth.token');
      }
    }
    // Nothing changes through a proxy either.
    const terminate = await fetch(new URL('api/v1/vms/nosuchvm/terminate', base), { method: 'POST', headers: { 'content-type': 'application/json', 'x-forwarded-for': '203.0.113.9' }, body: '{}' });
    expect(terminate.status).toBe(403);
  });
});
