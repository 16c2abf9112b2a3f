/**
 * Groups identified by name: moving a group's keys and the references to it from one name (or
 * version-1 index) to another. Two users: the migration to data format 2, which renames every
 * `group:<index>:...` key of a version-1 pool to `group:<name>:...` (and the `group` of VM records,
 * spawn records, waiting requests, swept marks and metrics), and `vmpool group rename OLD NEW`.
 */
import { PoolAccess } from './context.js';
import type { Migration, MigrationContext } from './dataFormat.js';
import { InvalidVmRequest } from './types.js';

/** Keys and references moved per script call. */
const BATCH = 200;

/** Shared metrics whose first label is the group (src/metrics/shared.ts: spawnDuration, spawns). */
export const GROUP_LABELLED_METRICS = ['spawn_duration', 'spawns'] as const;

/** Names of removed version-1 groups (an index no group of the migrating config has). */
export function unnamedGroupName(index: number): string {
  return `v1-group-${index}`;
}

/** Every key of the pool that belongs to a group, by group reference (a name, or a version-1 index): the tails after `group:<ref>:`. */
async function groupKeyTails(pool: PoolAccess): Promise<Map<string, string[]>> {
  const head = `${pool.keys.base}group:`;
  const out = new Map<string, string[]>();
  for (const key of await pool.reader.keysStartingWith(head)) {
    const rest = key.slice(head.length);
    const colon = rest.indexOf(':');
    if (colon <= 0) continue;
    const ref = rest.slice(0, colon);
    out.set(ref, [...(out.get(ref) ?? []), rest.slice(colon + 1)]);
  }
  return out;
}

/** Runs `step` on the members of a set, BATCH at a time (SSCAN; every member present throughout is seen). */
async function eachSetBatch(pool: PoolAccess, key: string, step: (members: string[]) => Promise<void>): Promise<void> {
  let cursor = '0';
  do {
    const [next, members] = await pool.redis.sscan(key, cursor, 'COUNT', BATCH);
    cursor = next;
    if (members.length) await step(members);
  } while (cursor !== '0');
}

/** Runs `step` on the fields of a hash, BATCH at a time (HSCAN). */
async function eachHashBatch(pool: PoolAccess, key: string, step: (fields: string[]) => Promise<void>): Promise<void> {
  let cursor = '0';
  do {
    const [next, flat] = await pool.redis.hscan(key, cursor, 'COUNT', BATCH);
    cursor = next;
    const fields = flat.filter((_, i) => i % 2 === 0);
    if (fields.length) await step(fields);
  } while (cursor !== '0');
}

async function inBatches<T>(items: readonly T[], step: (batch: T[]) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += BATCH) await step(items.slice(i, i + BATCH));
}

/**
 * Moves every reference to the groups of `map` (from -> to): their keys, then the `group` of VM
 * records, spawn records and waiting requests, the state marker's swept marks and the metrics'
 * group labels. Each script call is atomic and safe to repeat, so the whole is too.
 */
export async function moveGroupReferences(pool: PoolAccess, map: ReadonlyMap<string, string>, steps: MoveSteps = {}): Promise<void> {
  const done = steps.done ?? (() => false);
  const mark = steps.mark ?? (async () => undefined);
  if (!done('keys')) {
    const tails = await groupKeyTails(pool);
    for (const [from, to] of map) await inBatches(tails.get(from) ?? [], (batch) => pool.scripts.moveGroupKeys(from, to, batch).then(() => undefined));
    await mark('keys');
  }
  if (!done('vms')) {
    await eachSetBatch(pool, pool.keys.allVms, (names) => pool.scripts.relabelGroups('vm', map, names).then(() => undefined));
    await mark('vms');
  }
  if (!done('spawns')) {
    const head = pool.keys.spawnRecord('');
    const ids = (await pool.reader.keysStartingWith(head)).map((k) => k.slice(head.length));
    await inBatches(ids, (batch) => pool.scripts.relabelGroups('spawn', map, batch).then(() => undefined));
    await mark('spawns');
  }
  if (!done('waiters')) {
    await eachHashBatch(pool, pool.keys.waiterInfo, (members) => pool.scripts.relabelGroups('waiter', map, members).then(() => undefined));
    await mark('waiters');
  }
  if (!done('marks')) {
    await pool.scripts.relabelGroups('swept', map);
    await pool.scripts.relabelGroups('metric', map, GROUP_LABELLED_METRICS);
    await mark('marks');
  }
}

/** The steps of moveGroupReferences, in order; a resumed run skips those done. */
export const MOVE_STEPS = ['keys', 'vms', 'spawns', 'waiters', 'marks'] as const;
export type MoveStep = (typeof MOVE_STEPS)[number];

export interface MoveSteps {
  /** Whether a step was done by an earlier run. */
  done?: (step: MoveStep) => boolean;
  /** Records that a step is done. */
  mark?: (step: MoveStep) => Promise<void>;
}

/**
 * The index -> name map of a version-1 pool: the one recorded by an earlier (interrupted) run, or
 * else the migrating config's groups by index, and a `v1-group-<index>` name for an index that the
 * pool's keys or VM records use but the config does not have (a group removed from the end of the
 * list: it drains under that name).
 */
async function legacyMap(pool: PoolAccess, groups: readonly string[]): Promise<Map<string, string>> {
  const recorded = await pool.reader.legacyGroupNames();
  if (recorded.size > 0) return recorded;
  const map = new Map(groups.map((name, i) => [String(i), name]));
  const used = new Set([...(await groupKeyTails(pool)).keys()].filter((ref) => /^\d+$/.test(ref)));
  await eachSetBatch(pool, pool.keys.allVms, async (names) => {
    const pipeline = pool.redis.pipeline();
    for (const name of names) pipeline.hget(pool.keys.vm(name), 'group');
    for (const [, group] of (await pipeline.exec()) ?? []) if (typeof group === 'string' && /^\d+$/.test(group)) used.add(group);
  });
  for (const index of used) if (!map.has(index)) map.set(index, unnamedGroupName(Number(index)));
  return map;
}

/**
 * Data format 2: groups are identified by name. A version-1 pool named them by their index in the
 * config's list; the index -> name map is taken from the migrating process's config (so an
 * upgrade must not reorder the list in the same step), recorded in keys.legacyGroupNames first (a
 * resumed run uses the recorded map, whatever its own config), and every reference is moved to the
 * name. Progress: 'map', then each step of MOVE_STEPS as it is done.
 */
export const groupNamesMigration: Migration = {
  version: 2,
  name: 'groups-by-name',
  async run(ctx: MigrationContext) {
    const pool = new PoolAccess(ctx.redis, ctx.prefix);
    const doneSteps = new Set(ctx.progress.split(',').filter(Boolean));
    if (!ctx.groups) throw new Error('groups-by-name: the migrating process gives no config groups');
    const map = await legacyMap(pool, ctx.groups);
    if (!doneSteps.has('map')) {
      await ctx.saveProgress('map', (multi) => {
        multi.hset(pool.keys.legacyGroupNames, Object.fromEntries(map));
        multi.sadd(pool.keys.groupRegistry, ...map.values());
      });
      doneSteps.add('map');
      ctx.logger.info({ groups: Object.fromEntries(map) }, 'data format 2: group index -> name map recorded');
    }
    await moveGroupReferences(pool, map, {
      done: (step) => doneSteps.has(step),
      mark: async (step) => {
        if (ctx.lost()) throw new Error('groups-by-name: the migration lock was lost; the next process resumes');
        doneSteps.add(step);
        await ctx.saveProgress([...doneSteps].join(','));
      },
    });
  },
};

/** What `vmpool group rename` did: the keys and records it moved. */
export interface GroupRename {
  from: string;
  to: string;
  /** VMs the group has under its new name. */
  vms: number;
}

/**
 * Renames a group in place, with its VMs (`vmpool group rename OLD NEW`): every key and reference
 * moves from `from` to `to` (moveGroupReferences, twice: the second pass takes what workers wrote
 * under the old name during the first), the registry and the published config follow. The caller
 * holds the reconcile cycle lock, so that no cycle spawns into the old name meanwhile. `to` must be
 * a valid group name the pool does not know yet; `from` a group it knows.
 */
export async function renameGroup(pool: PoolAccess, from: string, to: string): Promise<GroupRename> {
  const keys = pool.keys;
  const known = new Set(await pool.redis.smembers(keys.groupRegistry));
  if (!known.has(from)) throw new InvalidVmRequest(`no group ${JSON.stringify(from)} in the pool (known: ${[...known].sort().join(', ') || 'none'})`);
  if (known.has(to) || (await pool.reader.keysStartingWith(keys.groupKeyPrefix(to))).length > 0) {
    throw new InvalidVmRequest(`the pool has a group ${JSON.stringify(to)} already: rename to a new name`);
  }
  const map = new Map([[from, to]]);
  await moveGroupReferences(pool, map);
  await moveGroupReferences(pool, map);
  const published = await pool.redis.get(keys.publishedGroupConfig(to));
  const tx = pool.redis.multi().srem(keys.groupRegistry, from).sadd(keys.groupRegistry, to);
  if (published) tx.set(keys.publishedGroupConfig(to), JSON.stringify({ ...(JSON.parse(published) as object), name: to }));
  await tx.exec();
  const vms = (await pool.reader.stateCounts([to]))[0]!;
  return { from, to, vms: Object.values(vms).reduce((a, b) => a + b, 0) };
}
