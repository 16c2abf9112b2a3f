import { execFile } from 'node:child_process';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TooManyWaiting, VmPoolClient } from '../../src/client/index.js';
import { ExitCodes } from '../../src/cli/exitCodes.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { QueueNames } from '../../queues/names.js';
import { ROOT, nodeArgsFor, writeConfigFile } from '../helpers/processes.js';
import { createWebKit, webTestConfig, type WebKit } from './fixtures.js';

// max_waiting_per_owner: an owner with 2 requests waiting in group base is refused a third at once
// (HTTP 429 with Retry-After, TooManyWaiting in the client, exit 5 in the CLI), and nothing is
// enqueued; a job added straight to the queue is refused by the acquire worker, and joins no line.
const input = webTestConfig({
  groups: [
    { name: 'base', archs: ['x86_64'], max_vm_per_user: 2, max_waiting_per_owner: 2, max_vm_total: 6 },
    { name: 'arm', archs: ['aarch64'], max_vm_per_user: 1, max_vm_total: 3 },
  ],
});
let kit: WebKit;
let acquireQueue: Queue;

/** Acquire jobs in the queue, in any state. */
async function jobCount(): Promise<number> {
  const counts = await acquireQueue.getJobCounts('completed', 'failed', 'active', 'waiting', 'delayed', 'prioritized');
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

beforeAll(async () => {
  kit = await createWebKit('http-too-many-waiting', input);
  acquireQueue = new Queue(QueueNames.ACQUIRE, { connection: kit.redis, prefix: kit.prefix });
  // Two requests of 'flood' wait in base's line (the pool is empty).
  for (const jobId of ['w1', 'w2']) {
    const attempt = await kit.vmm.tryAcquireVm(
      { owner: 'flood', sandbox: 's', groups: [0], workerId: 'w' },
      { member: acquireWaiterMember(Date.now(), jobId), jobId, priority: 0, deadline: Date.now() + 600_000 },
    );
    expect(attempt.status).toBe('none');
  }
});
afterAll(async () => {
  await acquireQueue.close();
  await kit.close();
});

describe('max_waiting_per_owner', { timeout: 60_000 }, () => {
  it('POST /acquire answers 429 with Retry-After and enqueues nothing; another owner or group is not refused', async () => {
    const res = await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'flood', sandbox: 's', arch: 'x86_64', timeoutMs: 300 } });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('10');
    const body = (await res.json()) as { error: string; details: Record<string, unknown> };
    expect(body).toMatchObject({ error: 'too_many_requests', details: { reason: 'too_many_waiting', group: 'base', limit: 2, retryAfter: 10 } });
    expect(await jobCount()).toBe(0);
    // Another owner waits (and times out: 503), as does the same owner in another group.
    expect((await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'other', sandbox: 's', groups: ['base'], timeoutMs: 200 } })).status).toBe(503);
    expect((await kit.fetch('/api/v1/acquire', { method: 'POST', json: { owner: 'flood', sandbox: 's', groups: ['arm'], timeoutMs: 200 } })).status).toBe(503);
  });

  it('VmPoolClient with the groups throws TooManyWaiting before enqueueing', async () => {
    const before = await jobCount();
    const client = new VmPoolClient({ redis: kit.redis, prefix: kit.prefix, groups: kit.config.groups, graceMs: 1_000 });
    try {
      const err = await client.acquire({ owner: 'flood', sandbox: 's', groups: [0], timeoutMs: 300 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TooManyWaiting);
      expect(err).toMatchObject({ owner: 'flood', group: 'base', limit: 2, retryAfterSeconds: 10 });
      expect(await jobCount()).toBe(before);
    } finally {
      await client.close();
    }
  });

  it('the acquire worker refuses a job added without the check (a client without the groups): TooManyWaiting, no line joined', async () => {
    await kit.startAcquireWorker();
    const client = new VmPoolClient({ redis: kit.redis, prefix: kit.prefix, graceMs: 5_000 });
    try {
      const err = await client.acquire({ owner: 'flood', sandbox: 's', groups: [0], timeoutMs: 10_000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TooManyWaiting);
      expect((err as Error).message).toContain('max_waiting_per_owner');
      expect(await kit.redis.zcard(kit.keys.ownerLine('base', 'flood'))).toBe(2);
      expect(await acquireQueue.getFailedCount()).toBeGreaterThanOrEqual(1);
    } finally {
      await client.close();
    }
  });

  it('vmpool acquire exits 5 and enqueues nothing', async () => {
    const before = await jobCount();
    const env = { ...process.env, VMPOOL_PREFIX: kit.prefix, LOG_LEVEL: 'silent', VMPOOL_ACQUIRE_GRACE_MS: '1000' };
    const res = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [...nodeArgsFor('src/cli/main.ts'), '--config', writeConfigFile(input), 'acquire', '--owner', 'flood', '--sandbox', 's', '--arch', 'x86_64', '--timeout', '1'],
        { cwd: ROOT, env, timeout: 30_000 },
        (err, _stdout, stderr) => resolve({ code: err ? Number((err as { code?: unknown }).code ?? -1) : 0, stderr }),
      );
    });
    expect(res.code, res.stderr).toBe(ExitCodes.TOO_MANY_WAITING);
    expect(ExitCodes.TOO_MANY_WAITING).toBe(5);
    expect(res.stderr).toContain('max_waiting_per_owner');
    expect(await jobCount()).toBe(before);
  });
});
