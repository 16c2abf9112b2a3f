import { Cluster, Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig, redactedConfig } from '../src/config/index.js';
import { VmPoolClient } from '../src/client/index.js';
import { VmManager } from '../src/pool/vmManager.js';
import { blockingConnectionTemplate, connectTo, describeRedis, isCluster, RedisUnreachable } from '../src/redis.js';
import { parseRedisEndpoint, prefixHashTag, taggedPrefix } from '../src/redisEndpoint.js';
import { readSettings, resolveConfig } from '../src/runtime/settings.js';

const groups = [{ name: 'g' }];

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('no ConfigError');
}

describe('redis.cluster and redis.sentinel in the config', () => {
  it('leave the parsed redis section as it was when absent', () => {
    expect(parseConfig({ groups }, {}).redis).toEqual({ url: 'redis://127.0.0.1:6379', prefix: 'vmpool' });
  });

  it('take a Cluster with a hash-tagged prefix, adding only what was given', () => {
    const config = parseConfig({ redis: { cluster: ['10.0.0.1:7000', '10.0.0.2'], prefix: '{ci}', password: 'pw' }, groups }, {});
    expect(config.redis).toEqual({ url: 'redis://127.0.0.1:6379', prefix: '{ci}', cluster: ['10.0.0.1:7000', '10.0.0.2'], password: 'pw' });
    expect(parseRedisEndpoint(config.redis)).toEqual({ kind: 'cluster', nodes: [{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 6379 }], password: 'pw' });
  });

  it('refuse an untagged prefix on a Cluster, saying why and showing a tagged one', () => {
    const err = configError(() => parseConfig({ redis: { cluster: ['10.0.0.1:7000'] }, groups }, {}));
    expect(err.issues.map((i) => i.path)).toEqual(['redis.prefix']);
    expect(err.message).toContain('hash tag');
    expect(err.message).toContain('"{vmpool}"');
    expect(err.message).toContain('one slot');
    // An empty tag `{}` hashes the whole key: no tag.
    expect(configError(() => parseConfig({ redis: { cluster: ['h:1'], prefix: '{}pool' }, groups }, {})).message).toContain('"{pool}"');
    expect(prefixHashTag('a{b}c')).toBe('b');
    expect(prefixHashTag('{}{b}')).toBeNull();
    expect(taggedPrefix('copr.pool')).toBe('{copr.pool}');
  });

  it('take a Sentinel set with the sentinels own credentials', () => {
    const config = parseConfig({ redis: { sentinel: { name: 'mymaster', sentinels: ['10.0.0.1:26379', '[::1]'], password: 'spw' }, password: 'pw' }, groups }, {});
    expect(parseRedisEndpoint(config.redis)).toEqual({
      kind: 'sentinel',
      name: 'mymaster',
      sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: '::1', port: 26379 }],
      password: 'pw',
      sentinelPassword: 'spw',
    });
  });

  it('refuse both at once, bad host:port lists and unknown keys, naming each', () => {
    expect(configError(() => parseConfig({ redis: { cluster: ['h:1'], sentinel: { name: 'm', sentinels: ['h:2'] }, prefix: '{x}' }, groups }, {})).message).toContain(
      'either redis.cluster or redis.sentinel',
    );
    const err = configError(() => parseConfig({ redis: { cluster: ['h:99999'], sentinel: { name: 'm', sentinels: [] }, tls: 'yes' }, groups }, {}));
    expect(err.issues.map((i) => i.path).sort()).toEqual(['redis.cluster.0', 'redis.sentinel.sentinels', 'redis.tls']);
  });

  it('never print passwords', () => {
    const config = parseConfig({ redis: { sentinel: { name: 'm', sentinels: ['h:1'], password: 'sentinel-secret' }, password: 'node-secret' }, groups }, {});
    const shown = JSON.stringify(redactedConfig(config));
    expect(shown).not.toContain('secret');
    expect(describeRedis(config.redis)).toBe('redis+sentinel://:***@h:1/m');
    expect(describeRedis('rediss+cluster://ops:p%40ss@h1:7000,h2:7001')).toBe('rediss+cluster://ops:***@h1:7000,h2:7001');
    expect(new RedisUnreachable('redis+cluster://ops:secret@h1:7000').message).not.toContain('secret');
    expect(configError(() => parseConfig({ groups }, { REDIS_URL: 'redis+sentinel://u:secret@h:1' })).message).not.toContain('secret');
  });
});

describe('REDIS_URL for a Cluster or a Sentinel set', () => {
  it('parses hosts, the master name, credentials in the user info and TLS', () => {
    expect(parseRedisEndpoint('redis+cluster://h1:7000,h2:7001,[fd00::5]:7002')).toEqual({
      kind: 'cluster',
      nodes: [{ host: 'h1', port: 7000 }, { host: 'h2', port: 7001 }, { host: 'fd00::5', port: 7002 }],
    });
    expect(parseRedisEndpoint('rediss+sentinel://ops:p%40ss@s1:26379,s2/my-master')).toEqual({
      kind: 'sentinel',
      name: 'my-master',
      sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26379 }],
      username: 'ops',
      password: 'p@ss',
      tls: true,
    });
    expect(parseRedisEndpoint('redis://h:1/2')).toEqual({ kind: 'single', url: 'redis://h:1/2' });
  });

  it('overrides the file, cluster and sentinel included, and needs a tagged prefix for a Cluster', () => {
    const file = { redis: { sentinel: { name: 'm', sentinels: ['h:1'] } }, groups };
    const err = configError(() => parseConfig(file, { REDIS_URL: 'redis+cluster://h1:7000' }));
    expect(err.issues).toEqual([expect.objectContaining({ path: 'redis.prefix', received: 'vmpool' })]);
    const config = parseConfig({ ...file, redis: { ...file.redis, prefix: '{p}' } }, { REDIS_URL: 'redis+cluster://h1:7000' });
    expect(config.redis).toEqual({ url: 'redis+cluster://h1:7000', prefix: '{p}' });
  });

  it('checks VMPOOL_PREFIX, the prefix the processes use, instead of the file one', () => {
    const env = { REDIS_URL: 'redis+cluster://h1:7000', VMPOOL_PREFIX: '{ci}' };
    expect(resolveConfig(undefined, readSettings(env)).config.redis.url).toBe('redis+cluster://h1:7000');
    const err = configError(() => resolveConfig(undefined, readSettings({ ...env, VMPOOL_PREFIX: 'ci' })));
    expect(err.issues.map((i) => i.path)).toEqual(['VMPOOL_PREFIX']);
    expect(err.message).toContain('"{ci}"');
  });

  it('refuses malformed URLs with what was expected', () => {
    for (const url of ['redis+sentinel://s1:26379', 'redis+cluster://', 'redis+cluster://h:0', 'redis+cluster://h:1/0', 'redis+cluster://h:1?tls=1']) {
      const err = configError(() => parseConfig({ redis: { prefix: '{x}' }, groups }, { REDIS_URL: url }));
      expect(err.issues.map((i) => i.path), url).toEqual(['REDIS_URL']);
    }
  });
});

describe('connections', () => {
  it('to a Sentinel set detect failover: +switch-master, and a reconnect on READONLY', () => {
    const redis = connectTo('redis+sentinel://127.0.0.1:1/m', { lazyConnect: true }) as Redis;
    expect(redis.options.failoverDetector).toBe(true);
    expect(redis.options.name).toBe('m');
    expect(redis.options.reconnectOnError?.(new Error("READONLY You can't write against a read only replica."))).toBe(2);
    expect(redis.options.reconnectOnError?.(new Error('ERR other'))).toBe(false);
    redis.disconnect();
  });

  it("to a Cluster give BullMQ a blocking template on the Cluster's nodes, not 127.0.0.1:6379", () => {
    const cluster = connectTo('redis+cluster://10.9.9.1:7000,10.9.9.2:7001', { lazyConnect: true, maxRetriesPerRequest: 2 });
    expect(isCluster(cluster)).toBe(true);
    const template = blockingConnectionTemplate(cluster) as Cluster;
    expect(isCluster(template)).toBe(true);
    expect((template as unknown as { startupNodes: unknown }).startupNodes).toEqual([
      { host: '10.9.9.1', port: 7000 },
      { host: '10.9.9.2', port: 7001 },
    ]);
    expect(template.options.redisOptions?.maxRetriesPerRequest).toBeNull();
    expect(template.status).toBe('wait');
    template.disconnect();
    cluster.disconnect();
  });

  it('are taken as an ioredis Cluster by VmManager and VmPoolClient (types and all)', async () => {
    const cluster = new Cluster([{ host: '10.9.9.1', port: 7000 }], { lazyConnect: true });
    const vmm = new VmManager({ groups }, { redis: cluster, prefix: '{pool}' });
    const client = new VmPoolClient({ redis: cluster, prefix: '{pool}' });
    expect(vmm.cycleLock(1_000).redis).toBe(cluster);
    expect(client.redis).toBe(cluster);
    expect(() => new VmManager({ groups }, { redis: cluster, prefix: 'pool' })).toThrow(/"\{pool\}"/);
    await client.close();
    await vmm.close();
    cluster.disconnect();
  });

  it('refuse an untagged prefix in VmManager and VmPoolClient before connecting', () => {
    expect(() => new VmManager({ groups }, { redis: 'redis+cluster://10.9.9.1:7000' })).toThrow(ConfigError);
    expect(() => new VmPoolClient({ redis: 'redis+cluster://10.9.9.1:7000', prefix: 'pool' })).toThrow(/\{pool\}/);
  });
});
