import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.js';
import { DataFormat, MigrationLockLost, type Migration } from '../../src/pool/dataFormat.js';
import { connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';
import { waitFor } from '../helpers/processes.js';

// A migration's writes are fenced by the migration lock (saveMigrationProgress-1.lua): a process
// that lost the lock while it paused writes nothing once another process holds it.
const base = uniquePrefix('dataformat-fence');
const redis = connect();
// The second process's own connection.
const other = connect();
const logger = createLogger('dataformat-fence-test');
let n = 0;
const prefixFor = () => `${base}-${++n}`;

afterAll(async () => {
  for (let i = 1; i <= n; i++) await deleteKeysWithPrefix(redis, `${base}-${i}`);
  await redis.quit();
  await other.quit();
});

interface Gate {
  /** Resolved by the step's pause. */
  reached: Promise<void>;
  open(): void;
}

function gate(): Gate & { wait(): Promise<void> } {
  let reach!: () => void;
  let open!: () => void;
  const reached = new Promise<void>((r) => (reach = r));
  const opened = new Promise<void>((r) => (open = r));
  return {
    reached,
    open,
    wait: () => {
      reach();
      return opened;
    },
  };
}

/**
 * Version 2: counts items 0..items-1 in the hash countsKey (item -> times counted), `batch` per
 * step, each step with its progress; pauses after its first step when a gate is given.
 */
function countItems(countsKey: string, items: number, batch: number, pause?: ReturnType<typeof gate>, failures: unknown[] = []): Migration {
  return {
    version: 2,
    name: 'count-items',
    async run(ctx) {
      let next = ctx.progress === '' ? 0 : Number(ctx.progress);
      let steps = 0;
      while (next < items) {
        const from = next;
        const end = Math.min(items, next + batch);
        await ctx
          .saveProgress(String(end), (multi) => {
            for (let i = from; i < end; i++) multi.hincrby(countsKey, String(i), 1);
          })
          .catch((err: unknown) => {
            failures.push(err);
            throw err;
          });
        next = end;
        steps += 1;
        if (steps === 1 && pause) await pause.wait();
      }
    },
  };
}

describe('data format: migration writes fenced by the lock', { timeout: 60_000 }, () => {
  it('a process that lost the migration lock while paused writes nothing; the one holding it resumes and finishes, each item once', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
    const countsKey = `${prefix}:test-counts`;
    const pauseFirst = gate();
    const pauseSecond = gate();
    // A long lock expiry: the first process's own extensions never notice the loss; only the
    // script's check of the token can.
    const firstFailures: unknown[] = [];
    const first = new DataFormat({ redis, prefix, logger: logger.child({ p: 'first' }), known: 2, migrations: [countItems(countsKey, 20, 5, pauseFirst, firstFailures)], lockTtlMs: 60_000, pollMs: 50, quiesceMs: 0 });
    const firstDone = first.ensure();
    await pauseFirst.reached;
    expect(await redis.hget(keys.dataFormat, 'progress')).toBe('5');
    const firstToken = await redis.get(keys.migrationLock);
    expect(firstToken).toBeTruthy();

    // The first process paused past its lock's expiry (as a stopped process would): the lock is gone.
    await redis.del(keys.migrationLock);
    const second = new DataFormat({ redis: other, prefix, logger: logger.child({ p: 'second' }), known: 2, migrations: [countItems(countsKey, 20, 5, pauseSecond)], lockTtlMs: 60_000, pollMs: 50, quiesceMs: 0 });
    const secondDone = second.ensure();
    await pauseSecond.reached;
    const secondToken = await redis.get(keys.migrationLock);
    expect(secondToken).toBeTruthy();
    expect(secondToken).not.toBe(firstToken);
    expect(await redis.hget(keys.dataFormat, 'progress')).toBe('10');

    // The first process wakes up and tries its next step (items 5..9 again): refused, nothing written.
    pauseFirst.open();
    await waitFor(() => firstFailures.length > 0, 5_000, "the first process's next step");
    expect(firstFailures[0]).toBeInstanceOf(MigrationLockLost);
    const counts = await redis.hgetall(countsKey);
    expect(Object.values(counts).every((c) => c === '1'), JSON.stringify(counts)).toBe(true);
    expect(Object.keys(counts).length).toBe(10);
    expect(await redis.hget(keys.dataFormat, 'progress')).toBe('10');
    // The lock stays the second's: the first process waits for it rather than finishing.
    expect(await redis.get(keys.migrationLock)).toBe(secondToken);
    expect(await redis.hget(keys.dataFormat, 'version')).toBe('1');

    pauseSecond.open();
    const [firstState, secondState] = await Promise.all([firstDone, secondDone]);
    expect(firstState.version).toBe(2);
    expect(secondState.version).toBe(2);
    const after = await redis.hgetall(countsKey);
    expect(Object.keys(after).sort((a, b) => Number(a) - Number(b))).toEqual(Array.from({ length: 20 }, (_, i) => String(i)));
    expect(Object.values(after).every((c) => c === '1'), JSON.stringify(after)).toBe(true);
    expect(await redis.hgetall(keys.dataFormat)).toMatchObject({ version: '2' });
    expect(await redis.hexists(keys.dataFormat, 'migrating')).toBe(0);
  });

  it('a process that lost the lock after its last step does not declare the migration done while the holder still runs a step', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
    const firstPause = gate();
    const secondPause = gate();
    // Its last recorded step, then a pause (first); resumed there, a closing step that is safe to repeat (second).
    const migration = (pause: ReturnType<typeof gate>): Migration => ({
      version: 2,
      name: 'last-step',
      async run(ctx) {
        if (ctx.progress === '') await ctx.saveProgress('moved');
        await pause.wait();
      },
    });
    const first = new DataFormat({ redis, prefix, logger: logger.child({ p: 'first' }), known: 2, migrations: [migration(firstPause)], lockTtlMs: 60_000, pollMs: 50, quiesceMs: 0 });
    const firstDone = first.ensure();
    await firstPause.reached;
    expect(await redis.hget(keys.dataFormat, 'progress')).toBe('moved');
    // Its lock expired while it paused; another process takes over and runs the closing step.
    await redis.del(keys.migrationLock);
    const second = new DataFormat({ redis: other, prefix, logger: logger.child({ p: 'second' }), known: 2, migrations: [migration(secondPause)], lockTtlMs: 60_000, pollMs: 50, quiesceMs: 0 });
    const secondDone = second.ensure();
    await secondPause.reached;
    const secondToken = await redis.get(keys.migrationLock);

    // The first wakes with its run done: it may not finish the migration the second still runs.
    firstPause.open();
    await new Promise((r) => setTimeout(r, 300));
    expect(await redis.hget(keys.dataFormat, 'version')).toBe('1');
    expect(await redis.hget(keys.dataFormat, 'migrating')).toBe('2');
    expect(await redis.get(keys.migrationLock)).toBe(secondToken);

    secondPause.open();
    const [firstState, secondState] = await Promise.all([firstDone, secondDone]);
    expect([firstState.version, secondState.version]).toEqual([2, 2]);
    expect(await redis.hexists(keys.dataFormat, 'migrating')).toBe(0);
  });

  it("a step's writes take ioredis's argument forms (objects, arrays, buffers), applied with the progress", async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
    const hashKey = `${prefix}:test-hash`;
    const setKey = `${prefix}:test-set`;
    const stringKey = `${prefix}:test-bytes`;
    const bytes = Buffer.from([0, 255, 10, 13, 0x80]);
    const migration: Migration = {
      version: 2,
      name: 'forms',
      async run(ctx) {
        await ctx.saveProgress('done', (multi) => {
          multi.hset(hashKey, { a: 1, b: 'two' }).sadd(setKey, ['x', 'y']).sadd(setKey, 'z');
          multi.set(stringKey, bytes);
          multi.hset(hashKey, new Map([['c', 3]]));
        });
        // A read of a write command's reply, or a transaction command, is refused before anything runs.
        await expect(ctx.saveProgress('never', (multi) => void multi.exec())).rejects.toThrow(/cannot use exec/);
      },
    };
    await new DataFormat({ redis, prefix, logger, known: 2, migrations: [migration], quiesceMs: 0 }).ensure();
    expect(await redis.hgetall(hashKey)).toEqual({ a: '1', b: 'two', c: '3' });
    expect((await redis.smembers(setKey)).sort()).toEqual(['x', 'y', 'z']);
    expect(await redis.getBuffer(stringKey)).toEqual(bytes);
    expect(await redis.hget(keys.dataFormat, 'version')).toBe('2');
  });

  it('a write that fails stops the step: its progress is not recorded, and the migration does not finish', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
    const wrongType = `${prefix}:test-string`;
    await redis.set(wrongType, 'a string');
    const migration: Migration = {
      version: 2,
      name: 'fails',
      async run(ctx) {
        await ctx.saveProgress('1', (multi) => void multi.hset(wrongType, 'f', 'v'));
      },
    };
    await expect(new DataFormat({ redis, prefix, logger, known: 2, migrations: [migration], quiesceMs: 0 }).ensure()).rejects.toThrow(/WRONGTYPE/);
    expect(await redis.hgetall(keys.dataFormat)).toMatchObject({ version: '1', migrating: '2' });
    expect(await redis.hexists(keys.dataFormat, 'progress')).toBe(0);
    expect(await redis.exists(keys.migrationLock)).toBe(0);
  });

  it('a migration writes nothing until quiesceMs after it started (older processes stop meanwhile); none on a pool without a recorded version, nor again when resumed', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
    // Version 1 recorded by a process of an older release (one that watches the version).
    await redis.hset(keys.dataFormat, 'version', '1');
    let ranAt = 0;
    const migration: Migration = { version: 2, name: 'timed', run: async () => void (ranAt = Date.now()) };
    const startedAt = Date.now();
    await new DataFormat({ redis, prefix, logger, known: 2, migrations: [migration], quiesceMs: 800 }).ensure();
    // An older process's heartbeat saw `migrating` during the wait.
    expect(ranAt - startedAt).toBeGreaterThanOrEqual(800);

    // A pool without a recorded version (data of a release before versions): nobody to wait for.
    const unversioned = prefixFor();
    await redis.hset(poolKeys(unversioned).poolState, 'generation', 'g', 'epoch', '1');
    const unversionedAt = Date.now();
    await new DataFormat({ redis, prefix: unversioned, logger, known: 2, migrations: [migration], quiesceMs: 5_000 }).ensure();
    expect(ranAt - unversionedAt).toBeLessThan(2_000);

    // Resumed long after it started (its first process died): no second wait.
    const resumed = prefixFor();
    const resumedKeys = poolKeys(resumed);
    await redis.hset(resumedKeys.poolState, 'generation', 'g', 'epoch', '1');
    await redis.hset(resumedKeys.dataFormat, 'version', '1', 'migrating', '2', 'migration', 'timed', 'migration_started_at', String(Date.now() - 60_000), 'progress', 'half');
    const before = Date.now();
    await new DataFormat({ redis, prefix: resumed, logger, known: 2, migrations: [migration], quiesceMs: 5_000 }).ensure();
    expect(ranAt - before).toBeLessThan(2_000);
    expect(await redis.hget(resumedKeys.dataFormat, 'version')).toBe('2');
  });
});
