import { readdirSync, readFileSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poolKeys, type PoolKeys } from '../../src/pool/keys.js';
import { ReplyCodes } from '../../src/pool/replyCodes.js';
import { POOL_SCRIPTS, SCRIPT_NAMES, resolveIncludes, scriptSources } from '../../src/pool/scripts.js';
import { connect, uniquePrefix } from '../helpers/redis.js';

const poolDir = new URL('../../src/pool/commands/', import.meta.url);
const luaFiles = (dir: URL) => readdirSync(dir).filter((f) => f.endsWith('.lua'));
const read = (dir: URL, file: string) => readFileSync(new URL(file, dir), 'utf8');

/** Every script file with its text (the reconcile cycle lock's too). */
const scripts = luaFiles(poolDir).map((f) => ({ file: f, text: read(poolDir, f) }));

/** The header comment of a script: between `--[[` and `]]` at its top. */
function header(text: string): string {
  const match = /^--\[\[\n([\s\S]*?)\n\]\]/.exec(text);
  if (!match) throw new Error('no header');
  return match[1]!;
}

function section(head: string, name: 'Input' | 'Output'): string {
  const match = new RegExp(`^  ${name}:\\n((?:    .*\\n?|\\s*\\n)*)`, 'm').exec(head);
  return match ? match[1]! : '';
}

/** Keys that only TypeScript uses (no script reads or writes them), so poolKeys.lua need not spell them. */
const WITHOUT_SCRIPTS: (keyof PoolKeys)[] = ['base', 'groupInfo', 'quotaFull', 'accountQuota', 'autoholdSeq', 'orphanUnknown', 'orphanMissing', 'orphanUntagged', 'history', 'historyAcquire', 'publishedGroupConfig'];

/** Sample arguments of each key kind; values that must survive as they are (':' in names, a non-ASCII owner). */
const SAMPLE_ARGS: Partial<Record<keyof PoolKeys, (string | number)[]>> = {
  vm: ['vm-1.x'],
  bootTime: ['fedora-x86_64.big_2'],
  breaker: ['fedora-x86_64.big_2'],
  arrivals: ['fedora-x86_64.big_2'],
  allVms: [],
  autoholdRules: [],
  ip: ['fd00::1'],
  ownerTask: ['jürgen:a', '42:fedora-x86_64'],
  ownerTaskClaim: ['jürgen:a', '42:fedora-x86_64'],
  legacyTask: ['42:fedora-x86_64'],
  legacyTaskClaim: ['42:fedora-x86_64'],
  state: ['fedora-x86_64.big_2', 'check_health_failed'],
  readyClean: ['fedora-x86_64.big_2'],
  dueCheck: ['fedora-x86_64.big_2'],
  dueDirty: ['fedora-x86_64.big_2'],
  dueCheckStarted: ['fedora-x86_64.big_2'],
  dueTerminating: ['fedora-x86_64.big_2'],
  launch: ['fedora-x86_64.big_2'],
  launchDeferring: ['fedora-x86_64.big_2'],
  outdated: ['fedora-x86_64.big_2'],
  readyOutdated: ['fedora-x86_64.big_2'],
  dueReadyAge: ['fedora-x86_64.big_2'],
  coming: ['fedora-x86_64.big_2'],
  held: ['fedora-x86_64.big_2'],
  readyDirty: ['fedora-x86_64.big_2', 'jürgen:a', 'jürgen/proj:b'],
  ownerVms: ['fedora-x86_64.big_2'],
  ownerUsage: ['account:openstack-prod', 'jürgen:a'],
  ownerBlockedGroups: ['jürgen:a'],
  serverStart: [],
  serverStartSeq: [],
  checkSeq: [],
  demand: ['fedora-x86_64.big_2'],
  leases: [],
  holdsExpiring: [],
  waiters: ['fedora-x86_64.big_2'],
  waiterInfo: [],
  acquireCancel: ['000001700000000|acquire-42%3Ax'],
  auditEvents: [],
  auditMaxEvents: [],
  poolState: [],
  acquireAssignment: ['acquire-42%3Ax'],
  lineOwners: ['fedora-x86_64.big_2'],
  lineBlocked: ['fedora-x86_64.big_2'],
  ownerLine: ['fedora-x86_64.big_2', 'alice'],
  sandboxLine: ['fedora-x86_64.big_2', 'alice', 'alice/p'],
  lineTurn: ['fedora-x86_64.big_2'],
  setKeeps: ['fedora-x86_64.big_2'],
  acquireAssigned: [],
  readyChannel: ['fedora-x86_64.big_2'],
  spawning: ['fedora-x86_64.big_2'],
  spawnRecord: ['g3-1700000000000-0a1b2c3d'],
  reconcileLock: [],
  dataFormat: [],
  migrationLock: [],
  legacyGroupNames: [],
  groupRegistry: [],
  groupKeyPrefix: ['fedora-x86_64.big_2'],
  metric: ['spawns'],
};

/** The Lua name of a key kind: `<name>Key`, but a pub/sub channel is no key. */
const luaName = (name: string) => (name === 'readyChannel' ? name : `${name}Key`);

const luaText = read(poolDir, 'includes/poolKeys.lua');

let redis: Redis;
beforeAll(() => {
  redis = connect();
});
afterAll(async () => {
  await redis.quit();
});

describe('pool scripts', () => {
  it('POOL_SCRIPTS lists every script file of commands/, with its number of keys, and nothing else', () => {
    const files = luaFiles(poolDir).sort();
    expect(files).toEqual(SCRIPT_NAMES.map((name) => `${name}-${POOL_SCRIPTS[name]}.lua`).sort());
    expect(scriptSources().map((s) => s.name)).toEqual(SCRIPT_NAMES);
  });

  it('every script loads with its includes resolved and compiles in Redis', async () => {
    for (const source of scriptSources()) {
      expect(source.lua, source.name).not.toMatch(/@include/);
      // SCRIPT LOAD compiles without running.
      await expect(redis.script('LOAD', source.lua), source.name).resolves.toMatch(/^[0-9a-f]{40}$/);
    }
  });

  it('includes/replyCodes.lua spells the table of replyCodes.ts, no more and no less', async () => {
    const lua = read(poolDir, 'includes/replyCodes.lua');
    const defined = [...lua.matchAll(/^local (\w+) = (-?\d+)$/gm)].map((m) => [m[1], Number(m[2])]);
    expect(Object.fromEntries(defined)).toEqual(ReplyCodes);
    const names = Object.keys(ReplyCodes);
    const script = resolveIncludes(`--- @include "includes/replyCodes"\nreturn {${names.join(', ')}}`);
    expect(await redis.eval(script, 0)).toEqual(Object.values(ReplyCodes));
  });

  it('reply codes are unique', () => {
    const codes = Object.values(ReplyCodes);
    expect(new Set(codes).size).toBe(codes.length);
  });
});

describe('script headers', () => {
  it.each(scripts.map((s) => [s.file, s.text] as const))('%s documents KEYS, ARGV and its output, naming reply codes from the table', (file, text) => {
    const head = header(text);
    const input = section(head, 'Input');
    const output = section(head, 'Output');
    expect(input, `${file} Input`).toMatch(/KEYS\[1\]/);
    // Every KEYS and ARGV the script reads is documented.
    for (const [ref] of text.slice(text.indexOf(']]')).matchAll(/\b(KEYS|ARGV)\[\d+\]/g)) {
      expect(input, `${file} uses ${ref}`).toContain(ref);
    }
    expect(output.trim(), `${file} Output`).not.toBe('');
    // The output names codes only by the table's names: no bare numbers as codes.
    for (const [word] of output.matchAll(/\b[A-Z][A-Z_]{2,}\b/g)) {
      if (word === 'HGETALL') continue;
      expect(Object.keys(ReplyCodes), `${file} names ${word}`).toContain(word);
    }
    expect(output, `${file} Output`).not.toMatch(/^\s*\{?-?\d+\b/m);
  });

  it.each(scripts.map((s) => [s.file, s.text] as const))('%s returns codes by name, and builds every key from KEYS[1]', (file, text) => {
    const body = text.slice(text.indexOf(']]'));
    expect(body, file).not.toMatch(/return\s+\{?\s*-?\d+\b/);
    expect(body, file).not.toMatch(/return\s+\{\s*'/);
    expect(body, file).not.toMatch(/KEYS\[[2-9]\]/);
    // Key names are spelled in includes/poolKeys.lua only.
    if (!file.startsWith('includes/')) expect(body, file).not.toMatch(/base \.\./);
  });

  it('includes/ names every include a script uses', () => {
    const includes = new Set(readdirSync(new URL('includes/', poolDir)).map((f) => `includes/${f.replace(/\.lua$/, '')}`));
    const used = new Set<string>();
    for (const { text } of scripts) for (const m of text.matchAll(/^--- @include "([^"]+)"/gm)) used.add(m[1]!);
    for (const file of includes) for (const m of read(poolDir, `${file}.lua`).matchAll(/^--- @include "([^"]+)"/gm)) used.add(m[1]!);
    expect([...used].sort()).toEqual([...includes].sort());
  });
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
