import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmManager } from '../../src/pool/vmManager.js';
import { VmPoolClient } from '../../src/client/vmPoolClient.js';
import { uniquePrefix } from '../helpers/redis.js';
import { startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../helpers/processes.js';
import { startPrivateRedis, type PrivateRedis } from '../helpers/redisServers.js';

// A builder's VmPoolClient across Redis restarts: a PRIVATE redis-server (append-only file, so the
// data survives) is shut down and started again on the same port while acquires are in progress.
// No unhandled rejection may reach the process (it would kill a builder), and each acquire finds its
// VM once Redis answers again. A real acquire worker process serves the requests.
const prefix = uniquePrefix('client-blip');

let url: string;
let server: PrivateRedis | undefined;
let redis: Redis;
let vmm: VmManager;
let client: VmPoolClient;
let worker: WorkerProcess | undefined;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

/** Stops the private redis-server (its AOF keeps the data) and, after startRedis, it answers again on the same port. */
const stopRedis = () => server!.shutdown();
const startRedis = () => server!.restart();

async function addReady(name: string, ip: string): Promise<void> {
  await vmm.addVmToPool(ip, name, 'base');
  await vmm.startVmCheck(name);
  await vmm.recordHealthCheckResult(name, true);
}

const until = <T>(fn: () => Promise<T> | T, ms: number, what: string) => waitForWithLogs(worker ? [worker] : [], fn, ms, what);
const settled = <T>(p: Promise<T>) => p.then((value) => ({ value }), (error: unknown) => ({ error }));

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  server = await startPrivateRedis(['--appendonly', 'yes', '--appendfsync', 'always'], 'client-blip');
  url = server.url;
  const config = { redis: { url, prefix }, acquire_safety_retry: 30, groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 4 }] };
  redis = new Redis(url, { maxRetriesPerRequest: 2 });
  redis.on('error', () => undefined);
  vmm = new VmManager(config, { redis, prefix });
  await vmm.markServerStart();
  // The client owns its connection (a URL), as a builder's would.
  client = new VmPoolClient({ redis: url, prefix, graceMs: 20_000 });
  client.redis.on('error', () => undefined);
  worker = await startWorkerProcess('acquire', { VMPOOL_CONFIG: writeConfigFile(config), VMPOOL_PREFIX: prefix, REDIS_URL: url });
}, 60_000);

afterAll(async () => {
  process.off('unhandledRejection', onUnhandled);
  await worker?.stop();
  await client.close().catch(() => undefined);
  await vmm.close().catch(() => undefined);
  redis.disconnect();
  await server?.stop();
}, 60_000);

describe('VmPoolClient across Redis restarts', () => {
  it('an acquire waiting while Redis restarts finds its VM afterwards, with no unhandled rejection', { timeout: 90_000 }, async () => {
    const started = Date.now();
    const pending = settled(client.acquire({ owner: 'alice', sandbox: 's', groups: [0], timeoutMs: 60_000 }));
    await until(async () => (await vmm.countDemand('base').catch(() => 0)) === 1, 20_000, 'the request waiting');
    // A restart soon after the wait began (the events connection is cut), and one across the 30 s
    // mark, when a client waiting in 30 s slices reads the job again: Redis is away just then.
    await stopRedis();
    await new Promise((r) => setTimeout(r, 2_500));
    await startRedis();
    await new Promise((r) => setTimeout(r, Math.max(0, started + 27_000 - Date.now())));
    await stopRedis();
    await new Promise((r) => setTimeout(r, 6_000));
    await startRedis();
    await addReady('blip1', '10.90.0.1');
    const outcome = await until(() => Promise.race([pending, new Promise<null>((r) => setTimeout(() => r(null), 200))]), 40_000, 'the acquire served');
    if ('error' in outcome) throw outcome.error;
    expect(outcome.value.vmName).toBe('blip1');
    expect(unhandled).toEqual([]);
  });

  it('an acquire begun while Redis is away waits for it and is then served', { timeout: 90_000 }, async () => {
    await addReady('blip2', '10.90.0.2');
    await stopRedis();
    const pending = settled(client.acquire({ owner: 'bob', sandbox: 's', groups: [0], taskId: 'blip-bob', timeoutMs: 30_000 }));
    await new Promise((r) => setTimeout(r, 2_500));
    await startRedis();
    const outcome = await until(() => Promise.race([pending, new Promise<null>((r) => setTimeout(() => r(null), 200))]), 40_000, 'the acquire served');
    if ('error' in outcome) throw outcome.error;
    expect(outcome.value.vmName).toBe('blip2');
    expect(unhandled).toEqual([]);
  });
});
