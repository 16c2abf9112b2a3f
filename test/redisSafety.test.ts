import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { checkRedisSafety, ensureRedisSafety, UnsafeRedis } from '../src/redisSafety.js';
import { startPrivateRedis, type PrivateRedis } from '../bench/lib/redisServer.js';
import { startWorkerProcess, writeConfigFile } from './helpers/processes.js';
import { uniquePrefix } from './helpers/redis.js';

// Each case runs against a private redis-server started with the settings under test.
const servers: PrivateRedis[] = [];
const clients: Redis[] = [];
const dirs: string[] = [];

async function server(args: string[]): Promise<{ redis: Redis; url: string; port: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-test-safety-'));
  dirs.push(dir);
  const s = await startPrivateRedis(['--dir', dir, ...args]);
  servers.push(s);
  const redis = new Redis(s.url, { maxRetriesPerRequest: 1 });
  clients.push(redis);
  return { redis, url: s.url, port: s.port };
}

afterAll(async () => {
  for (const c of clients) c.disconnect();
  for (const s of servers.reverse()) await s.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const settings = (findings: { setting: string }[]) => findings.map((f) => f.setting).sort();

describe('Redis safety check', () => {
  it('finds no AOF, and an evicting maxmemory-policy', async () => {
    const { redis } = await server(['--maxmemory-policy', 'allkeys-lru']);
    const findings = await checkRedisSafety(redis, { appendfsync: 'everysec' });
    expect(settings(findings)).toEqual(['appendonly', 'maxmemory-policy']);
    for (const f of findings) expect(f.fix).toMatch(/CONFIG SET/);
  });

  it('accepts AOF with noeviction, and holds appendfsync to what the operator asked', async () => {
    const { redis } = await server(['--appendonly', 'yes', '--appendfsync', 'everysec', '--maxmemory-policy', 'noeviction']);
    expect(await checkRedisSafety(redis, { appendfsync: 'everysec' })).toEqual([]);
    expect(settings(await checkRedisSafety(redis, { appendfsync: 'always' }))).toEqual(['appendfsync']);
  });

  it('on a master with a replica, asks for min-replicas-to-write', async () => {
    const master = await server(['--appendonly', 'yes']);
    const replica = await server(['--appendonly', 'yes', '--replicaof', '127.0.0.1', String(master.port)]);
    const deadline = Date.now() + 10_000;
    while (!/connected_slaves:[1-9]/.test(await master.redis.info('replication'))) {
      if (Date.now() > deadline) throw new Error('the replica did not connect');
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(settings(await checkRedisSafety(master.redis, { appendfsync: 'everysec' }))).toEqual(['min-replicas-to-write']);
    await master.redis.config('SET', 'min-replicas-to-write', '1');
    expect(await checkRedisSafety(master.redis, { appendfsync: 'everysec' })).toEqual([]);
    expect(replica.redis).toBeDefined();
  });

  it('warns through the logger, or refuses with redis.require_safe', async () => {
    const { redis } = await server([]);
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) }));
    expect(await ensureRedisSafety(redis, { appendfsync: 'everysec', require_safe: false }, logger)).toHaveLength(1);
    expect(lines.join('')).toMatch(/"level":40.*"setting":"appendonly".*Redis is unsafe for vmpool/);
    await expect(ensureRedisSafety(redis, { appendfsync: 'everysec', require_safe: true }, logger)).rejects.toBeInstanceOf(UnsafeRedis);
  });

  it('every process checks at start: a worker warns, and refuses to start with require_safe', async () => {
    const { url } = await server([]);
    const prefix = uniquePrefix('safety');
    const warn = await startWorkerProcess('terminate', { VMPOOL_CONFIG: writeConfigFile({ redis: { url }, groups: [{ name: 'g' }] }), VMPOOL_PREFIX: prefix });
    expect(warn.lines.some((l) => l.includes('Redis is unsafe for vmpool') && l.includes('appendonly'))).toBe(true);
    expect(await warn.stop()).toBe(0);
    const strict = writeConfigFile({ redis: { url, require_safe: true }, groups: [{ name: 'g' }] });
    await expect(startWorkerProcess('terminate', { VMPOOL_CONFIG: strict, VMPOOL_PREFIX: prefix }, 10_000)).rejects.toThrow(/require_safe|exited/);
  });
});
