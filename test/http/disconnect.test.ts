import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import { createWebApp } from '../../src/http/app.js';
import type { AcquireFn } from '../../src/http/api.js';
import { startWebServer, type RunningWebServer } from '../../src/http/server.js';
import { acquireJobId } from '../../src/client/vmPoolClient.js';
import { AcquireFailures, acquireFailureOf } from '../../queues/acquire.js';
import { REDIS_URL } from '../helpers/redis.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from '../acquire/fixtures.js';

// Issue 10: a builder that drops POST /acquire gives its VM back. While it waits, its request is
// withdrawn (the job fails as cancelled, it leaves the line); once a VM was assigned but not yet
// sent, that VM is released at once, not left to the lease.
// A short sweep (acquire_safety_retry): on a loaded machine a wake may come late; the sweep repairs it.
const configInput = { ...acquireConfig(), acquire_safety_retry: 2, redis: { url: REDIS_URL }, web: { port: 0 } };
const body = (taskId: string) => JSON.stringify({ owner: 'alice', sandbox: 'alice/p', groups: [0], taskId, timeoutMs: 30_000 });

let kit: AcquireKit;
let web: RunningWebServer;

beforeAll(async () => {
  kit = await createAcquireKit('disconnect', configInput);
  web = await startWebServer(parseConfig(configInput, {}), { prefix: kit.prefix, port: 0, acquireGraceMs: 2_000 });
});
afterAll(async () => {
  await web?.stop(2_000);
  await kit?.close();
});

/** Starts POST /acquire on a real connection; destroy() drops it mid-wait, as curl --max-time does. */
function startAcquire(baseUrl: string, taskId: string): { destroy(): void } {
  const u = new URL('/api/v1/acquire', baseUrl);
  const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { 'content-type': 'application/json' } });
  req.on('error', () => undefined);
  req.end(body(taskId));
  return { destroy: () => req.destroy() };
}

async function jobOf(taskId: string): Promise<Job> {
  return (await Job.fromId(kit.queue, acquireJobId(taskId, 'alice')))!;
}

async function untilCancelled(taskId: string): Promise<Job> {
  await until(async () => (await (await jobOf(taskId)).getState()) === 'failed', `the job of ${taskId} to fail`, 25_000);
  return jobOf(taskId);
}

async function removeVm(name: string): Promise<void> {
  await kit.ctx.vmm.startVmTermination(name);
  await kit.ctx.vmm.removeVmFromPool(name);
}

describe('a builder that goes away gives its VM back', () => {
  it('a request dropped while it waits is withdrawn: cancelled, out of the line, and a VM that comes later stays ready', async () => {
    const req = startAcquire(web.url, 'gone-1');
    await kit.untilWaiting(0, 1);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(1);
    req.destroy();
    const job = await untilCancelled('gone-1');
    expect(acquireFailureOf(job)).toBe(AcquireFailures.CANCELLED);
    expect(job.failedReason).toBe('cancelled: the HTTP client went away');
    expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(0);
    await kit.addReady('late-1', '10.8.0.1');
    await new Promise((r) => setTimeout(r, 300));
    expect((await kit.ctx.vmm.getVmByName('late-1')).state).toBe('ready');
    await removeVm('late-1');
  });

  it('a VM assigned after the client went away, before the answer was sent, is released at once', { timeout: 60_000 }, async () => {
    // The hook holds the withdrawal back until the VM is assigned: the assignment lands just after the disconnect.
    const app = createWebApp({
      config: kit.ctx.config,
      vmm: kit.ctx.vmm,
      logger: createLogger('test', { LOG_LEVEL: 'silent' }),
      queue: (name) => kit.ctx.vmm.queue(name),
      acquire: ((request, options) => {
        const late = new AbortController();
        options?.signal?.addEventListener('abort', () => {
          void until(async () => (await kit.ctx.vmm.getVmByName('late-2').catch(() => null))?.state === 'in_use', 'the assignment').then(() =>
            late.abort(options.signal!.reason),
          );
        });
        return kit.client.acquire(request, { signal: late.signal });
      }) satisfies AcquireFn,
      acquireSet: (request, options) => kit.client.acquireSet(request, options),
    });
    const server: Server = createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const req = startAcquire(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, 'gone-2');
      await kit.untilWaiting(0, 1);
      req.destroy();
      await new Promise((r) => setTimeout(r, 100));
      await kit.addReady('late-2', '10.8.0.2');
      const job = jobOf('gone-2');
      // The line gave the VM to the parked job; the builder's withdrawal either finds the job done
      // (its VM is released) or still parked (it fails as cancelled, and the VM goes back): both at once.
      await until(async () => ['completed', 'failed'].includes(await (await job).getState()), 'the job to end', 25_000);
      // Released at once, long before the 300 s lease would lapse.
      await until(async () => (await kit.ctx.vmm.getVmByName('late-2')).state === 'ready', 'late-2 released', 3_000);
      const vm = await kit.ctx.vmm.getVmByName('late-2');
      expect(vm.lastRelease).not.toBeNull();
      expect(await kit.redis.zscore(kit.keys.leases, 'late-2')).toBeNull();
      expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
      await removeVm('late-2');
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('three requests dropped after a moment (curl --max-time) leave no VM in_use', { timeout: 90_000 }, async () => {
    const tasks = ['curl-1', 'curl-2', 'curl-3'];
    const reqs = tasks.map((t) => startAcquire(web.url, t));
    await kit.untilWaiting(0, 3);
    await new Promise((r) => setTimeout(r, 500));
    for (const r of reqs) r.destroy();
    for (const t of tasks) expect(acquireFailureOf(await untilCancelled(t))).toBe(AcquireFailures.CANCELLED);
    for (const [i, name] of ['c1', 'c2', 'c3'].entries()) await kit.addReady(name, `10.8.1.${i + 1}`);
    await new Promise((r) => setTimeout(r, 300));
    const states = await Promise.all(['c1', 'c2', 'c3'].map(async (n) => (await kit.ctx.vmm.getVmByName(n)).state));
    expect(states).toEqual(['ready', 'ready', 'ready']);
    expect(await kit.ctx.vmm.countDemand('base')).toBe(0);
  });
});
