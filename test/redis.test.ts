import { once } from 'node:events';
import { createServer } from 'node:net';
import type { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { createWorkerConnection, reconnectDelay } from '../src/redis.js';

/** A port nothing listens on, so that a client keeps reconnecting. */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((res) => probe.listen(0, '127.0.0.1', res));
  const { port } = probe.address() as { port: number };
  await new Promise((res) => probe.close(res));
  return port;
}

async function reconnecting(redis: Redis): Promise<void> {
  redis.on('error', () => undefined);
  // Not events.once: it would reject on the connection errors.
  if (redis.status !== 'reconnecting') await new Promise((res) => redis.once('reconnecting', res));
}

describe('worker connections', () => {
  it('end when disconnected while waiting to reconnect, and fail their pending commands', async () => {
    const redis = createWorkerConnection(`redis://127.0.0.1:${await closedPort()}`) as Redis;
    await reconnecting(redis);
    const pending = redis.get('k');
    const ended = once(redis, 'end');
    redis.disconnect();
    await ended;
    expect(redis.status).toBe('end');
    await expect(pending).rejects.toThrow('Connection is closed');
  });

  it('pass this on to their duplicates (BullMQ blocking connections)', async () => {
    const redis = createWorkerConnection(`redis://127.0.0.1:${await closedPort()}`, { lazyConnect: true }) as Redis;
    const blocking = redis.duplicate({ connectionName: 'blocking', lazyConnect: false });
    await reconnecting(blocking);
    const ended = once(blocking, 'end');
    blocking.disconnect();
    await ended;
    expect(blocking.status).toBe('end');
    redis.disconnect();
  });

  it('reconnect within about a second however long Redis was away', () => {
    expect(reconnectDelay(1)).toBeGreaterThanOrEqual(50);
    expect(reconnectDelay(40)).toBeLessThan(1_100);
  });
});
