import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../../src/config/index.js';
import { createHealthCheck } from '../../src/health/index.js';
import { HOOK_LOG_LINE_MAX_CHARS, HOOK_LOG_MAX_CHARS } from '../../src/providers/hook.js';
import { createProvider } from '../../src/providers/index.js';
import type { ProviderGroup } from '../../src/providers/types.js';
import { createJobContext, type OwnedJobContext } from '../../src/runtime/worker.js';
import { HOOKS_DIR } from '../helpers/hookMachines.js';
import { uniquePrefix } from '../helpers/redis.js';
import { cli, startPrivateRedis, type PrivateRedis } from '../helpers/redisServers.js';

// Hooks are real processes run by a real job context (the workers' wiring), with vmpool's own
// environment holding REDIS_URL with a password and a VMPOOL_* token, and web tokens configured.
// What a hook sees of it, and what of its output is logged, is read from its files and the logs.

const REDIS_PASSWORD = 'redis-pw-7f3a9c1e';
const ADMIN_TOKEN = 'admin-token-0123456789abcdef';
const BUILDER_TOKEN = 'builder-token-fedcba9876543210';
const ENV_TOKEN = 'vmpool-env-token-5555aaaa';

const ENVDUMP = join(HOOKS_DIR, 'envdump.sh');
let dir: string;
let redis: PrivateRedis;
let config: Config;
let ctx: OwnedJobContext;
const logged: string[] = [];
const savedEnv = { ...process.env };

function group(): ProviderGroup {
  return { index: 0, config: config.groups[0]!, poolId: ctx.vmm.poolId };
}

/** The environment a hook wrote to its file, as NAME=value lines. */
function envOf(file: string): string {
  expect(existsSync(file)).toBe(true);
  return readFileSync(file, 'utf8');
}

/** Asserts that no secret of vmpool's is in the text (a hook's environment, or what was logged). */
function expectNoSecrets(text: string): void {
  for (const secret of [REDIS_PASSWORD, ADMIN_TOKEN, BUILDER_TOKEN, ENV_TOKEN]) expect(text).not.toContain(secret);
  expect(text).not.toMatch(/^REDIS_URL=/m);
  expect(text).not.toMatch(/^NOT_PASSED=/m);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmpool-hooksecrets-'));
  redis = await startPrivateRedis();
  expect(await cli(redis.port, 'config', 'set', 'requirepass', REDIS_PASSWORD)).toBe('OK');
  process.env.REDIS_URL = `redis://:${REDIS_PASSWORD}@127.0.0.1:${redis.port}`;
  process.env.VMPOOL_API_TOKEN = ENV_TOKEN;
  process.env.PASSED_SETTING = 'passed-value-1';
  process.env.NOT_PASSED = 'not-for-hooks';
  config = parseConfig(
    {
      redis: { prefix: uniquePrefix('hook-secrets') },
      web: { auth: { token: ADMIN_TOKEN, tokens: [{ name: 'copr', token: BUILDER_TOKEN, scopes: ['builder'] }] } },
      groups: [
        {
          name: 'g',
          allowed_networks: ['192.0.2.0/24'],
          provider: {
            type: 'command',
            // The spawn hook repeats a token it was given: its output must be masked.
            spawn_cmd: [ENVDUMP, `token=${ADMIN_TOKEN}`],
            terminate_cmd: [ENVDUMP],
            // A list that prints a token: the failure that quotes it must mask it.
            list_cmd: ['/bin/echo', `said: ${BUILDER_TOKEN}`],
            env: { HOOK_ENV_FILE: join(dir, 'provider-env'), HOOK_LONG_LINE: '5000' },
            pass_env: ['PASSED_SETTING', 'NOT_SET_ANYWHERE'],
          },
          check: { type: 'command', cmd: [ENVDUMP, REDIS_PASSWORD], env: { HOOK_ENV_FILE: join(dir, 'check-env') }, pass_env: ['PASSED_SETTING'] },
        },
      ],
    },
    process.env,
  );
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logged.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  ctx = createJobContext(config, { logger: pino({ level: 'info' }, sink), providerFactory: createProvider, healthCheckFactory: createHealthCheck });
  // The context really talks to the password-protected Redis.
  expect(await ctx.connection.ping()).toBe('PONG');
});

afterAll(async () => {
  await ctx?.close();
  await redis?.stop();
  for (const name of ['REDIS_URL', 'VMPOOL_API_TOKEN', 'PASSED_SETTING', 'NOT_PASSED']) {
    if (savedEnv[name] === undefined) delete process.env[name];
    else process.env[name] = savedEnv[name];
  }
  rmSync(dir, { recursive: true, force: true });
});

describe("a hook's environment", () => {
  it('spawn: PATH, HOME, the VMPOOL_* values, env and pass_env, and neither the Redis password nor any token', async () => {
    const jobLog: string[] = [];
    const machine = await ctx.provider('g').spawn({ group: group(), spawnId: 'sp-secret-1', log: (l) => void jobLog.push(l) });
    expect(machine).toEqual({ name: 'envdump-1', ip: '192.0.2.77' });
    const env = envOf(join(dir, 'provider-env'));
    expectNoSecrets(env);
    expect(env).toContain(`PATH=${process.env.PATH}\n`);
    expect(env).toMatch(/^HOME=/m);
    expect(env).toContain('PASSED_SETTING=passed-value-1\n');
    expect(env).toContain('VMPOOL_GROUP_NAME=g\n');
    expect(env).toContain('VMPOOL_SPAWN_ID=sp-secret-1\n');
    expect(env).toContain(`VMPOOL_POOL_ID=${ctx.vmm.poolId}\n`);
    // The only VMPOOL_* variables are vmpool's documented ones.
    const names = env.split('\n').filter(Boolean).map((l) => l.slice(0, l.indexOf('=')));
    expect(names.filter((n) => n.startsWith('VMPOOL_')).sort()).toEqual(['VMPOOL_GROUP', 'VMPOOL_GROUP_NAME', 'VMPOOL_IMAGE', 'VMPOOL_LAUNCH_FINGERPRINT', 'VMPOOL_POOL_ID', 'VMPOOL_SPAWN_ID', 'VMPOOL_VM_IP', 'VMPOOL_VM_NAME']);

    // Output: the token the hook repeated is masked in the job log and in pino's log.
    expect(jobLog).toContain('spawn_cmd stdout: said: token=***');
    expect(logged.some((l) => l.includes('said: token=***'))).toBe(true);
    // The hook printed its environment: the value pass_env gave it (8 characters or more, as an
    // env value is) is masked too, as it may be a credential (OS_PASSWORD).
    expect(jobLog).toContain('spawn_cmd stdout: PASSED_SETTING=***');
    expect(jobLog.join('\n')).not.toContain('passed-value-1');
    expect(logged.join('\n')).not.toContain('passed-value-1');
    expectNoSecrets(jobLog.join('\n'));
    expectNoSecrets(logged.join('\n'));
    // A long line is cut.
    const long = jobLog.find((l) => l.includes('xxxxxxxxxx'))!;
    expect(long).toContain('xxx... (4000 more characters not logged)');
    expect(long.length).toBeLessThan(HOOK_LOG_LINE_MAX_CHARS + 100);
  });

  it('terminate: the same clean environment, with the VM', async () => {
    await ctx.provider('g').terminate({ group: group(), vmName: 'envdump-1', vmIp: '192.0.2.77' });
    const env = envOf(join(dir, 'provider-env'));
    expectNoSecrets(env);
    expect(env).toContain('VMPOOL_VM_NAME=envdump-1\n');
    expect(env).toContain('PASSED_SETTING=passed-value-1\n');
  });

  it('list: a failure that quotes a secret the hook printed masks it', async () => {
    const err = (await ctx.provider('g').list!(group()).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/list_cmd line 1 "said: \*\*\*"/);
    expectNoSecrets(err.message);
  });

  it('the command check: the same clean environment, and its detail and log masked', async () => {
    const jobLog: string[] = [];
    const result = await ctx.healthCheck('g').check({ group: group(), vmName: 'envdump-1', vmIp: '192.0.2.77' }, { timeoutMs: 10_000, log: (l) => void jobLog.push(l) });
    expect(result.ok).toBe(true);
    const env = envOf(join(dir, 'check-env'));
    expectNoSecrets(env);
    expect(env).toContain('PASSED_SETTING=passed-value-1\n');
    expect(env).toContain('VMPOOL_VM_IP=192.0.2.77\n');
    expect(jobLog).toContain('check cmd stdout: said: ***');
    expect(jobLog).toContain('check cmd stdout: PASSED_SETTING=***');
    expect(result.detail).not.toContain('passed-value-1');
    expectNoSecrets(jobLog.join('\n'));
    expectNoSecrets(result.detail);
    expectNoSecrets(logged.join('\n'));
  });
});

describe("a hook's logged output", () => {
  it(`stops at ${HOOK_LOG_MAX_CHARS} characters per run, and says so`, async () => {
    const g: ProviderGroup = {
      index: 0,
      config: parseConfig({
        groups: [
          {
            name: 'chatty',
            allowed_networks: ['192.0.2.0/24'],
            provider: {
              type: 'command',
              // 200 lines of 1,000 characters, then the machine: 200,000 characters in all.
              spawn_cmd: ['/bin/sh', '-c', `for i in $(seq 200); do head -c 1000 /dev/zero | tr '\\0' y; echo; done; echo '{"name": "chatty-1", "ip": "192.0.2.78"}'`],
              terminate_cmd: ['/bin/true'],
            },
            check: { type: 'tcp', port: 22 },
          },
        ],
      }, {}).groups[0]!,
    };
    const jobLog: string[] = [];
    expect(await createProvider(g, { logger: pino({ level: 'silent' }) }).spawn({ group: g, spawnId: 'sp-chatty', log: (l) => void jobLog.push(l) })).toEqual({ name: 'chatty-1', ip: '192.0.2.78' });
    const output = jobLog.filter((l) => l.startsWith('spawn_cmd stdout: '));
    expect(output.length).toBe(Math.floor(HOOK_LOG_MAX_CHARS / 1000));
    expect(jobLog.at(-1)).toBe(`spawn_cmd: output beyond ${HOOK_LOG_MAX_CHARS} characters not logged`);
  });
});
