import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import { DATA_FORMAT_VERSION, DataFormat, checkMigrations, DataFormatTooNew, type Migration } from '../../src/pool/dataFormat.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { startProcessTypes } from '../../src/runtime/boot.js';
import { runEntry, startWorkerProcess, waitFor, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

// The pool's data-format version (src/pool/dataFormat.ts): stamping, migrations (also killed in
// the middle, in real processes), and processes older than the pool's data format.
const base = uniquePrefix('dataformat');
const redis = connect();
const logger = createLogger('dataformat-test');
let n = 0;
const freshPrefix = () => `${base}-${++n}`;
const used: string[] = [];
const prefixFor = () => {
  const prefix = freshPrefix();
  used.push(prefix);
  return prefix;
};

afterAll(async () => {
  for (const prefix of used) await deleteKeysWithPrefix(redis, prefix);
  await redis.quit();
});

const unused = () => {
  throw new Error('unused');
};
const configInput = { redis: { url: REDIS_URL }, groups: [{ name: 'base' }], vm_cycle_timeout: 0.5 };

describe('data format', { timeout: 120_000 }, () => {
  it('a fresh pool is stamped with the current version; a pool with a state marker or a VM but no version is version 1', async () => {
    const fresh = prefixFor();
    const state = await new DataFormat({ redis, prefix: fresh, logger, known: 3, migrations: [testMigration(2), testMigration(3)], quiesceMs: 0 }).ensure();
    expect(state).toMatchObject({ version: 3, stamped: true });
    expect(await redis.hget(poolKeys(fresh).dataFormat, 'version')).toBe('3');

    for (const existing of ['marker', 'vm'] as const) {
      const prefix = prefixFor();
      const keys = poolKeys(prefix);
      if (existing === 'marker') await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
      else await redis.sadd(keys.allVms, 'vm-1');
      expect(await new DataFormat({ redis, prefix, logger }).read(), existing).toMatchObject({ version: 1, stamped: true });
    }
    // The default: this release knows version 2 (groups by name; migrations.test: test/pool/groupNames.test.ts).
    expect(DATA_FORMAT_VERSION).toBe(2);
  });

  it('a list of migrations must be ordered, one per version from 2, up to the known version', () => {
    expect(() => checkMigrations([testMigration(2), testMigration(3)], 3)).not.toThrow();
    expect(() => checkMigrations([testMigration(3), testMigration(2)], 3)).toThrow(/expected 2/);
    expect(() => checkMigrations([testMigration(2)], 3)).toThrow(/not to 3/);
    expect(() => checkMigrations([], 2)).toThrow(/needs migrations/);
  });

  it('migrations run in order, once, under the lock, when several processes of the new version start at once', async () => {
    const prefix = prefixFor();
    await redis.hset(poolKeys(prefix).poolState, 'generation', 'g', 'epoch', '1');
    const runs: string[] = [];
    const migrations: Migration[] = [2, 3].map((version) => ({
      version,
      name: `m${version}`,
      async run() {
        runs.push(`m${version}`);
        await new Promise((r) => setTimeout(r, 200));
      },
    }));
    const formats = [0, 1, 2].map(() => new DataFormat({ redis, prefix, logger, known: 3, migrations, pollMs: 50, quiesceMs: 0 }));
    const states = await Promise.all(formats.map((f) => f.ensure()));
    expect(states.map((s) => s.version)).toEqual([3, 3, 3]);
    expect(runs).toEqual(['m2', 'm3']);
    expect(await redis.hgetall(poolKeys(prefix).dataFormat)).toMatchObject({ version: '3' });
    expect(await redis.hexists(poolKeys(prefix).dataFormat, 'migrating')).toBe(0);
  });

  it('a migration killed (SIGKILL) in the middle is completed by the next process, each item exactly once', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    // An existing pool (version 1), with items for the test migration.
    await redis.hset(keys.poolState, 'generation', 'g', 'epoch', '1');
    const countsKey = `${prefix}:test-counts`;
    const env = { PREFIX: prefix, COUNTS_KEY: countsKey, ITEMS: '23', BATCH: '5', REDIS_URL };

    const killed = await runEntry('test/fixtures/dataFormat/migrate.ts', { ...env, KILL_AFTER_BATCH: '2' });
    expect(killed.signal, killed.output).toBe('SIGKILL');
    const midway = await redis.hgetall(keys.dataFormat);
    expect(midway).toMatchObject({ version: '1', migrating: '2', migration: 'mark-items', progress: '10' });
    expect(Object.keys(await redis.hgetall(countsKey)).length).toBe(10);

    const finished = await runEntry('test/fixtures/dataFormat/migrate.ts', env);
    expect(finished.code, finished.output).toBe(0);
    expect(finished.output).toContain('resuming a migration');
    expect(finished.output).toContain('version 2');
    const counts = await redis.hgetall(countsKey);
    expect(Object.keys(counts).sort((a, b) => Number(a) - Number(b))).toEqual(Array.from({ length: 23 }, (_, i) => String(i)));
    expect(Object.values(counts).every((c) => c === '1'), JSON.stringify(counts)).toBe(true);
    const after = await redis.hgetall(keys.dataFormat);
    expect(after.version).toBe('2');
    expect(after.migrating).toBeUndefined();
    expect(after.progress).toBeUndefined();

    // A third process finds nothing to do.
    const again = await runEntry('test/fixtures/dataFormat/migrate.ts', env);
    expect(again.code, again.output).toBe(0);
    expect(again.output).not.toContain('migrating');
    expect(Object.values(await redis.hgetall(countsKey)).every((c) => c === '1')).toBe(true);
  });

  it('a worker process older than the pool data format refuses to start, says which version it needs, and writes nothing', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    await redis.hset(keys.dataFormat, 'version', String(DATA_FORMAT_VERSION + 1));
    const configFile = writeConfigFile(configInput);
    const result = await runEntry('workers/acquire.ts', { VMPOOL_PREFIX: prefix }, ['--config', configFile]);
    expect(result.code, result.output).toBe(1);
    expect(result.output).toContain(`the pool's data format is version ${DATA_FORMAT_VERSION + 1}, and this vmpool knows versions up to ${DATA_FORMAT_VERSION}`);
    expect(result.output).not.toContain('worker started');
    // It wrote nothing: no state marker, no server start, the version untouched.
    expect(await redis.exists(keys.poolState, keys.serverStart)).toBe(0);
    expect(await redis.hget(keys.dataFormat, 'version')).toBe(String(DATA_FORMAT_VERSION + 1));
  });

  it('a running worker process stops and exits with code 1 when a newer process migrates the pool past it', async () => {
    const prefix = prefixFor();
    const keys = poolKeys(prefix);
    const configFile = writeConfigFile(configInput);
    const worker = await startWorkerProcess('acquire', { VMPOOL_PREFIX: prefix, REDIS_URL }, 30_000, { args: ['--config', configFile] });
    try {
      const exited = new Promise<number | null>((resolve) => worker.child.once('exit', (code) => resolve(code)));
      await redis.hset(keys.dataFormat, 'migrating', String(DATA_FORMAT_VERSION + 1), 'migration', 'next');
      expect(await exited, worker.lines.join('\n')).toBe(1);
      expect(worker.lines.join('\n')).toContain(`the pool's data format is version ${DATA_FORMAT_VERSION + 1}, and this vmpool knows versions up to ${DATA_FORMAT_VERSION}`);
    } finally {
      await worker.kill();
    }
  });

  it('in process: startProcessTypes throws DataFormatTooNew on a newer pool', async () => {
    const prefix = prefixFor();
    await redis.hset(poolKeys(prefix).dataFormat, 'version', '5');
    const err = await startProcessTypes(processTypeSpecs, ['acquire'], parseConfig(configInput, {}), { prefix, providerFactory: unused, healthCheckFactory: unused, dataFormat: { known: 1, migrations: [] } }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(DataFormatTooNew);
    expect((err as DataFormatTooNew).needed).toBe(5);
  });

  for (const moved of ['version', 'migration'] as const) {
    it(`a running process stops its workers when the data format moves past it (${moved === 'version' ? 'a newer version' : 'a migration starts'})`, async () => {
      const prefix = prefixFor();
      const keys = poolKeys(prefix);
      const refused: DataFormatTooNew[] = [];
      const running = await startProcessTypes(processTypeSpecs, ['acquire'], parseConfig(configInput, {}), {
        prefix,
        providerFactory: unused,
        healthCheckFactory: unused,
        onRefused: (err) => refused.push(err),
      });
      try {
        expect(running.workers[0]!.worker.isRunning()).toBe(true);
        expect(await redis.hget(keys.dataFormat, 'version')).toBe(String(DATA_FORMAT_VERSION));
        if (moved === 'version') await redis.hset(keys.dataFormat, 'version', String(DATA_FORMAT_VERSION + 1));
        else await redis.hset(keys.dataFormat, 'migrating', String(DATA_FORMAT_VERSION + 1), 'migration', 'next');
        await waitFor(() => refused.length > 0, 15_000, 'the refusal');
        expect(refused[0]!.needed).toBe(DATA_FORMAT_VERSION + 1);
        expect(running.workers[0]!.worker.isRunning()).toBe(false);
        // The watch wrote nothing more: the marker's epoch stays.
        const epoch = await redis.hget(keys.poolState, 'epoch');
        await new Promise((r) => setTimeout(r, 1_200));
        expect(await redis.hget(keys.poolState, 'epoch')).toBe(epoch);
      } finally {
        await running.stop(5_000);
      }
    });
  }
});

function testMigration(version: number): Migration {
  return { version, name: `noop${version}`, run: async () => undefined };
}
