import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/index.js';
import { configSecrets } from '../../src/config/redaction.js';
import { maskSecrets } from '../../src/text/redact.js';

// Config errors say where a problem is, never what a secret is: a YAML syntax error names its line
// and column, not the line's text; an unknown (mistyped) key is named, its value is not.

const SECRET = 'hunter2-very-secret-value';
const dir = mkdtempSync(join(tmpdir(), 'vmpool-secret-errors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function errorOfFile(text: string): ConfigError {
  const path = join(dir, `config-${++n}.yaml`);
  writeFileSync(path, text);
  try {
    loadConfig(path, {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('the config loaded');
}

function errorOf(input: unknown): ConfigError {
  try {
    parseConfig(input, {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('the config parsed');
}

describe('YAML syntax errors', () => {
  it('an unclosed quote after a password: line and column, not the line', () => {
    const err = errorOfFile(`redis:\n  url: redis://127.0.0.1:6379\n  password: "${SECRET}\nweb: [\n`);
    expect(err.message).toMatch(/is not valid YAML: .* at line \d+, column \d+ \(the line is not shown/);
    expect(err.message).not.toContain(SECRET);
    expect(err.message).not.toContain('hunter2');
  });

  it('a duplicated token key: where, not the token', () => {
    const err = errorOfFile(`web:\n  auth:\n    token: ${SECRET}\n    token: ${SECRET}-2\n`);
    expect(err.message).toMatch(/duplicate key at line 4, column 5/);
    expect(err.message).not.toContain('hunter2');
  });

  it('bad indentation on a line with a Redis URL', () => {
    const err = errorOfFile(`redis:\n  prefix: x\n   url: redis://:${SECRET}@h:6379\n`);
    expect(err.message).toMatch(/at line \d+, column \d+ \(the line is not shown/);
    expect(err.message).not.toContain('hunter2');
  });
});

describe('unknown and mistyped keys', () => {
  it.each([
    ['redis.passwd', { redis: { passwd: SECRET } }],
    ['web.auth.tokn', { web: { auth: { tokn: SECRET } } }],
    ['groups.0.provider.secret', { groups: [{ name: 'g', provider: { type: 'command', spawn_cmd: 'a', terminate_cmd: 'b', secret: SECRET } }] }],
    ['groups.0.check.password', { groups: [{ name: 'g', check: { type: 'tcp', port: 22, password: { value: SECRET } } }] }],
  ])('%s is named, its value is not shown', (path, input) => {
    const err = errorOf(input);
    expect(err.message).toContain(`${path}: no such key (unknown option); its value is not shown`);
    expect(err.message).not.toContain('hunter2');
    expect(JSON.stringify(err.issues)).not.toContain('hunter2');
  });

  it('an object where a scalar belongs is not printed (it may hold a token)', () => {
    const err = errorOf({ web: { auth: { tokens: { token: SECRET, scopes: ['admin'] } } } });
    expect(err.message).toMatch(/web.auth.tokens: got an object, expected an array/);
    expect(err.message).not.toContain('hunter2');
    const err2 = errorOf({ redis: { url: [`redis://:${SECRET}@h`] } });
    expect(err2.message).toMatch(/redis.url: got an array of 1, expected a string/);
    expect(err2.message).not.toContain('hunter2');
  });

  it('nor kept in the error (a caller that logs the error object would print it)', () => {
    for (const input of [
      { web: { auth: { tokens: { token: SECRET, scopes: ['admin'] } } } },
      { redis: { url: [`redis://:${SECRET}@h`] } },
      // Too short to be a token, still a secret.
      { web: { auth: { token: 'hunter2-short' } } },
      { groups: [{ name: 'g', provider: { type: 'comand', env: { OS_PASSWORD: SECRET } } }] },
    ]) {
      const err = errorOf(input);
      expect(err.message).not.toContain('hunter2');
      expect(JSON.stringify(err.issues)).not.toContain('hunter2');
    }
  });
});

describe('Redis URLs', () => {
  it.each([
    'redis+sentinel://:pa@ss-hunter2@h1:26379,h2:26379/mymaster',
    'redis+cluster://u:p@ss-hunter2@h1:7000,h2:7000',
    'redis://:pa@ss-hunter2@h1:6379',
  ])('a password with an unescaped @ is not echoed in part (%#)', (url) => {
    let message = '';
    try {
      parseConfig({ redis: { url, prefix: '{x}' } }, {});
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).not.toContain('hunter2');
  });
});

describe('pass_env', () => {
  const provider = (passEnv: string[]) => ({ groups: [{ name: 'g', provider: { type: 'command', spawn_cmd: 'a', terminate_cmd: 'b', pass_env: passEnv }, check: { type: 'tcp', port: 22 } }] });

  it('passes names of variables a hook needs', () => {
    const config = parseConfig(provider(['OS_CLOUD', 'AWS_PROFILE']), {});
    expect(config.groups[0]!.provider).toMatchObject({ pass_env: ['OS_CLOUD', 'AWS_PROFILE'] });
    const check = parseConfig({ groups: [{ name: 'g', check: { type: 'command', cmd: 'c', pass_env: ['SSH_AUTH_SOCK'] } }] }, {});
    expect(check.groups[0]!.check).toMatchObject({ pass_env: ['SSH_AUTH_SOCK'] });
  });

  it.each([
    ['REDIS_URL', /pass_env.1: got "REDIS_URL", expected a variable other than REDIS_URL: it carries the Redis password/],
    ['REDISCLI_AUTH', /a variable other than REDISCLI_AUTH/],
    ['VMPOOL_API_TOKEN', /a variable not named VMPOOL_\*: those are vmpool's own settings and secrets/],
    ['VMPOOL_CONFIG', /a variable not named VMPOOL_\*/],
    ['NOT A NAME', /a variable name/],
  ])('refuses %s with a clear error', (name, message) => {
    expect(errorOf(provider(['OS_CLOUD', name])).message).toMatch(message);
  });

  it('refuses them for the command check too', () => {
    expect(errorOf({ groups: [{ name: 'g', check: { type: 'command', cmd: 'c', pass_env: ['REDIS_URL'] } }] }).message).toMatch(
      /groups.0.check.pass_env.0: .*a variable other than REDIS_URL/,
    );
  });
});

describe('the known secrets masked in hook output', () => {
  it.each([
    ['redis+sentinel://:pa:ss-word%40x@h1:26379,h2:26379/mymaster', 'pa:ss-word@x'],
    ['redis+cluster://user:pa:ss-word%40x@h1:7000,h2:7000', 'pa:ss-word@x'],
  ])('include the whole password of a cluster or sentinel URL (%s)', (url, password) => {
    const secrets = configSecrets(parseConfig({ redis: { url, prefix: '{x}' } }, {}));
    expect(secrets).toContain(password);
    expect(maskSecrets(`connecting with ${password}`, secrets)).toBe('connecting with ***');
  });

  it('are the Redis passwords, the web tokens and the long env values', () => {
    const config = parseConfig(
      {
        redis: { url: 'redis://user:p%40ss-word@127.0.0.1:6379', password: 'servers-pw', sentinel: { name: 'm', sentinels: ['127.0.0.1:26379'], password: 'sentinel-pw' } },
        web: { auth: { token: 'admin-token-0123456789', tokens: [{ token: 'builder-token-0123456789', scopes: ['builder'] }] } },
        groups: [
          {
            name: 'g',
            provider: { type: 'command', spawn_cmd: 'a', terminate_cmd: 'b', env: { OS_PASSWORD: 'cloud-password', PORT: '2222' } },
            check: { type: 'command', cmd: 'c', env: { CHECK_KEY: 'check-key-value' } },
          },
        ],
      },
      {},
    );
    expect(configSecrets(config).sort()).toEqual(
      ['p@ss-word', 'p%40ss-word', 'servers-pw', 'sentinel-pw', 'admin-token-0123456789', 'builder-token-0123456789', 'cloud-password', 'check-key-value'].sort(),
    );
    // A value shorter than ENV_SECRET_MIN_LENGTH (a port) is a setting, not masked.
    expect(configSecrets(config)).not.toContain('2222');
    expect(maskSecrets('auth p@ss-word and p%40ss-word, port 2222', configSecrets(config))).toBe('auth *** and ***, port 2222');
  });

  it('include the long values of the variables that pass_env names, from vmpool\'s environment', () => {
    const config = parseConfig(
      {
        accounts: { cloud: { quota_cmd: 'q', pass_env: ['QUOTA_TOKEN'] } },
        groups: [
          {
            name: 'g',
            account: 'cloud',
            provider: { type: 'command', spawn_cmd: 'a', terminate_cmd: 'b', pass_env: ['OS_PASSWORD', 'OS_REGION', 'UNSET_VAR'] },
            check: { type: 'command', cmd: 'c', pass_env: ['CHECK_SECRET'] },
          },
        ],
      },
      {},
    );
    const environment = { OS_PASSWORD: 'cloud-password', OS_REGION: 'east', CHECK_SECRET: 'check-secret-value', QUOTA_TOKEN: 'quota-token-value', NOT_NAMED: 'not-named-value' };
    expect(configSecrets(config, environment).sort()).toEqual(['check-secret-value', 'cloud-password', 'quota-token-value']);
    // Nothing of a variable no pass_env names, and nothing when the named ones are unset.
    expect(configSecrets(config, {})).toEqual([]);
  });
});
