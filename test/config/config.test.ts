import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/index.js';
import { embeddedConfig } from '../../src/defaults.js';

const dir = mkdtempSync(join(tmpdir(), 'vmpool-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfig', () => {
  it("fills in Copr's defaults for every missing key", () => {
    const config = parseConfig({ groups: [{ name: 'base' }] }, {});
    expect(config.redis).toEqual({ url: 'redis://127.0.0.1:6379', prefix: 'vmpool' });
    expect(config.vm_cycle_timeout).toBe(10);
    expect(config.groups).toHaveLength(1);
    expect(config.groups[0]).toMatchObject({
      name: 'base',
      archs: [],
      max_vm_total: 8,
      max_vm_per_user: 4,
      max_spawn_processes: 2,
      vm_spawn_min_interval: 30,
      vm_dirty_terminating_timeout: 120,
      vm_health_check_period: 120,
      vm_health_check_max_time: 300,
      vm_max_check_fails: 2,
      vm_terminating_timeout: 600,
    });
  });

  it('keeps every given value', () => {
    const input = {
      redis: { url: 'redis://10.0.0.1:6380', prefix: 'copr' },
      vm_cycle_timeout: 3,
      groups: [
        {
          name: 'base',
          archs: ['x86_64', 'i386'],
          max_vm_total: 20,
          max_vm_per_user: 1,
          max_spawn_processes: 5,
          vm_spawn_min_interval: 1,
          vm_dirty_terminating_timeout: 7,
          vm_health_check_period: 8,
          vm_health_check_max_time: 9,
          vm_max_check_fails: 0,
          vm_terminating_timeout: 11,
        },
        { name: 'arm', archs: ['aarch64'] },
      ],
    };
    const config = parseConfig(input, {});
    expect(config.redis).toEqual(input.redis);
    expect(config.vm_cycle_timeout).toBe(3);
    expect(config.groups[0]).toMatchObject(input.groups[0]!);
    expect(config.groups[1]).toMatchObject({ name: 'arm', archs: ['aarch64'], max_vm_total: 8 });
  });

  it('rejects unknown keys at the top, in redis and in a group, naming each', () => {
    const err = errorOf(() =>
      parseConfig({ max_vm_totl: 3, redis: { host: 'x' }, groups: [{ name: 'base', max_vm_per_usr: 2 }] }, {}),
    );
    expect(err.message).toContain('max_vm_totl');
    expect(err.message).toContain('redis.host');
    expect(err.message).toContain('groups.0.max_vm_per_usr');
    expect(err.message).toMatch(/unknown/);
    expect(err.issues.map((i) => i.path).sort()).toEqual(['groups.0.max_vm_per_usr', 'max_vm_totl', 'redis.host']);
  });

  it.each([
    ['a negative timeout', { vm_health_check_period: -5 }, 'groups.0.vm_health_check_period', '-5'],
    ['a string limit', { max_vm_total: 'ten' }, 'groups.0.max_vm_total', '"ten"'],
    ['a zero per-user limit', { max_vm_per_user: 0 }, 'groups.0.max_vm_per_user', '0'],
    ['a fractional check-fail count', { vm_max_check_fails: 1.5 }, 'groups.0.vm_max_check_fails', '1.5'],
    ['archs not a list', { archs: 'x86_64' }, 'groups.0.archs', '"x86_64"'],
  ])('names the field, the value and what was expected for %s', (_label, groupPatch, path, shown) => {
    const err = errorOf(() => parseConfig({ groups: [{ name: 'base', ...groupPatch }] }, {}));
    const line = err.message.split('\n').find((l) => l.includes(path));
    expect(line, err.message).toBeDefined();
    expect(line).toContain(`got ${shown}`);
    expect(line).toMatch(/expected \S/);
    expect(err.issues.find((i) => i.path === path)?.received).toEqual(Object.values(groupPatch)[0]);
  });

  it("check_on_acquire names the group's own check type (its settings are the check's)", () => {
    const err = errorOf(() => parseConfig({ groups: [{ name: 'base', check: { type: 'tcp', port: 22 }, check_on_acquire: 'ssh' }] }, {}));
    expect(err.message).toContain('groups.0.check_on_acquire');
    expect(err.message).toContain('must be its type (tcp)');
    const config = parseConfig({ groups: [{ name: 'base', check: { type: 'tcp', port: 22 }, check_on_acquire: 'tcp' }] }, {});
    expect([config.groups[0]!.check_on_acquire, config.groups[0]!.check_on_acquire_timeout]).toEqual(['tcp', 3]);
    expect(parseConfig({ groups: [{ name: 'base' }] }, {}).groups[0]!.check_on_acquire).toBeUndefined();
  });

  it('reports a missing required field as missing', () => {
    const err = errorOf(() => parseConfig({ groups: [{ archs: ['x86_64'] }] }, {}));
    expect(err.message).toMatch(/groups\.0\.name: got nothing, expected/);
    const emptyGroups = errorOf(() => parseConfig({ groups: [] }, {}));
    expect(emptyGroups.message).toContain('groups');
  });

  it('gives a config without groups the embedded default group: a file may set one thing only', () => {
    const file = join(dir, 'only-port.yaml');
    writeFileSync(file, 'web:\n  port: 9099\n');
    const config = loadConfig(file, {});
    expect(config.web.port).toBe(9099);
    expect(config.groups).toEqual(parseConfig(embeddedConfig, {}).groups);
    expect(config.groups.map((g) => [g.name, g.provider.type])).toEqual([['local', 'local']]);
    // Each config gets its own copy of the default group.
    config.groups[0]!.max_vm_total = 99;
    expect(parseConfig({}, {}).groups[0]!.max_vm_total).toBe(4);
  });

  it('rejects a bad prefix and a non-object config', () => {
    expect(errorOf(() => parseConfig({ redis: { prefix: 'a b' }, groups: [{ name: 'g' }] }, {})).message).toContain('redis.prefix');
    expect(errorOf(() => parseConfig('groups: []', {})).message).toMatch(/invalid vmpool config/);
    errorOf(() => parseConfig(null, {}));
  });

  it('rejects duplicate group names', () => {
    const err = errorOf(() => parseConfig({ groups: [{ name: 'base' }, { name: 'arm' }, { name: 'base' }] }, {}));
    expect(err.message).toContain('groups.2.name');
    expect(err.message).toMatch(/duplicate/);
    expect(err.message).toContain('"base"');
  });

  it('lets REDIS_URL override redis.url', () => {
    const input = { redis: { url: 'redis://from-file:6379' }, groups: [{ name: 'g' }] };
    expect(parseConfig(input, { REDIS_URL: 'redis://127.0.0.9:7000' }).redis.url).toBe('redis://127.0.0.9:7000');
    expect(parseConfig(input, {}).redis.url).toBe('redis://from-file:6379');
    expect(parseConfig({ groups: [{ name: 'g' }] }, { REDIS_URL: 'redis://127.0.0.9:7000' }).redis).toEqual({ url: 'redis://127.0.0.9:7000', prefix: 'vmpool' });
  });

  it('does not leak an override into the defaults of the next parse', () => {
    parseConfig({ groups: [{ name: 'g' }] }, { REDIS_URL: 'redis://127.0.0.9:7001' });
    expect(parseConfig({ groups: [{ name: 'g' }] }, {}).redis.url).toBe('redis://127.0.0.1:6379');
  });

  it('does not change the input object', () => {
    const input = { groups: [{ name: 'g' }] };
    parseConfig(input, { REDIS_URL: 'redis://x:1' });
    expect(input).toEqual({ groups: [{ name: 'g' }] });
  });
});

describe('loadConfig', () => {
  it('reads a YAML file with defaults and the REDIS_URL override', () => {
    const path = join(dir, 'ok.yaml');
    writeFileSync(
      path,
      [
        'redis: { url: redis://127.0.0.1:6379, prefix: test-pool }',
        'vm_cycle_timeout: 5',
        'groups:',
        '  - name: base',
        '    archs: [x86_64, i386]',
        '    max_vm_total: 8',
        '    max_vm_per_user: 4',
        '  - name: arm',
        '    archs: [aarch64]',
        '    vm_max_check_fails: 0',
        '',
      ].join('\n'),
    );
    const config = loadConfig(path, {});
    expect(config.redis).toEqual({ url: 'redis://127.0.0.1:6379', prefix: 'test-pool' });
    expect(config.vm_cycle_timeout).toBe(5);
    expect(config.groups.map((g) => g.name)).toEqual(['base', 'arm']);
    expect(config.groups[0]).toMatchObject({ archs: ['x86_64', 'i386'], max_vm_total: 8, vm_terminating_timeout: 600 });
    expect(config.groups[1]).toMatchObject({ archs: ['aarch64'], vm_max_check_fails: 0, max_vm_per_user: 4 });
    expect(loadConfig(path, { REDIS_URL: 'redis://127.0.0.2:1' }).redis.url).toBe('redis://127.0.0.2:1');
  });

  it('names the file and the field of a bad value', () => {
    const path = join(dir, 'bad.yaml');
    writeFileSync(path, 'groups:\n  - name: base\n    max_vm_total: lots\n    colour: red\n');
    const err = errorOf(() => loadConfig(path, {}));
    expect(err.message).toContain(path);
    expect(err.message).toContain('groups.0.max_vm_total');
    expect(err.message).toContain('"lots"');
    expect(err.message).toContain('groups.0.colour');
  });

  it('reports a missing file and invalid YAML clearly', () => {
    const missing = join(dir, 'missing.yaml');
    expect(errorOf(() => loadConfig(missing, {})).message).toContain(missing);
    const broken = join(dir, 'broken.yaml');
    writeFileSync(broken, 'groups: [ {name: base\n');
    expect(errorOf(() => loadConfig(broken, {})).message).toMatch(/not valid YAML/);
  });
});
