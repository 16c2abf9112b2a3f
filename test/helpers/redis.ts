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
 * The pool's raw Redis keys under a prefix (src/pool/keys.ts), for tests that look at the store
 * directly on their own connection: VmManager keeps its keys to itself.
 */
export { poolKeys } from '../../src/pool/keys.js';
