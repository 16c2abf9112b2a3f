import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { ConfigError, configJsonSchema, configSchemaPath, configTemplate, parseConfig } from '../../src/config/index.js';
import { ACCOUNTS_EXAMPLE_INTRO, GROUP_EXAMPLE_INTRO } from '../../src/config/template.js';

// The published JSON Schema, checked by a real JSON Schema validator (ajv), against the same files
// that parseConfig reads: what one accepts the other must accept, and both refuse unknown keys.

const ROOT = join(import.meta.dirname, '..', '..');

interface Validate {
  (data: unknown): boolean;
  errors?: unknown[] | null;
}

function compileSchema(): Validate {
  // Draft 7 with strict mode on: a keyword ajv does not know is an error. Formats (uri) are annotations.
  const ajv = new Ajv({ strict: true, allErrors: true, validateFormats: false });
  return ajv.compile(configJsonSchema());
}

/** YAML files under examples/ that are not vmpool configs (Prometheus rules). */
const NOT_CONFIGS = ['examples/prometheus/vmpool-alerts.yml', 'examples/prometheus/prometheus.yml'];

/** Every YAML file under examples/ (at any depth) but NOT_CONFIGS: each is a vmpool config. */
function exampleConfigs(dir = join(ROOT, 'examples')): string[] {
  return readdirSync(dir).flatMap((entry) => {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) return exampleConfigs(path);
    return /\.ya?ml$/.test(entry) && !NOT_CONFIGS.includes(relative(ROOT, path)) ? [path] : [];
  });
}

describe('the config JSON Schema', () => {
  it('validates the output of vmpool config init, which parseConfig accepts too', async () => {
    const validate = compileSchema();
    const data = parseYaml(configTemplate());
    expect(validate(data), JSON.stringify(validate.errors)).toBe(true);
    expect(() => parseConfig(data, {})).not.toThrow();
  });

  it("config init's commented examples (accounts, the optional group keys) parse once uncommented as their notes say", () => {
    const lines = configTemplate().split('\n');
    // accounts: the comment lines after the intro replace `{}`.
    const intro = lines.findIndex((l) => l.includes(ACCOUNTS_EXAMPLE_INTRO));
    const at = lines.indexOf('accounts: {}');
    expect(intro).toBeGreaterThan(0);
    expect(at).toBeGreaterThan(intro);
    const accounts = lines.slice(intro + 1, at).map((l) => l.replace(/^# /, ''));
    let out = [...lines.slice(0, intro + 1), 'accounts:', ...accounts, ...lines.slice(at + 1)];
    // The group keys: the comment lines after their intro, at the group's indentation.
    const keys = out.findIndex((l) => l.includes(GROUP_EXAMPLE_INTRO));
    expect(keys).toBeGreaterThan(0);
    out = out.map((l, i) => (i > keys && /^ {4}# [a-z_]+: /.test(l) ? l.replace(/^ {4}# /, '    ') : l));
    // As the notes say: resources in the units the limits name, and the fallback group in the config.
    const text = out.join('\n').replace('resources: {}', 'resources: { cores: 4, ram_mb: 8192 }');
    const data = parseYaml(text) as { groups: object[] };
    data.groups.push({ name: 'ondemand' });
    const validate = compileSchema();
    expect(validate(data), JSON.stringify(validate.errors)).toBe(true);
    const config = parseConfig(data, {});
    expect(config.accounts['openstack-prod']).toMatchObject({ max_resources: { cores: 64, instances: 20 }, quota_cmd: ['/etc/vmpool/hooks/quota.sh'], quota_cache: 300 });
    expect(config.groups[0]).toMatchObject({
      account: 'openstack-prod',
      resources: { cores: 4, ram_mb: 8192 },
      max_resources: { cores: 32 },
      max_resources_per_owner: { cores: 8 },
      check_on_acquire: 'ssh',
      check_on_acquire_timeout: 3,
      fallback_groups: ['ondemand'],
      image: 'fedora-41-x86_64',
      launch_revision: 0,
      max_ready_age: 86400,
      breaker: { failures: 3, backoff: 60, max_backoff: 3600 },
    });
  });

  it('validates every example config, which parseConfig accepts too', async () => {
    const validate = compileSchema();
    const files = exampleConfigs();
    expect(files.map((f) => relative(ROOT, f)).sort()).toEqual(expect.arrayContaining(['examples/libvirt/vmpool.yaml', 'examples/netns/vmpool.yaml', 'examples/openstack/vmpool.yaml']));
    for (const file of files) {
      const data = parseYaml(readFileSync(file, 'utf8'));
      expect(validate(data), `${relative(ROOT, file)}: ${JSON.stringify(validate.errors)}`).toBe(true);
      expect(() => parseConfig(data, {}), relative(ROOT, file)).not.toThrow();
    }
  });

  it.each([
    ['at the top', { bogus: 1 }],
    ['in redis', { redis: { urll: 'redis://127.0.0.1:6379' } }],
    ['in a group', { groups: [{ name: 'a', max_vms: 3 }] }],
    ['in a command provider', { groups: [{ name: 'a', provider: { type: 'command', spawn_cmd: 's', terminate_cmd: 't', spawn_comd: 's' }, check: { type: 'tcp', port: 22 } }] }],
    ['in a token', { web: { auth: { tokens: [{ token: 'x'.repeat(16), scopes: ['admin'], scope: 'admin' }] } } }],
  ])('rejects an unknown key %s, as parseConfig does', async (_where, input) => {
    const validate = compileSchema();
    expect(validate(input)).toBe(false);
    expect(JSON.stringify(validate.errors)).toContain('additionalProperties');
    expect(() => parseConfig(input, {})).toThrow(ConfigError);
    expect(() => parseConfig(input, {})).toThrow(/no such key \(unknown option\)/);
  });

  it('rejects a value of the wrong type, as parseConfig does', async () => {
    const validate = compileSchema();
    const input = { groups: [{ name: 'a', max_vm_total: 'eight' }] };
    expect(validate(input)).toBe(false);
    expect(() => parseConfig(input, {})).toThrow(ConfigError);
  });

  it('describes every key, with its default where it has one', () => {
    const missing: string[] = [];
    const walk = (node: Record<string, unknown>, path: string): void => {
      for (const [key, value] of Object.entries((node.properties ?? {}) as Record<string, Record<string, unknown>>)) {
        if (typeof value.description !== 'string' || value.description === '') missing.push(`${path}${key}`);
        walk(value, `${path}${key}.`);
        for (const variant of [...((value.oneOf ?? []) as object[]), ...((value.anyOf ?? []) as object[])]) walk(variant as Record<string, unknown>, `${path}${key}.`);
        if (value.items) walk(value.items as Record<string, unknown>, `${path}${key}[].`);
      }
    };
    const schema = configJsonSchema();
    walk(schema, '');
    expect(missing).toEqual([]);
    const groups = (schema.properties as { groups: { items: { properties: Record<string, { default?: unknown }> } } }).groups;
    const groupProps = groups.items.properties;
    expect(groupProps.max_vm_total!.default).toBe(8);
    expect(groupProps.lease_timeout!.default).toBe(300);
  });

  it('is the file that vmpool config init points editors at', () => {
    const first = configTemplate().split('\n')[0]!;
    expect(first).toBe(`# yaml-language-server: $schema=${configSchemaPath()}`);
    expect(existsSync(configSchemaPath())).toBe(true);
    expect(JSON.parse(readFileSync(configSchemaPath(), 'utf8'))).toEqual(configJsonSchema());
  });
});
