import { Queue, Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createJobContext, type OwnedJobContext } from '../../src/runtime/worker.js';
import { isServerStart } from '../../src/processors/reconcile.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, REDIS_URL, uniquePrefix } from '../helpers/redis.js';
import { waitFor } from '../helpers/processes.js';

// A reconcile replica that starts while cycles still run is not a server start.
const prefix = uniquePrefix('server-start');
const config = parseConfig({ redis: { url: REDIS_URL, prefix }, vm_cycle_timeout: 10, groups: [{ name: 'g' }] }, {});
let now = 0;
let ctx: OwnedJobContext;

beforeAll(() => {
  ctx = createJobContext(config, {
    clock: () => now,
    providerFactory: () => {
      throw new Error('no provider in this test');
    },
    healthCheckFactory: () => {
      throw new Error('no check in this test');
    },
  });
});

afterAll(async () => {
  await ctx.close();
  const redis = connect();
  await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

describe('isServerStart', () => {
  it('is a server start when no reconcile cycle ever finished', async () => {
    now = Date.now();
    expect(await isServerStart(ctx)).toBe(true);
  });

  it('is not one within three cycle periods of the last finished cycle, and is one after', { timeout: 60_000 }, async () => {
    const connections = [connect(), connect({ maxRetriesPerRequest: null })];
    const queue = new Queue(QueueNames.RECONCILE, { connection: connections[0]!, prefix });
    const worker = new Worker(QueueNames.RECONCILE, async () => 'cycle', { connection: connections[1]!, prefix });
    try {
      const job = await queue.add('reconcile', {});
      const finishedOn = await waitFor(async () => (await queue.getJob(job.id!))?.finishedOn, 30_000, 'the cycle job finished');
      now = finishedOn + 30_000;
      expect(await isServerStart(ctx)).toBe(false);
      now = finishedOn + 30_001;
      expect(await isServerStart(ctx)).toBe(true);
    } finally {
      await worker.close();
      await queue.close();
      await Promise.all(connections.map((c) => c.quit()));
    }
  });
});
