import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { haveRedisServer } from '../../src/redis.js';
import { privateRedisDir, privateRedisTarget } from '../../src/runtime/privateRedis.js';
import { ROOT, freePort, nodeArgsFor, waitFor, writeConfigFile } from '../helpers/processes.js';
import { uniquePrefix } from '../helpers/redis.js';

// `vmpool start` (npm start) with nothing answering at a loopback REDIS_URL and redis-server
// installed: it starts a private redis-server with AOF in a data directory, says so, and stops it
// on SIGTERM; the next start finds the pool's data again.
describe('private redis-server of vmpool start', { timeout: 90_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-privredis-'));
  const stateDir = join(dir, 'local');
  const dataDir = join(dir, 'redis');
  const prefix = uniquePrefix('privredis');
  // No warm pool: this test is about Redis, not VMs.
  const configFile = writeConfigFile({ web: { port: 0 }, vm_cycle_timeout: 1, groups: [{ name: 'local', min_ready: 0, provider: { type: 'local', state_dir: stateDir } }] });
  const children: ChildProcess[] = [];
  afterAll(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  async function start(port: number): Promise<{ child: ChildProcess; lines: string[]; exited: Promise<number | null> }> {
    const env: NodeJS.ProcessEnv = { ...process.env, REDIS_URL: `redis://127.0.0.1:${port}`, VMPOOL_REDIS_DIR: dataDir, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'info', VMPOOL_SHUTDOWN_DEADLINE_MS: '4000' };
    for (const name of ['PORT', 'HOST', 'VMPOOL_CONFIG', 'VMPOOL_PRIVATE_REDIS']) delete env[name];
    const child = spawn(process.execPath, [...nodeArgsFor('src/cli/main.ts'), '--config', configFile, 'start'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    const lines: string[] = [];
    const collect = (chunk: Buffer) => lines.push(...chunk.toString().split('\n').filter(Boolean));
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    await waitFor(() => lines.some((l) => l.startsWith('web: ')) || child.exitCode !== null, 40_000, 'web started');
    if (child.exitCode !== null) throw new Error(`vmpool exited early:\n${lines.join('\n')}`);
    return { child, lines, exited };
  }

  const answers = async (port: number) => {
    const r = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on('error', () => undefined);
    try {
      await r.connect();
      return (await r.ping()) === 'PONG';
    } catch {
      return false;
    } finally {
      r.disconnect();
    }
  };

  it('knows which URLs it may serve and where the data goes', () => {
    expect(privateRedisTarget('redis://127.0.0.1:6390')).toEqual({ host: '127.0.0.1', port: 6390 });
    expect(privateRedisTarget('redis://localhost')).toEqual({ host: '127.0.0.1', port: 6379 });
    expect(privateRedisTarget('redis://:secret@127.0.0.1:6390')).toBeNull();
    expect(privateRedisTarget('rediss://127.0.0.1:6390')).toBeNull();
    expect(privateRedisTarget('redis://redis.example.org:6379')).toBeNull();
    expect(privateRedisTarget('redis://127.0.0.1:6379/3')).toBeNull();
    expect(privateRedisDir({ HOME: '/home/u' }, 6379)).toBe('/home/u/.local/share/vmpool/redis');
    expect(privateRedisDir({ HOME: '/home/u', XDG_DATA_HOME: '/data' }, 6390)).toBe('/data/vmpool/redis-6390');
    expect(privateRedisDir({ VMPOOL_REDIS_DIR: '/srv/r' }, 6390)).toBe('/srv/r');
  });

  it('starts one when nothing answers, says so, stops it on SIGTERM, and the next start has the data', async (ctx) => {
    if (!haveRedisServer()) ctx.skip();
    const port = await freePort();
    expect(await answers(port)).toBe(false);

    const first = await start(port);
    const said = first.lines.find((l) => l.startsWith('redis: '));
    expect(said, first.lines.join('\n')).toMatch(new RegExp(`^redis: nothing answered at redis://127.0.0.1:${port}, so vmpool started a private redis-server \\(pid \\d+\\) with AOF in ${dataDir};`));
    const redis = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
    expect(await redis.config('GET', 'appendonly')).toEqual(['appendonly', 'yes']);
    expect(await redis.config('GET', 'dir')).toEqual(['dir', dataDir]);
    await redis.set(`${prefix}:marker`, 'kept');
    await redis.quit();

    const stopAt = Date.now();
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    expect(Date.now() - stopAt).toBeLessThan(5_000);
    expect(first.lines.join('\n')).toContain(`the private redis-server stopped (its data stays in ${dataDir})`);
    await waitFor(async () => !(await answers(port)), 5_000, 'the private redis-server gone');
    expect(existsSync(join(dataDir, 'appendonlydir')) || readdirSync(dataDir).some((f) => f.endsWith('.aof'))).toBe(true);

    // The next start runs it again on the same data.
    const second = await start(port);
    const again = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
    expect(await again.get(`${prefix}:marker`)).toBe('kept');
    await again.quit();
    second.child.kill('SIGTERM');
    expect(await second.exited).toBe(0);
    await waitFor(async () => !(await answers(port)), 5_000, 'the private redis-server gone');
  });
});
