import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

/** The shared test Redis. Tests never flush it: each file works under its own prefix. */
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A key prefix unique to one test file (and run), such as `t-pool-3fa9c1`. */
export function uniquePrefix(name: string): string {
  return `t-${name}-${randomBytes(3).toString('hex')}`;
}

export function connect(extra: { maxRetriesPerRequest?: number | null } = {}): Redis {
  return new Redis(REDIS_URL, { maxRetriesPerRequest: 2, ...extra });
}

/** Deletes every key under the prefix (the pool's and BullMQ's), never anything else. */
export async function deleteKeysWithPrefix(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await redis.unlink(...keys);
  } while (cursor !== '0');
}

/**
 * The end of a test file that ran a pool: closes its handles (clients, queues, managers), removes
 * the reconcile queue (its scheduler would keep adding cycles under the prefix), then deletes the
 * prefix's keys and quits the connection. Handles not yet made (a failed start) are skipped.
 */
export async function closePool(
  prefix: string,
  redis: Redis | undefined,
  handles: readonly ({ close(): Promise<unknown> } | undefined)[],
  reconcileQueue?: { obliterate(opts: { force: boolean }): Promise<unknown>; close(): Promise<unknown> },
): Promise<void> {
  for (const handle of handles) await handle?.close();
  await reconcileQueue?.obliterate({ force: true }).catch(() => undefined);
  await reconcileQueue?.close();
  if (redis) {
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  }
}

/**
 * The pool's raw Redis keys under a prefix (src/pool/keys.ts), for tests that look at the store
 * directly on their own connection: VmManager keeps its keys to itself.
 */
export { poolKeys } from '../../src/pool/keys.js';
