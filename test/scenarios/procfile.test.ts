import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Job, Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { acquireJobId } from '../../src/client/index.js';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { poolIdOf } from '../../src/pool/poolId.js';
import { createProvider } from '../../src/providers/index.js';
import type { LocalProvider } from '../../src/providers/local.js';
import { ACQUIRE_QUEUE } from '../../queues/acquire.js';
import { QueueNames } from '../../queues/names.js';
import { ROOT, freePort, nodeArgsFor, startWorkerProcess, waitFor, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, closePool, connect, poolKeys, uniquePrefix } from '../helpers/redis.js';
import { describeWithTools } from '../helpers/tools.js';

// The Procfile under foreman, as an operator runs it: every type from the built dist/, web on
// foreman's PORT, and one SIGTERM to foreman stops everything within its 5 s (then it SIGKILLs).
// A POST /acquire waiting at that moment gets its 503 at once and its request is withdrawn.
const prefix = uniquePrefix('procfile');
const stateDir = mkdtempSync(join(tmpdir(), 'vmpool-procfile-'));
const config = {
  redis: { url: REDIS_URL },
  vm_cycle_timeout: 1,
  groups: [
    {
      name: 'local',
      archs: ['x86_64'],
      max_vm_total: 1,
      min_ready: 1,
      vm_spawn_min_interval: 0,
      provider: { type: 'local', state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000), spawn_timeout: 15 },
    },
    // No machine ever comes: an acquire for it waits in the line.
    {
      name: 'never',
      archs: ['none'],
      max_vm_total: 1,
      vm_spawn_min_interval: 3600,
      provider: { type: 'command', spawn_cmd: ['/bin/false'], terminate_cmd: ['/bin/true'] },
      check: { type: 'tcp', port: 1 },
    },
  ],
} satisfies ConfigInput;
const parsed = parseConfig(config, {});
const localGroup = { index: 0, config: parsed.groups[0]!, poolId: poolIdOf(parsed, prefix) };
const provider = createProvider(localGroup, { logger: createLogger('test') }) as LocalProvider;
const keys = poolKeys(prefix);
// Made in beforeAll: a group skipped for want of foreman opens no connection.
let redis: Redis;
let vmm: VmManager;
let acquireQueue: Queue;

/** Processes (other than the local VMs, which outlive vmpool by design) that carry this test's prefix. */
function ourProcesses(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0');
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (environ.includes(`VMPOOL_PREFIX=${prefix}`) && !/localVm\.(js|ts)/.test(cmdline)) pids.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

describeWithTools('foreman', 'the Procfile under foreman', () => {
  beforeAll(() => {
    redis = connect();
    vmm = new VmManager(parsed, { redis, prefix });
    acquireQueue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
    const built = join(ROOT, 'dist', 'workers', 'web.js');
    if (nodeArgsFor('workers/web.ts')[0] !== built) throw new Error('the Procfile runs dist/: build first (npm run build; npm test does)');
  });

  afterAll(async () => {
    for (const pid of ourProcesses()) process.kill(pid, 'SIGKILL');
    for (const m of await provider.list(localGroup)) await provider.terminate({ group: localGroup, vmName: m.name, vmIp: m.ip ?? null });
    await acquireQueue.close();
    await vmm.close();
    await closePool(prefix, redis, [], new Queue(QueueNames.RECONCILE, { connection: redis, prefix }));
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('serves web on foreman\'s PORT, starts every type, and stops within 5 s of SIGTERM, answering a waiting acquire at once', async () => {
    const port = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix, LOG_LEVEL: 'info' };
    delete env.PORT;
    const formation = 'acquire=2,spawn=1,health=1,terminate=1,reconcile=1,web=1';
    const foreman = spawn('foreman', ['start', '-m', formation, '-p', String(port), '-f', join(ROOT, 'Procfile'), '-d', ROOT], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    foreman.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    foreman.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    const exited = new Promise<number | null>((res) => foreman.once('exit', (code) => res(code)));
    try {
      const started = (name: string, text: string) => output.split('\n').some((l) => new RegExp(`\\b${name.replace('.', '\\.')}\\s+\\|`).test(l) && l.includes(text));
      const instances = ['acquire.1', 'acquire.2', 'spawn.1', 'health.1', 'terminate.1', 'reconcile.1'];
      await waitFor(() => instances.every((i) => started(i, '"worker started"')) && started('web.1', '"web listening"'), 30_000, `every process started:\n${output}`);
      // web took foreman's PORT (the first type of the Procfile gets the base port).
      const health = await fetch(`http://127.0.0.1:${port}/healthz`);
      expect(health.status).toBe(200);
      // The pool works: the local group's warm VM comes up.
      // A local VM boots in a second or two; a loaded machine can make its first spawn time out (15 s) and retry.
      await waitFor(async () => (await vmm.getAllVmRecords()).some((v) => v.state === 'ready'), 60_000, 'a ready VM').catch((err: Error) => {
        throw new Error(`${err.message}\n${output.split('\n').filter((l) => !l.includes('unsafe for vmpool')).slice(-60).join('\n')}`);
      });

      const waiting = fetch(`http://127.0.0.1:${port}/api/v1/acquire`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ owner: 'alice', sandbox: 'alice/p', groups: ['never'], taskId: 'foreman-1', timeoutMs: 60_000 }),
      });
      await waitFor(async () => (await redis.zcard(keys.waiters('never'))) === 1, 10_000, 'the request in the line');

      const stopAt = Date.now();
      foreman.kill('SIGTERM');
      const res = await waiting;
      expect(Date.now() - stopAt).toBeLessThan(2_000);
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('5');
      expect(await exited).toBe(0);
      expect(Date.now() - stopAt).toBeLessThan(5_000);
      expect(output).not.toContain('sending SIGKILL');
      for (const i of [...instances, 'web.1']) expect(output, output).toMatch(new RegExp(`${i.replace('.', '\\.')}\\s+\\| exited with code 0`));
      expect(ourProcesses()).toEqual([]);
    } finally {
      if (foreman.exitCode === null) foreman.kill('SIGKILL');
    }

    // The request left the line, and its job is removed or failed (or, handed back by a stopping
    // acquire worker, cancelled in the pool: the next acquire worker fails it without a VM).
    expect(await redis.zcard(keys.waiters('never'))).toBe(0);
    expect(await vmm.countDemand('never')).toBe(0);
    const job = await Job.fromId(acquireQueue, acquireJobId('foreman-1', 'alice'));
    if (job && (await job.getState()) !== 'failed') {
      const worker = await startWorkerProcess('acquire', { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix });
      await waitFor(async () => (await job.getState()) === 'failed', 10_000, 'the withdrawn job to fail');
      expect((await Job.fromId(acquireQueue, acquireJobId('foreman-1', 'alice')))!.failedReason).toMatch(/^cancelled: /);
      expect(await worker.stop()).toBe(0);
    }
  }, 150_000);
});
