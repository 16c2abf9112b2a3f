/**
 * The pool's data-format version in Redis (keys.dataFormat) and its migrations. A process knows
 * the versions up to DATA_FORMAT_VERSION: the first process of a newer version migrates the pool
 * at boot, under the migration lock, before any of its workers takes a job; a process older than
 * the pool's data format refuses to run (src/runtime/boot.ts, poolStateWatch.ts). docs/operating.md,
 * "Upgrades", says what an operator sees.
 */
import type { Logger } from '../logger.js';
import type { RedisConnection } from '../redis.js';
import { groupNamesMigration } from './groupNames.js';
import { poolKeyBase, poolKeys, type PoolKeys } from './keys.js';
import { CycleLock } from './locks.js';
import { ReplyCodes } from './replyCodes.js';
import { loadScripts, type RunScript } from './scripts.js';
import { DATA_FORMAT_VERSION, DataFormatTooNew, newerThan } from './dataFormatVersion.js';

export { DATA_FORMAT_VERSION, DataFormatTooNew, newerThan };

/** What a migration is given: the pool's Redis and keys, and its recorded progress. */
export interface MigrationContext {
  redis: RedisConnection;
  keys: PoolKeys;
  prefix: string;
  logger: Logger;
  /** The group names of the migrating process's config, in config order (absent: a process without a config). */
  groups?: readonly string[];
  /** Where an earlier run of this migration got to (what it saved), '' when nowhere. */
  progress: string;
  /**
   * Records the progress, with `writes` (commands called on the object given, as on a MULTI)
   * applied atomically with it, so that a step and its record never part, and only while this
   * process holds the migration lock (saveMigrationProgress-1.lua): throws MigrationLockLost, and
   * writes nothing, once it was lost. Only write commands on the pool's keys; no reply is read.
   */
  saveProgress(progress: string, writes?: (multi: ReturnType<RedisConnection['multi']>) => void): Promise<void>;
  /** True once the migration lock was lost: stop (the next process resumes). */
  lost(): boolean;
}

/**
 * One step of the data format, from version - 1 to version. run must be idempotent and
 * resumable: a process killed in the middle is followed by one that runs it again from the
 * progress it saved, so each step is either recorded with its progress or safe to repeat.
 */
export interface Migration {
  version: number;
  name: string;
  run(ctx: MigrationContext): Promise<void>;
}

/** The migrations of this code, in order. */
export const MIGRATIONS: readonly Migration[] = [groupNamesMigration];

/** The pool's data format as read: its version, and the migration in progress (0 when none). */
export interface DataFormatState {
  version: number;
  migrating: number;
  migration: string;
  /** This read stamped a pool that had no version. */
  stamped: boolean;
}

/** A migration's process lost the migration lock (it paused past its expiry): it wrote nothing more; the next process resumes. */
export class MigrationLockLost extends Error {
  override name = 'MigrationLockLost';
  constructor(readonly migration: string) {
    super(`migration ${migration}: the migration lock was lost; nothing written, the next process resumes`);
  }
}

/** Commands that cannot run inside a script, or that are not writes of the pool's data. */
const NOT_A_STEP_WRITE = new Set(['exec', 'multi', 'watch', 'unwatch', 'discard', 'eval', 'evalsha', 'evalsha_ro', 'eval_ro', 'fcall', 'pipeline']);

/**
 * A stand-in for a MULTI that records each command called on it (ioredis's method names are the
 * commands; its argument forms are flattened as ioredis does: arrays, and an object or Map for
 * HSET/HMSET/MSET) into `words`, as saveMigrationProgress-1.lua takes them.
 */
function recordWrites(words: (string | Buffer)[]): ReturnType<RedisConnection['multi']> {
  const flat = (arg: unknown, out: (string | Buffer)[]): void => {
    if (Buffer.isBuffer(arg)) out.push(arg);
    else if (Array.isArray(arg)) for (const a of arg) flat(a, out);
    else if (arg instanceof Map) for (const [k, v] of arg) out.push(String(k), Buffer.isBuffer(v) ? v : String(v));
    else if (arg !== null && typeof arg === 'object') for (const [k, v] of Object.entries(arg)) out.push(k, Buffer.isBuffer(v) ? v : String(v));
    else if (typeof arg === 'string' || typeof arg === 'number' || typeof arg === 'bigint') out.push(String(arg));
    else throw new Error(`a migration write takes strings, numbers and buffers, not ${typeof arg}`);
  };
  const recorder: ReturnType<RedisConnection['multi']> = new Proxy({} as ReturnType<RedisConnection['multi']>, {
    get(_target, prop) {
      if (typeof prop !== 'string') return undefined;
      const command = prop.toLowerCase();
      // Not thenable: an `await` of the recorder must not call a command named "then".
      if (command === 'then') return undefined;
      return (...args: unknown[]) => {
        if (NOT_A_STEP_WRITE.has(command)) throw new Error(`a migration step's writes cannot use ${prop}: saveProgress applies them in one script`);
        const out: (string | Buffer)[] = [command];
        for (const arg of args) if (typeof arg !== 'function') flat(arg, out);
        words.push(String(out.length), ...out);
        return recorder;
      };
    },
  });
  return recorder;
}


/** Checks a list of migrations: ordered, one per version from 2, none past `known`. */
export function checkMigrations(migrations: readonly Migration[], known: number): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 2) throw new Error(`migration ${m.name} has version ${m.version}, expected ${i + 2} (migrations are ordered, one per version from 2)`);
  });
  if (migrations.length && migrations.at(-1)!.version !== known) throw new Error(`the last migration leads to version ${migrations.at(-1)!.version}, not to ${known}`);
  if (!migrations.length && known !== 1) throw new Error(`data format ${known} needs migrations from 1`);
}

export interface DataFormatOptions {
  redis: RedisConnection;
  prefix: string;
  logger: Logger;
  /** The group names of this process's config, in config order: what a migration maps version-1 group indexes to. */
  groups?: readonly string[];
  /** The version this process knows (default DATA_FORMAT_VERSION). */
  known?: number;
  /** Its migrations (default MIGRATIONS; tests give their own). */
  migrations?: readonly Migration[];
  /** The migration lock's expiry: how soon a process killed while migrating lets the next one resume (default 30 s). */
  lockTtlMs?: number;
  /** How often a process waiting for another one's migration looks again (default 500 ms). */
  pollMs?: number;
  /**
   * How long after a migration started it moves any data (default MIGRATION_QUIESCE_MS): the older
   * processes see the migration at their next heartbeat and stop, and their work in progress ends
   * on the data as they know it, not on data half moved. No wait on a pool that had no recorded
   * version (no process there watches it).
   */
  quiesceMs?: number;
  clock?: () => number;
}

/**
 * The default wait between the start of a migration and its first write: two of the older
 * processes' heartbeats at their slowest (poolStateWatch.ts: 5 s), in which they stop their workers.
 */
export const MIGRATION_QUIESCE_MS = 10_000;

/** The pool's data format: reading (and stamping) it, and migrating it to this process's version. */
export class DataFormat {
  readonly known: number;
  private readonly migrations: readonly Migration[];
  private readonly script: RunScript;
  private readonly base: string;
  private readonly keys: PoolKeys;
  private readonly clock: () => number;

  constructor(private readonly options: DataFormatOptions) {
    this.known = options.known ?? DATA_FORMAT_VERSION;
    this.migrations = options.migrations ?? MIGRATIONS;
    checkMigrations(this.migrations, this.known);
    this.script = loadScripts(options.redis);
    this.base = poolKeyBase(options.prefix);
    this.keys = poolKeys(options.prefix);
    this.clock = options.clock ?? Date.now;
  }

  /** The pool's data format; a pool without one is stamped (readDataFormat-1.lua). */
  async read(): Promise<DataFormatState> {
    const [version, migrating, migration, stamped] = (await this.script('readDataFormat', [this.base], [this.known, this.clock()])) as [string, string, string, number];
    return { version: Number(version), migrating: Number(migrating || 0), migration, stamped: Number(stamped) === 1 };
  }

  /** The pool's recorded data format, without stamping it: null when it has none (fresh, or written before versions). */
  async peek(): Promise<Pick<DataFormatState, 'version' | 'migrating'> | null> {
    const [version, migrating] = await this.options.redis.hmget(this.keys.dataFormat, 'version', 'migrating');
    return version === null || version === undefined ? null : { version: Number(version), migrating: Number(migrating || 0) };
  }

  /**
   * Brings the pool to this process's version before it takes any job: nothing when it is there,
   * the pending migrations (under the migration lock) when it is older, a wait when another process
   * migrates. Throws DataFormatTooNew when the pool is newer than this process.
   */
  async ensure(): Promise<DataFormatState> {
    const { logger } = this.options;
    let waiting = false;
    // A pool this process stamped had no process that watches the version: none to wait for.
    let stampedHere = false;
    for (;;) {
      const state = await this.read();
      const needed = newerThan(state, this.known);
      if (needed !== null) throw new DataFormatTooNew(needed, this.known);
      if (state.stamped) logger.info({ version: state.version }, 'data format: the pool had no version; stamped');
      stampedHere ||= state.stamped;
      if (state.version === this.known) return state;
      const lock = new CycleLock(this.options.redis, this.options.prefix, this.options.lockTtlMs ?? 30_000, 'migration');
      const ran = await lock.run((lost, token) => this.migrate(lost, token, !stampedHere));
      if (!ran.acquired) {
        if (!waiting) logger.info({ version: state.version, migrating: state.migrating || undefined }, 'data format: another process is migrating the pool; waiting');
        waiting = true;
        await new Promise((resolve) => setTimeout(resolve, this.options.pollMs ?? 500));
      }
    }
  }

  /**
   * Runs the pending migrations in order, under the lock (its token fences their writes); stops
   * early when the lock was lost. `quiesce`: each waits quiesceMs from its start first.
   */
  private async migrate(lost: () => boolean, token: string, quiesce: boolean): Promise<void> {
    const { redis, prefix, logger } = this.options;
    for (const migration of this.migrations) {
      if (lost()) return;
      const reply = (await this.script('startMigration', [this.base], [migration.version, migration.name, this.clock()])) as [number, string?];
      if (reply[0] === ReplyCodes.DATA_FORMAT_AHEAD) continue;
      if (reply[0] !== ReplyCodes.OK) throw new Error(`startMigration: unexpected reply ${JSON.stringify(reply)}`);
      const progress = reply[1] ?? '';
      // Older processes stop once they see the migration; what they do until then is on the old layout.
      const startedAt = Number((await redis.hget(this.keys.dataFormat, 'migration_started_at')) ?? 0);
      const waitMs = !quiesce ? 0 : Math.min(startedAt + (this.options.quiesceMs ?? MIGRATION_QUIESCE_MS) - this.clock(), this.options.quiesceMs ?? MIGRATION_QUIESCE_MS);
      if (waitMs > 0) {
        logger.info({ version: migration.version, waitMs }, 'data format: waiting for older processes to stop before migrating');
        const until = Date.now() + waitMs;
        while (Date.now() < until) {
          if (lost()) return;
          await new Promise((resolve) => setTimeout(resolve, Math.min(250, until - Date.now())));
        }
      }
      logger.info({ version: migration.version, migration: migration.name, resumed: progress !== '' }, progress ? 'data format: resuming a migration' : 'data format: migrating');
      const context: MigrationContext = {
        redis,
        keys: this.keys,
        prefix,
        ...(this.options.groups ? { groups: this.options.groups } : {}),
        logger: logger.child({ migration: migration.name }),
        progress,
        lost,
        saveProgress: async (value, writes) => {
          if (lost()) throw new MigrationLockLost(migration.name);
          const words: (string | Buffer)[] = [];
          writes?.(recordWrites(words));
          const saved = await this.script('saveMigrationProgress', [this.base], [token, migration.version, value, ...(words as string[])]);
          if (saved === ReplyCodes.LOCK_NOT_HELD) throw new MigrationLockLost(migration.name);
          if (saved !== ReplyCodes.OK) throw new Error(`migration ${migration.name}: progress not recorded (saveMigrationProgress replied ${JSON.stringify(saved)}); nothing written`);
        },
      };
      try {
        await migration.run(context);
      } catch (err) {
        // The next holder of the lock resumes; this process waits for it (ensure). A migration
        // that stopped on lost() may throw an error of its own.
        if (!(err instanceof MigrationLockLost) && !lost()) throw err;
        logger.warn({ version: migration.version, migration: migration.name }, `data format: ${(err as Error).message}`);
        return;
      }
      if (lost()) return;
      const finished = await this.script('finishMigration', [this.base], [migration.version, this.clock(), token]);
      if (finished === ReplyCodes.LOCK_NOT_HELD) {
        // Lost after its last step: the next holder of the lock finishes it (ensure waits for it).
        logger.warn({ version: migration.version, migration: migration.name }, `data format: ${new MigrationLockLost(migration.name).message}`);
        return;
      }
      logger.info({ version: migration.version, migration: migration.name }, 'data format: migrated');
    }
  }
}
