import { randomBytes } from 'node:crypto';
import type { RedisConnection } from '../redis.js';
import { ReplyCodes } from '../pool/replyCodes.js';
import { luaSource } from '../pool/scripts.js';

const lua = (file: string) => luaSource(new URL(`./commands/${file}`, import.meta.url));
const EXTEND = 'vmpoolReconcileExtendLock';
const RELEASE = 'vmpoolReconcileReleaseLock';

type LockCommands = Record<string, (key: string, ...args: (string | number)[]) => Promise<number>>;

function commands(redis: RedisConnection): LockCommands {
  const target = redis as unknown as LockCommands;
  if (typeof target[EXTEND] !== 'function') redis.defineCommand(EXTEND, { numberOfKeys: 1, lua: lua('extendLock-1.lua') });
  if (typeof target[RELEASE] !== 'function') redis.defineCommand(RELEASE, { numberOfKeys: 1, lua: lua('releaseLock-1.lua') });
  return target;
}

/**
 * A Redis lock with a random token and an expiry: only the holder extends or releases it, and a
 * holder that dies (or stops extending) loses it after ttlMs, so the next cycle can run.
 */
export class CycleLock {
  private readonly cmd: LockCommands;

  constructor(
    readonly redis: RedisConnection,
    readonly key: string,
    readonly ttlMs: number,
  ) {
    if (!(ttlMs > 0)) throw new Error(`lock ttl must be positive, got ${ttlMs}`);
    this.cmd = commands(redis);
  }

  /** Takes the lock if free; returns the token, or null if another holder has it. */
  async tryAcquire(): Promise<string | null> {
    const token = randomBytes(12).toString('hex');
    const ok = await this.redis.set(this.key, token, 'PX', this.ttlMs, 'NX');
    return ok === 'OK' ? token : null;
  }

  async extend(token: string): Promise<boolean> {
    return (await this.cmd[EXTEND]!.call(this.redis, this.key, token, this.ttlMs)) === ReplyCodes.OK;
  }

  async release(token: string): Promise<boolean> {
    return (await this.cmd[RELEASE]!.call(this.redis, this.key, token)) === ReplyCodes.OK;
  }

  /**
   * Runs fn while holding the lock, extending it every ttlMs/3. Returns `{ acquired: false }` at once
   * when another holder has it. fn gets `lost()`, true once an extension failed (then the lock may
   * belong to someone else, so fn should stop early).
   */
  async run<T>(fn: (lost: () => boolean) => Promise<T>): Promise<{ acquired: false } | { acquired: true; value: T }> {
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
      return { acquired: true, value: await fn(() => lost) };
    } finally {
      clearInterval(timer);
      await this.release(token).catch(() => undefined);
    }
  }
}
