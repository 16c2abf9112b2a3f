import { execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { startProcessTypes, type RunningProcess } from '../../src/runtime/boot.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { ROOT, nodeArgsFor, runVmpoolCli, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix, poolKeys } from '../helpers/redis.js';

// `vmpool` as a real subprocess: output and exit codes (0 ok, 1 error, 2 usage/config, 3 not found, 4 no VM).
const prefix = uniquePrefix('cli');
const keys = poolKeys(prefix);
const configInput = {
  redis: { url: REDIS_URL },
  groups: [
    { name: 'base', archs: ['x86_64'], max_vm_per_user: 1 },
    { name: 'arm', archs: ['aarch64'] },
  ],
  web: { port: 0 },
};
const configFile = writeConfigFile(configInput);
const env = { ...process.env, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent', VMPOOL_ACQUIRE_GRACE_MS: '1000' };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const vmpool = (...args: string[]): Promise<Run> => runVmpoolCli(['--config', configFile, ...args], env);

describe('vmpool CLI', { timeout: 60_000 }, () => {
  const redis = connect();
  const vmm = new VmManager(parseConfig(configInput, {}), { redis, prefix });
  let acquireWorker: RunningProcess;

  beforeAll(async () => {
    await vmm.markServerStart();
    const unused = () => {
      throw new Error('unused');
    };
    acquireWorker = await startProcessTypes(processTypeSpecs, ['acquire'], parseConfig(configInput, {}), { prefix, providerFactory: unused, healthCheckFactory: unused });
  });
  afterAll(async () => {
    await acquireWorker?.stop(5_000);
    await deleteKeysWithPrefix(redis, prefix);
    await vmm.close();
    await redis.quit();
  });

  it('config check: 0 for a valid file, 2 naming the bad field otherwise', async () => {
    const ok = await vmpool('config', 'check', configFile);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('ok (2 groups: base, arm)');
    expect(ok.stdout).toMatch(/^launch fingerprints: base [0-9a-f]{12}, arm [0-9a-f]{12}$/m);
    const bad = writeConfigFile({ groups: [{ name: 'g', max_vm_total: -1 }] });
    const res = await vmpool('config', 'check', bad);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('groups.0.max_vm_total');
    expect((await vmpool('config', 'check', '/nonexistent/vmpool.yaml')).code).toBe(2);
  });

  it('config check applies the web process rules: off loopback needs a token; secrets never printed', async () => {
    const open = await vmpool('config', 'check', writeConfigFile({ ...configInput, web: { host: '0.0.0.0' } }));
    expect(open.code).toBe(2);
    expect(open.stderr).toContain('web.auth.token');
    const secret = 'a-very-secret-admin-token-123';
    const withToken = await vmpool('config', 'check', '--json', writeConfigFile({ ...configInput, web: { host: '0.0.0.0', auth: { token: secret } } }));
    expect(withToken.code).toBe(0);
    expect(withToken.stdout).not.toContain(secret);
    expect(JSON.parse(withToken.stdout).web.auth.token).toBe('***');
  });

  it('usage errors exit 2', async () => {
    const runs = await Promise.all([
      vmpool('frobnicate'),
      vmpool('hold'), // missing NAME
      vmpool('list', '--state', 'sleeping'),
      vmpool('acquire', '--owner', 'a', '--sandbox', 's', '--arch', 'x86_64', '--group', 'base'),
      vmpool('acquire', '--owner', 'a', '--sandbox', 's', '--arch', 'sparc'),
    ]);
    expect(runs.map((r) => r.code)).toEqual([2, 2, 2, 2, 2]);
  });

  it('add registers a machine; refusals exit 1 or 2', async () => {
    const added = await vmpool('add', '10.5.0.1', 'c1', 'base');
    expect(added.code).toBe(0);
    expect((await vmm.getVmByName('c1')).state).toBe('got_ip');
    const refused = await Promise.all([
      vmpool('add', '10.5.0.9', 'c1', 'base'), // name taken
      vmpool('add', '10.5.0.300', 'c9', 'base'),
      vmpool('add', '10.5.0.9', 'c9', 'nogroup'),
    ]);
    expect(refused.map((r) => r.code)).toEqual([1, 2, 2]);
    await expect(vmm.getVmByName('c9')).rejects.toThrow();
  });

  it('list and info show the pool, as text and --json', async () => {
    await vmm.addVmToPool('10.5.1.1', 'c2', 'arm');
    const list = await vmpool('list', '--json');
    expect(list.code).toBe(0);
    const vms = JSON.parse(list.stdout) as { vmName: string; state: string }[];
    expect(vms.map((v) => v.vmName).sort()).toEqual((await vmm.getAllVms()).map((v) => v.vmName).sort());
    const filtered = JSON.parse((await vmpool('list', '--group', 'arm', '--json')).stdout) as { vmName: string }[];
    expect(filtered.map((v) => v.vmName)).toEqual(['c2']);
    const all = (await vmm.getAllVms()).map((v) => v.vmName).sort((a, b) => (a < b ? -1 : 1));
    const limited = JSON.parse((await vmpool('list', '--limit', '1', '--json')).stdout) as { vmName: string }[];
    expect(limited.map((v) => v.vmName)).toEqual(all.slice(0, 1));
    expect((await vmpool('list', '--limit', 'x')).code).toBe(2);
    const text = await vmpool('list', '--state', 'got_ip');
    expect(text.stdout).toMatch(/^NAME\s+GROUP\s+STATE/);
    expect(text.stdout).toContain('c1');
    const info = await vmpool('info');
    expect(info.code).toBe(0);
    expect(info.stdout).toContain('c2');
    // No reconcile cycle ran: each group's launch is this config's, not published yet.
    expect(info.stdout).toMatch(/^Group base: launch [0-9a-f]{12} \(not published yet\)$/m);
    const infoJson = JSON.parse((await vmpool('info', '--json')).stdout) as { groups: { name: string; total: number }[] };
    expect(infoJson.groups.map((g) => [g.name, g.total])).toEqual([
      ['base', 1],
      ['arm', 1],
    ]);
  });

  it('hold, unhold and terminate; 1 when refused by the state, 3 for an unknown VM', async () => {
    expect((await vmpool('hold', 'c1', '--by', 'tester')).code).toBe(0);
    expect(await redis.hget(keys.vm('c1'), 'held_by')).toBe('tester');
    const again = await vmpool('hold', 'c1');
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('already held by tester');
    expect((await vmpool('unhold', 'c1')).code).toBe(0);
    expect(await redis.hget(keys.vm('c1'), 'held_by')).toBeNull();
    expect((await vmpool('unhold', 'c1')).code).toBe(1);
    expect((await vmpool('hold', 'ghost')).code).toBe(3);
    expect((await vmpool('unhold', 'ghost')).code).toBe(3);

    expect((await vmpool('terminate', 'c2')).code).toBe(0);
    expect((await vmm.getVmByName('c2')).state).toBe('terminating');
    expect((await vmpool('terminate', 'c2')).code).toBe(1);
    expect((await vmpool('terminate', 'ghost')).code).toBe(3);
  });

  it('acquire prints the assignment; 4 when no VM comes; release frees it', async () => {
    const none = await vmpool('acquire', '--owner', 'dave', '--sandbox', 's', '--group', 'base', '--timeout', '0.3');
    expect(none.code).toBe(4);
    expect(none.stderr).toMatch(/NoVmAvailable|no VM/i);

    await vmm.startVmCheck('c1');
    await vmm.recordHealthCheckResult('c1', true);
    const got = await vmpool('acquire', '--owner', 'dave', '--sandbox', 's', '--arch', 'x86_64', '--timeout', '5');
    expect(got.code).toBe(0);
    const vars = Object.fromEntries(got.stdout.trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
    expect(vars.VM_NAME).toBe('c1');
    expect(vars.VM_IP).toBe('10.5.0.1');
    const rec = (await vmm.getAllVmRecords()).find((v) => v.vmName === 'c1')!;
    expect(rec).toMatchObject({ state: 'in_use', owner: 'dave', leaseId: vars.LEASE_ID });

    expect((await vmpool('release', 'c1', '--lease-id', 'not-it')).code).toBe(1);
    expect((await vmpool('release', 'c1', '--lease-id', vars.LEASE_ID!)).code).toBe(0);
    expect((await vmm.getVmByName('c1')).state).toBe('ready');
    expect((await vmpool('release', 'c1')).code).toBe(1); // not in_use
    expect((await vmpool('release', 'ghost')).code).toBe(3);

    const json = await vmpool('acquire', '--owner', 'dave', '--sandbox', 's', '--group', 'base', '--timeout', '5', '--json');
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ vmName: 'c1', group: 'base' });
  });

  it('start web serves until SIGTERM and exits 0; off loopback without a token it exits 2', async () => {
    const child = spawn(process.execPath, [...nodeArgsFor('src/cli/main.ts'), '--config', configFile, 'start', 'web'], {
      cwd: ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`web did not start: ${out}`)), 20_000);
      child.stdout.on('data', () => {
        const m = /web: (http:\/\/\S+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
    });
    const res = await fetch(new URL('api/v1/vms/c1', url));
    expect(((await res.json()) as { vmName: string }).vmName).toBe('c1');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);

    const openConfig = writeConfigFile({ ...configInput, web: { host: '0.0.0.0', port: 0 } });
    const refused = await new Promise<Run>((resolve) => {
      execFile(process.execPath, [...nodeArgsFor('src/cli/main.ts'), '--config', openConfig, 'start', 'web'], { cwd: ROOT, env, timeout: 30_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code) : 0, stdout, stderr }),
      );
    });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('web.auth.token');
  });
});
