import { execFile } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createHealthCheck } from '../../src/health/index.js';
import { createLogger } from '../../src/logger.js';
import { createProvider } from '../../src/providers/index.js';
import { LocalProvider, localVmCommand } from '../../src/providers/local.js';
import { generateSshKeyPair } from '../../src/providers/sshKeyPair.js';
import type { ProviderGroup } from '../../src/providers/types.js';
import { isLive } from '../helpers/netns.js';

const run = promisify(execFile);
const logger = createLogger('test');

let stateDir: string;
let group: ProviderGroup;
let otherGroup: ProviderGroup;
let provider: LocalProvider;
// A random address block and port, so concurrent runs never meet.
const providerConfig = () => ({ type: 'local', state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000), spawn_timeout: 15 });
let rawConfig: ReturnType<typeof providerConfig>;

beforeAll(() => {
  stateDir = mkdtempSync(join(tmpdir(), 'vmpool-local-test-'));
  rawConfig = providerConfig();
  group = { index: 0, config: parseConfig({ groups: [{ name: 'local', provider: rawConfig }] }).groups[0]! };
  otherGroup = { index: 1, config: parseConfig({ groups: [{ name: 'other', provider: rawConfig }] }).groups[0]! };
  provider = createProvider(group, { logger }) as LocalProvider;
});

afterAll(async () => {
  // Stop every VM this file made, whatever happened in the tests.
  for (const g of [group, otherGroup]) {
    for (const m of await provider.list(g)) await provider.terminate({ group: g, vmName: m.name, vmIp: m.ip ?? null });
  }
  rmSync(stateDir, { recursive: true, force: true });
});

/** Runs a command on a local VM over SSH with the provider's client key. */
function sshExec(ip: string, port: number, command: string, privateKey: Buffer): Promise<{ out: string; code: number | null }> {
  return new Promise((resolveExec, reject) => {
    const conn = new ssh2.Client();
    conn.on('error', reject);
    conn.on('ready', () => {
      conn.exec(command, (err, stream) => {
        if (err) return reject(err);
        let out = '';
        stream.on('data', (d: Buffer) => (out += d.toString()));
        stream.on('close', (code: number | null) => {
          conn.end();
          resolveExec({ out, code });
        });
      });
    });
    conn.connect({ host: ip, port, username: 'builder', privateKey, readyTimeout: 5000 });
  });
}

describe('local provider', () => {
  it('spawns a VM that outlives its spawner, passes the ssh check, and terminates from another process', async () => {
    const tsx = createRequire(import.meta.url).resolve('tsx');
    const script = resolve(import.meta.dirname, 'fixtures/spawnLocal.ts');
    const { stdout } = await run(process.execPath, ['--import', pathToFileURL(tsx).href, script, JSON.stringify(rawConfig)], { timeout: 20_000 });
    // The spawning process has exited here.
    const machine = JSON.parse(stdout.trim().split('\n').at(-1)!) as { name: string; ip: string };
    expect(machine.ip).toMatch(new RegExp(`^127\\.${rawConfig.ip_base}\\.\\d+\\.\\d+$`));

    const state = provider.readState(machine.name)!;
    expect(state.ip).toBe(machine.ip);
    expect(isLive(state.pid)).toBe(true);
    expect(await provider.list(group)).toEqual([{ name: machine.name, ip: machine.ip, createdAt: state.created_at }]);

    const check = createHealthCheck(group, { logger });
    const result = await check.check({ vmName: machine.name, vmIp: machine.ip, group }, { timeoutMs: 5000 });
    expect(result).toEqual({ ok: true, detail: `ssh root@${machine.ip}:${rawConfig.port}: "echo hello" -> "hello"` });

    await provider.terminate({ group, vmName: machine.name, vmIp: machine.ip });
    expect(isLive(state.pid)).toBe(false);
    expect(await provider.list(group)).toEqual([]);
    expect(readdirSync(join(stateDir, 'ips'))).toEqual([]);
    // Idempotent: terminating a VM that is gone succeeds.
    await provider.terminate({ group, vmName: machine.name, vmIp: machine.ip });
    const after = await check.check({ vmName: machine.name, vmIp: machine.ip, group }, { timeoutMs: 2000 });
    expect(after.ok).toBe(false);
  });

  it('gives each VM its own address, runs commands, rejects other keys, and terminates by address', async () => {
    const a = await provider.spawn({ group, spawnId: 'a' });
    const b = await provider.spawn({ group, spawnId: 'b' });
    expect(a.ip).not.toBe(b.ip);
    expect(a.name).not.toBe(b.name);
    // Groups sharing a state dir each list only their own VMs.
    const o = await provider.spawn({ group: otherGroup, spawnId: 'o' });
    expect((await provider.list(group)).map((m) => m.name).sort()).toEqual([a.name, b.name].sort());
    expect((await provider.list(otherGroup)).map((m) => m.name)).toEqual([o.name]);
    await provider.terminate({ group: otherGroup, vmName: o.name, vmIp: o.ip });

    const key = readFileSync(join(stateDir, 'id_ed25519'));
    expect(await sshExec(a.ip, rawConfig.port, 'echo hello; exit 3', key)).toEqual({ out: 'hello\n', code: 3 });
    const stranger = Buffer.from(generateSshKeyPair().private);
    await expect(sshExec(b.ip, rawConfig.port, 'echo hello', stranger)).rejects.toThrow(/authentication methods failed/);

    // A caller that only knows the address (a stale record) can still stop the VM.
    const pidB = provider.readState(b.name)!.pid;
    await provider.terminate({ group, vmName: 'some-other-name', vmIp: b.ip });
    expect(isLive(pidB)).toBe(false);
    expect((await provider.list(group)).map((m) => m.name)).toEqual([a.name]);

    await provider.terminate({ group, vmName: a.name, vmIp: a.ip });
    expect(await provider.list(group)).toEqual([]);
    expect(existsSync(join(stateDir, 'vms', `${a.name}.json`))).toBe(false);
  });

  it("runs a build's commands without vmpool's secrets in their environment", async () => {
    const saved = { REDIS_URL: process.env.REDIS_URL, VMPOOL_API_TOKEN: process.env.VMPOOL_API_TOKEN };
    process.env.REDIS_URL = 'redis://:local-vm-redis-pw@127.0.0.1:6379';
    process.env.VMPOOL_API_TOKEN = 'local-vm-token-0123456789';
    try {
      const vm = await provider.spawn({ group, spawnId: 'env' });
      const { out, code } = await sshExec(vm.ip, rawConfig.port, 'env', readFileSync(join(stateDir, 'id_ed25519')));
      await provider.terminate({ group, vmName: vm.name, vmIp: vm.ip });
      expect(code).toBe(0);
      expect(out).toContain(`PATH=${process.env.PATH}\n`);
      expect(out).not.toContain('local-vm-redis-pw');
      expect(out).not.toContain('local-vm-token-0123456789');
      expect(out).not.toMatch(/^(REDIS_URL|VMPOOL_API_TOKEN)=/m);
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it('never signals a pid that is not a local VM process, even with a state file naming it', async () => {
    const forged = { pid: process.pid, name: 'forged-1', group: 'local', ip: `127.${rawConfig.ip_base}.9.9`, port: rawConfig.port, created_at: 1, host_key: 'x' };
    writeFileSync(join(stateDir, 'vms', 'forged-1.json'), JSON.stringify(forged));
    expect(await provider.list(group)).toEqual([]);
    // This test process is the pid: if it were signalled, the test would not finish.
    await provider.terminate({ group, vmName: 'forged-1', vmIp: null });
    expect(existsSync(join(stateDir, 'vms', 'forged-1.json'))).toBe(false);
  });

  it('reports a VM that died on its own as gone from the list', async () => {
    const m = await provider.spawn({ group, spawnId: 'c' });
    const pid = provider.readState(m.name)!.pid;
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 50 && isLive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    expect(await provider.list(group)).toEqual([]);
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
    expect(readdirSync(join(stateDir, 'vms'))).toEqual([]);
  });

  it('fails a spawn clearly when the address is taken, and leaves nothing behind', async () => {
    // Something else listens on the next free address and port.
    const net = await import('node:net');
    const blocker = net.createServer();
    const ip = `127.${rawConfig.ip_base}.0.1`;
    // An earlier test's VM may still be letting go of that address: try again for a while.
    for (let attempt = 0; ; attempt++) {
      const err = await new Promise<Error | null>((r) => {
        blocker.once('error', r);
        blocker.listen(rawConfig.port, ip, () => {
          blocker.off('error', r);
          r(null);
        });
      });
      if (!err) break;
      if (attempt >= 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
    try {
      await expect(provider.spawn({ group, spawnId: 'd' })).rejects.toThrow(/exited with code 1; output: .*EADDRINUSE/);
      expect(await provider.list(group)).toEqual([]);
      expect(readdirSync(join(stateDir, 'ips'))).toEqual([]);
    } finally {
      blocker.close();
    }
  });
});

describe('local provider client key', () => {
  it('replaces a client key ssh2 cannot parse, and its VMs then pass the ssh check', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-local-key-'));
    const keyed: ProviderGroup = { index: 0, config: parseConfig({ groups: [{ name: 'keyed', provider: { ...providerConfig(), state_dir: dir } }] }).groups[0]! };
    const keyedProvider = createProvider(keyed, { logger }) as LocalProvider;
    // What an earlier release could leave: ssh2's generator makes such a key about once in 256.
    const malformed = '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n-----END OPENSSH PRIVATE KEY-----\n';
    writeFileSync(join(dir, 'id_ed25519'), malformed, { mode: 0o600 });
    try {
      const vm = await keyedProvider.spawn({ group: keyed, spawnId: 'k' });
      const key = readFileSync(join(dir, 'id_ed25519'), 'utf8');
      expect(key).not.toBe(malformed);
      expect(ssh2.utils.parseKey(key)).not.toBeInstanceOf(Error);
      const check = await createHealthCheck(keyed, { logger, provider: keyedProvider }).check({ group: keyed, vmName: vm.name, vmIp: vm.ip }, { timeoutMs: 10_000 });
      expect(check.ok).toBe(true);
      // A usable key is kept as it is.
      await keyedProvider.spawn({ group: keyed, spawnId: 'k2' });
      expect(readFileSync(join(dir, 'id_ed25519'), 'utf8')).toBe(key);
      expect(readdirSync(dir).filter((f) => f.startsWith('id_ed25519'))).toEqual(['id_ed25519']);
    } finally {
      for (const m of await keyedProvider.list(keyed)) await keyedProvider.terminate({ group: keyed, vmName: m.name, vmIp: m.ip ?? null });
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('a VM that cannot start says why in one line, which the spawn error shows', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-local-key-'));
    try {
      const badKey = join(dir, 'bad_key');
      writeFileSync(badKey, 'not a key\n');
      const { command, args } = localVmCommand();
      const failed = await run(command, [...args, '--state-dir', dir, '--name', 'n', '--ip', '127.0.0.1', '--port', '1', '--authorized-key', badKey]).then(
        () => null,
        (err: { code: number; stderr: string }) => err,
      );
      expect(failed?.code).toBe(1);
      expect(failed?.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^local VM could not start: .*(key|format)/i)]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
