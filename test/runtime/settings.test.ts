import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/index.js';
import { readSettings, resolveConfig } from '../../src/runtime/settings.js';
import { writeConfigFile } from '../helpers/processes.js';

describe('readSettings', () => {
  it('has the documented defaults when nothing is set', () => {
    expect(readSettings({})).toEqual({
      configPath: undefined,
      redisUrl: undefined,
      prefix: undefined,
      concurrency: {},
      shutdownDeadlineMs: 15_000,
      acquireGraceMs: 60_000,
    });
  });

  it('reads every variable, and takes an empty one as unset', () => {
    const settings = readSettings({
      VMPOOL_CONFIG: '/etc/vmpool.yaml',
      REDIS_URL: 'redis://db:6379',
      VMPOOL_PREFIX: '{farm-a}',
      HEALTH_CONCURRENCY: '50',
      ACQUIRE_CONCURRENCY: '',
      VMPOOL_SHUTDOWN_DEADLINE_MS: '5000',
      VMPOOL_ACQUIRE_GRACE_MS: '0',
    });
    expect(settings).toEqual({
      configPath: '/etc/vmpool.yaml',
      redisUrl: 'redis://db:6379',
      prefix: '{farm-a}',
      concurrency: { health: 50 },
      shutdownDeadlineMs: 5000,
      acquireGraceMs: 0,
    });
  });

  it('refuses bad values with a ConfigError naming each variable, its value and what was expected', () => {
    let error: unknown;
    try {
      readSettings({ SPAWN_CONCURRENCY: '0', VMPOOL_SHUTDOWN_DEADLINE_MS: '15s', VMPOOL_ACQUIRE_GRACE_MS: '-1', VMPOOL_PREFIX: 'a b' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const { message, issues } = error as ConfigError;
    expect(message).toContain('SPAWN_CONCURRENCY: got "0", expected a positive integer');
    expect(message).toContain('VMPOOL_SHUTDOWN_DEADLINE_MS: got "15s", expected a whole number of milliseconds');
    expect(message).toContain('VMPOOL_ACQUIRE_GRACE_MS: got "-1"');
    expect(message).toContain('VMPOOL_PREFIX: got "a b"');
    expect(issues.map((i) => i.path).sort()).toEqual(['SPAWN_CONCURRENCY', 'VMPOOL_ACQUIRE_GRACE_MS', 'VMPOOL_PREFIX', 'VMPOOL_SHUTDOWN_DEADLINE_MS']);
  });
});

describe('VMPOOL_FAULT (tests only)', () => {
  it('names a crash point, and a name it does not know is refused', () => {
    expect(readSettings({ VMPOOL_FAULT: 'spawn-after-add' }).faultPoint).toBe('spawn-after-add');
    expect(() => readSettings({ VMPOOL_FAULT: 'spawn-after-lunch' })).toThrow(/VMPOOL_FAULT: got "spawn-after-lunch", expected one of spawn-after-hook, spawn-after-add \(tests only\)/);
  });
});

describe('PORT and HOST (foreman, honcho, Heroku)', () => {
  it('override web.port and web.host of the file or the embedded default, as REDIS_URL does redis.url', () => {
    const file = writeConfigFile({ web: { host: '127.0.0.1', port: 8080 }, groups: [{ name: 'g' }] });
    const settings = readSettings({ VMPOOL_CONFIG: file, PORT: '5100', HOST: '127.0.0.2' });
    expect(settings).toMatchObject({ webPort: 5100, webHost: '127.0.0.2' });
    expect(resolveConfig(undefined, settings).config.web).toMatchObject({ host: '127.0.0.2', port: 5100 });
    expect(resolveConfig(undefined, readSettings({ PORT: '0' })).config.web.port).toBe(0);
    expect(resolveConfig(undefined, readSettings({ PORT: '', HOST: '' })).config.web).toMatchObject({ host: '127.0.0.1', port: 8080 });
  });

  it('refuses a PORT that is not a port number', () => {
    for (const bad of ['http', '70000', '-1', '80.5']) {
      expect(() => readSettings({ PORT: bad })).toThrow(`PORT: got ${JSON.stringify(bad)}, expected a TCP port number (0-65535)`);
    }
  });
});

describe('resolveConfig', () => {
  it('takes --config over VMPOOL_CONFIG, else the embedded default, with REDIS_URL applied', () => {
    const file = writeConfigFile({ redis: { url: 'redis://from-file:6379' }, groups: [{ name: 'from-file' }] });
    const other = writeConfigFile({ groups: [{ name: 'other' }] });
    expect(resolveConfig(undefined, readSettings({ VMPOOL_CONFIG: file }))).toMatchObject({ source: file, config: { redis: { url: 'redis://from-file:6379' } } });
    expect(resolveConfig(other, readSettings({ VMPOOL_CONFIG: file })).config.groups[0]!.name).toBe('other');
    expect(resolveConfig(undefined, readSettings({ VMPOOL_CONFIG: file, REDIS_URL: 'redis://env:1' })).config.redis.url).toBe('redis://env:1');
    const embedded = resolveConfig(undefined, readSettings({}));
    expect(embedded.source).toBe('embedded default (local provider)');
    expect(embedded.config.groups[0]!.name).toBe('local');
  });
});
