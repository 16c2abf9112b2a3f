import { readFileSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poolKeys, type PoolKeys } from '../../src/pool/keys.js';
import { resolveIncludes } from '../../src/pool/scripts.js';
import { connect, uniquePrefix } from '../helpers/redis.js';

/** Keys that only TypeScript uses (no script reads or writes them), so poolKeys.lua need not spell them. */
const WITHOUT_SCRIPTS: (keyof PoolKeys)[] = ['base', 'groupInfo', 'spawning', 'orphanUnknown', 'orphanMissing', 'reconcileLock'];

/** Sample arguments of each key kind; values that must survive as they are (':' in names, a non-ASCII owner). */
const SAMPLE_ARGS: Partial<Record<keyof PoolKeys, (string | number)[]>> = {
  vm: ['vm-1.x'],
  allVms: [],
  ip: ['fd00::1'],
  task: ['42:fedora-x86_64'],
  state: [3, 'check_health_failed'],
  readyClean: [3],
  readyDirty: [3, 'jürgen:a', 'jürgen/proj:b'],
  ownerVms: [3],
  serverStart: [],
  serverStartSeq: [],
  checkSeq: [],
  demand: [3],
  leases: [],
  waiters: [3],
  waiterInfo: [],
  readyChannel: [3],
};

/** The Lua name of a key kind: `<name>Key`, but a pub/sub channel is no key. */
const luaName = (name: string) => (name === 'readyChannel' ? name : `${name}Key`);

const luaText = readFileSync(new URL('../../src/pool/commands/includes/poolKeys.lua', import.meta.url), 'utf8');

let redis: Redis;
beforeAll(() => {
  redis = connect();
});
afterAll(async () => {
  await redis.quit();
});

describe('poolKeys.lua and keys.ts', () => {
  const prefix = uniquePrefix('keys');
  const keys = poolKeys(prefix);

  it('spell the same name for every key kind that a script uses', async () => {
    const kinds = Object.keys(keys).filter((k) => !WITHOUT_SCRIPTS.includes(k as keyof PoolKeys)) as (keyof PoolKeys)[];
    expect(kinds.filter((k) => SAMPLE_ARGS[k] === undefined), 'key kinds without sample arguments').toEqual([]);
    const calls = kinds.map((k) => `${luaName(k)}(KEYS[1]${SAMPLE_ARGS[k]!.map((_, i) => `, ARGV[${i + 1}]`).join('')})`);
    const fromLua: string[] = [];
    // One EVAL per kind, so that each gets its own ARGV.
    for (const [i, kind] of kinds.entries()) {
      const script = resolveIncludes(`--- @include "includes/poolKeys"\nreturn ${calls[i]}`);
      fromLua.push((await redis.eval(script, 1, keys.base, ...SAMPLE_ARGS[kind]!)) as string);
    }
    const fromTs = kinds.map((k) => {
      const key = keys[k] as string | ((...a: (string | number)[]) => string);
      return typeof key === 'function' ? key(...SAMPLE_ARGS[k]!) : key;
    });
    expect(Object.fromEntries(kinds.map((k, i) => [k, fromLua[i]]))).toEqual(Object.fromEntries(kinds.map((k, i) => [k, fromTs[i]])));
  });

  it('poolKeys.lua defines no key that keys.ts does not know', () => {
    const luaFunctions = [...luaText.matchAll(/^local function (\w+)\(/gm)].map((m) => m[1]);
    const expected = Object.keys(keys)
      .filter((k) => !WITHOUT_SCRIPTS.includes(k as keyof PoolKeys))
      .map(luaName);
    expect(luaFunctions.sort()).toEqual(expected.sort());
  });

  it('every key carries the pool hash tag', () => {
    for (const [kind, key] of Object.entries(keys)) {
      const name = typeof key === 'function' ? (key as (...a: (string | number)[]) => string)(...(SAMPLE_ARGS[kind as keyof PoolKeys] ?? [1])) : key;
      expect(name.startsWith(`${prefix}:{vmpool}:`), kind).toBe(true);
    }
  });
});
