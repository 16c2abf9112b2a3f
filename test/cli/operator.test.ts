import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { parse as parseYaml } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { Ajv } from 'ajv';
import { configJsonSchema, loadConfig, parseConfig, type ConfigInput } from '../../src/config/index.js';
import { embeddedConfig } from '../../src/defaults.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { createProvider } from '../../src/providers/index.js';
import type { LocalProvider } from '../../src/providers/local.js';
import { createLogger } from '../../src/logger.js';
import { QueueNames } from '../../queues/names.js';
import { ROOT, freePort, nodeArgsFor, waitFor, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, closePool, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// The first hour of an operator, with `vmpool` as real processes on the real Redis: config init,
// a taken web port, an unreachable Redis, a short acquire with no worker, stopping and `down`.
const prefix = uniquePrefix('operator');
const stateDir = mkdtempSync(join(tmpdir(), 'vmpool-operator-'));
const localProvider = { type: 'local' as const, state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000), spawn_timeout: 15 };
const poolConfig = {
  redis: { url: REDIS_URL },
  vm_cycle_timeout: 1,
  web: { port: 0 },
  groups: [{ name: 'local', archs: ['x86_64'], max_vm_total: 1, min_ready: 1, vm_spawn_min_interval: 0, provider: localProvider }],
} satisfies ConfigInput;
const configFile = writeConfigFile(poolConfig);
const baseEnv: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'info', VMPOOL_SHUTDOWN_DEADLINE_MS: '4000' };
for (const name of ['VMPOOL_ACQUIRE_GRACE_MS', 'PORT', 'HOST', 'VMPOOL_CONFIG']) delete baseEnv[name];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

function run(entry: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [...nodeArgsFor(entry), ...args], { cwd: ROOT, env: { ...baseEnv, VMPOOL_PREFIX: prefix, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}
const vmpool = (args: string[], env?: NodeJS.ProcessEnv) => run('src/cli/main.ts', args, env);

interface Started {
  child: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

/** `vmpool ... start ...` as a long-running process; resolves once `ready` was printed. */
async function startVmpool(args: string[], ready: string): Promise<Started> {
  const child = spawn(process.execPath, [...nodeArgsFor('src/cli/main.ts'), ...args], { cwd: ROOT, env: { ...baseEnv, VMPOOL_PREFIX: prefix }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const collect = (chunk: Buffer) => lines.push(...chunk.toString().split('\n').filter(Boolean));
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  await waitFor(() => lines.some((l) => l.includes(ready)) || child.exitCode !== null, 30_000, ready);
  if (child.exitCode !== null) throw new Error(`vmpool exited early:\n${lines.join('\n')}`);
  return { child, lines, exited };
}

const started: Started[] = [];
const redis = connect();
const vmm = new VmManager(parseConfig(poolConfig, {}), { redis, prefix });
const localGroup = { index: 0, config: parseConfig(poolConfig, {}).groups[0]!, poolId: vmm.poolId };
const provider = createProvider(localGroup, { logger: createLogger('test') }) as LocalProvider;

afterAll(async () => {
  for (const s of started) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
  // The VMs outlive vmpool: stop whatever a failed test left.
  for (const m of await provider.list(localGroup)) await provider.terminate({ group: localGroup, vmName: m.name, vmIp: m.ip ?? null });
  await vmm.close();
  await closePool(prefix, redis, [], new Queue(QueueNames.RECONCILE, { connection: redis, prefix }));
  rmSync(stateDir, { recursive: true, force: true });
});

describe('vmpool config init', () => {
  it('prints the embedded default as commented YAML that loads as exactly the embedded default', async () => {
    const res = await vmpool(['config', 'init']);
    expect(res.code).toBe(0);
    // Editors validate and complete the file against the installed package's JSON Schema.
    const schemaLine = /^# yaml-language-server: \$schema=(\S+)\n# vmpool config: the embedded default/.exec(res.stdout);
    expect(schemaLine).not.toBeNull();
    expect(existsSync(schemaLine![1]!)).toBe(true);
    expect(res.stdout).toContain('min_ready: 2 # clean ready VMs kept waiting (warm pool)');
    expect(parseConfig(parseYaml(res.stdout), {})).toEqual(parseConfig(embeddedConfig, {}));
  });

  it('config schema prints the JSON Schema that the $schema line names, and it validates config init and refuses an unknown key', async () => {
    const res = await vmpool(['config', 'schema']);
    expect(res.code).toBe(0);
    const schema = JSON.parse(res.stdout) as object;
    expect(schema).toEqual(configJsonSchema());
    const init = await vmpool(['config', 'init']);
    const schemaPath = /^# yaml-language-server: \$schema=(\S+)/.exec(init.stdout)![1]!;
    expect(JSON.parse(readFileSync(schemaPath, 'utf8'))).toEqual(schema);
    const validate = new Ajv({ strict: true, allErrors: true, validateFormats: false }).compile(schema);
    expect(validate(parseYaml(init.stdout)), JSON.stringify(validate.errors)).toBe(true);
    expect(validate({ ...parseYaml(init.stdout), max_vm_totl: 3 })).toBe(false);
  });

  it('writes FILE, which passes config check; refuses to overwrite it without --force', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-init-'));
    try {
      const file = join(dir, 'vmpool.yaml');
      const first = await vmpool(['config', 'init', file]);
      expect(first.code).toBe(0);
      expect(first.stderr).toContain(`wrote ${file}`);
      expect(loadConfig(file, {})).toEqual(parseConfig(embeddedConfig, {}));
      const check = await vmpool(['config', 'check', file]);
      expect(check.code).toBe(0);
      expect(check.stdout).toContain('ok (1 group: local)');
      const again = await vmpool(['config', 'init', file]);
      expect(again.code).toBe(1);
      expect(again.stderr).toContain('exists; not overwritten (use --force to replace it)');
      const forced = await vmpool(['config', 'init', '--force', file]);
      expect(forced.code).toBe(0);
      expect(readFileSync(file, 'utf8')).toBe((await vmpool(['config', 'init'])).stdout);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a file that sets only web.port passes config check with the embedded group', async () => {
    const check = await vmpool(['config', 'check', writeConfigFile({ web: { port: 9000 } })]);
    expect(check.code).toBe(0);
    expect(check.stdout).toContain('ok (1 group: local)');
  });
});

describe('vmpool start: order and failures', () => {
  it('binds web first: a taken port (here from PORT) exits 1 naming it, before any worker ran or anything was spawned', async () => {
    const port = await freePort();
    const taken: Server = createServer();
    await new Promise<void>((res) => taken.listen(port, '127.0.0.1', res));
    const own = uniquePrefix('operator-port');
    try {
      const res = await vmpool(['--config', configFile, 'start'], { PORT: String(port), VMPOOL_PREFIX: own });
      expect(res.code).toBe(1);
      expect(res.stderr).toContain(`web cannot listen on 127.0.0.1:${port}: the port is in use by another process`);
      expect(res.stderr).toContain('(EADDRINUSE); nothing was started');
      expect(res.stdout).not.toContain('"worker started"');
      // The web process's queue handles wrote their meta keys; no job, no VM, no schedule.
      expect((await redis.keys(`${own}:*`)).filter((k) => !k.endsWith(':meta'))).toEqual([]);
      expect(await provider.list(localGroup)).toEqual([]);
    } finally {
      await new Promise((res) => taken.close(res));
      await deleteKeysWithPrefix(redis, own);
    }
  });

  it('exits 1 when Redis is unreachable, with the hint once; a local redis-server is suggested only for a loopback URL', async () => {
    const port = await freePort();
    for (const entry of ['src/cli/main.ts', 'workers/spawn.ts', 'workers/web.ts']) {
      // (start would run a private redis-server instead: test/cli/privateRedis.test.ts)
      const res = await run(entry, entry === 'src/cli/main.ts' ? ['start'] : [], { REDIS_URL: `redis://127.0.0.1:${port}`, VMPOOL_PRIVATE_REDIS: '0' });
      expect(res.code, `${entry}: ${res.stderr}`).toBe(1);
      const all = res.stdout + res.stderr;
      expect(all.split('Either start it with').length - 1, all).toBe(1);
      expect(res.stderr).toContain(`\`redis-server --daemonize yes --port ${port}\``);
    }
    const remote = await vmpool(['start'], { REDIS_URL: 'redis://redis.invalid:6379' });
    expect(remote.code).toBe(1);
    expect(remote.stderr).toContain('Redis is not reachable at redis://redis.invalid:6379. Check that Redis runs there');
    expect(remote.stderr).not.toContain('redis-server');
  }, 90_000);

  it('acquire --timeout 2 with no acquire worker gives up close to 2 s, not 2 s plus the 60 s grace', async () => {
    const own = uniquePrefix('operator-grace');
    const res = await vmpool(['--config', configFile, 'acquire', '--owner', 'o', '--sandbox', 's', '--arch', 'x86_64', '--timeout', '2'], { VMPOOL_PREFIX: own });
    await deleteKeysWithPrefix(redis, own);
    expect(res.code, res.stderr).toBe(4);
    expect(res.stderr).toContain('is an acquire worker running?');
    // 2 s of timeout + 2 s of grace, plus the CLI's start: far below 2 s plus the 60 s grace, with
    // room for a loaded machine's slow process start.
    expect(res.ms).toBeLessThan(30_000);
  }, 60_000);
});

describe('stopping, and vmpool down', () => {
  it('a stopped start says that its VMs keep running and how to clean up; down terminates them (with terminate workers) or says none runs', async () => {
    const pool = await startVmpool(['--config', configFile, 'start'], 'web: http');
    started.push(pool);
    await waitFor(async () => (await vmm.getAllVmRecords()).some((v) => v.state === 'ready'), 40_000, 'a ready local VM');

    // With the whole pool running: the VM goes away (reconcile may spawn its replacement).
    const down = await vmpool(['--config', configFile, 'down', '--timeout', '30']);
    expect(down.code, down.stdout + down.stderr).toBe(0);
    expect(down.stdout).toContain('terminating 1 VM of the pool (0 already terminating)');
    expect(down.stdout).toContain('all 1 VM is gone');

    // The replacement is there when the operator presses Ctrl-C.
    await waitFor(async () => (await vmm.getAllVmRecords()).length > 0, 30_000, 'the replacement VM');
    const stopAt = Date.now();
    pool.child.kill('SIGINT');
    expect(await pool.exited).toBe(0);
    expect(Date.now() - stopAt).toBeLessThan(5_000);
    const last = JSON.parse(pool.lines.at(-1)!) as { msg: string };
    expect(last.msg).toMatch(/^stopped; 1 VM keeps running \(VMs outlive vmpool\)\. To terminate them: `vmpool --config \S+ down` while terminate workers run/);

    // No terminate worker: down requests termination, says so, and gives up with exit 1.
    const alone = await vmpool(['--config', configFile, 'down', '--timeout', '2']);
    expect(alone.code).toBe(1);
    expect(alone.stderr).toContain('no terminate worker is connected');
    expect(alone.stderr).toContain('no VM went away within 2 s: are terminate workers running?');

    // A terminate worker that starts while down waits: the VM (already terminating) goes.
    const waiting = vmpool(['--config', configFile, 'down', '--group', 'local', '--timeout', '30']);
    await new Promise((r) => setTimeout(r, 1_000));
    const terminate = await startVmpool(['--config', configFile, 'start', 'terminate'], '"worker started"');
    started.push(terminate);
    const done = await waiting;
    expect(done.code, done.stdout + done.stderr).toBe(0);
    expect(done.stdout).toContain('terminating 1 VM of group local (1 already terminating)');
    expect(done.stdout).toContain('all 1 VM is gone');
    expect(await vmm.getAllVmRecords()).toEqual([]);
    terminate.child.kill('SIGTERM');
    expect(await terminate.exited).toBe(0);
    expect(await provider.list(localGroup)).toEqual([]);
  }, 150_000);
});
