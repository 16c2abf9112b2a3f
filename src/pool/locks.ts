import { randomBytes } from 'node:crypto';
import type { RedisConnection } from '../redis.js';
import { poolKeys } from './keys.js';
import { ReplyCodes } from './replyCodes.js';
import { loadScripts, type RunScript } from './scripts.js';

/** The key of the reconcile cycle lock: one per pool, beside the pool's keys. */
export function cycleLockKey(pool: { prefix: string }): string {
  return poolKeys(pool.prefix).reconcileLock;
}

/** The pool's locks: the reconcile cycle lock, and the data-format migration lock (dataFormat.ts). */
export type LockKind = 'reconcile' | 'migration';

/**
 * A lock of a pool (by default the reconcile cycle lock): a Redis key with a random token and an
 * expiry. Only the holder extends or releases it (extendCycleLock-1.lua, releaseCycleLock-1.lua),
 * and a holder that dies (or stops extending) loses it after ttlMs, so the next one can run.
 */
export class CycleLock {
  readonly key: string;
  private readonly base: string;
  private readonly script: RunScript;

  constructor(
    readonly redis: RedisConnection,
    prefix: string,
    readonly ttlMs: number,
    readonly kind: LockKind = 'reconcile',
  ) {
    if (!(ttlMs > 0)) throw new Error(`lock ttl must be positive, got ${ttlMs}`);
    const keys = poolKeys(prefix);
    this.key = kind === 'migration' ? keys.migrationLock : keys.reconcileLock;
    this.base = keys.base;
    this.script = loadScripts(redis);
  }

  /** Takes the lock if free; returns the token, or null if another holder has it. */
  async tryAcquire(): Promise<string | null> {
    const token = randomBytes(12).toString('hex');
    const ok = await this.redis.set(this.key, token, 'PX', this.ttlMs, 'NX');
    return ok === 'OK' ? token : null;
  }

  async extend(token: string): Promise<boolean> {
    return (await this.script('extendCycleLock', [this.base], [token, this.ttlMs, this.kind])) === ReplyCodes.OK;
  }

  async release(token: string): Promise<boolean> {
    return (await this.script('releaseCycleLock', [this.base], [token, this.kind])) === ReplyCodes.OK;
  }

  /**
   * Runs fn while holding the lock, extending it every ttlMs/3. Returns `{ acquired: false }` at once
   * when another holder has it. fn gets `lost()`, true once an extension failed (then the lock may
   * belong to someone else, so fn should stop early), and the lock's token (for writes fenced by it).
   */
  async run<T>(fn: (lost: () => boolean, token: string) => Promise<T>): Promise<{ acquired: false } | { acquired: true; value: T }> {
    const token = await this.tryAcquire();
    if (token === null) return { acquired: false };
    let lost = false;
    const timer = setInterval(() => {
      this.extend(token).then(
        (ok) => {
          if (!ok) lost = true;
        },
        () => {
          // A failed round trip is not a lost lock yet; the next extension decides.
        },
      );
    }, Math.max(1, Math.floor(this.ttlMs / 3)));
    try {
      return { acquired: true, value: await fn(() => lost, token) };
    } finally {
      clearInterval(timer);
      await this.release(token).catch(() => undefined);
    }
  }
}
