import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { RedisConnection } from '../redis.js';

/**
 * The pool's Lua scripts, `commands/<name>-<numberOfKeys>.lua`, loaded into an ioredis connection
 * with defineCommand, once per connection. A line `--- @include "includes/x"` is replaced by that
 * file (commands/includes/x.lua), once per script, as BullMQ does.
 */
const commandsDir = fileURLToPath(new URL('./commands/', import.meta.url));

/**
 * Every pool script, by name, with its number of keys (the file is `commands/<name>-<keys>.lua`).
 * test/pool/scripts.test.ts checks this list against the directory, both ways.
 */
export const POOL_SCRIPTS = {
  acquireVm: 1,
  acquireVmSet: 1,
  addVm: 1,
  cancelAcquire: 1,
  checkPoolState: 1,
  claimTask: 1,
  countOwnerUsage: 1,
  dispatchAcquireLine: 1,
  expireHolds: 1,
  extendCycleLock: 1,
  failCheckOnAcquire: 1,
  finishMigration: 1,
  expireLeases: 1,
  finishSpawn: 1,
  forgetGroup: 1,
  forgetSpawnMachine: 1,
  holdVm: 1,
  indexDueTimes: 1,
  leaveAcquireLine: 1,
  markServerStart: 1,
  markVmCheckFailed: 1,
  moveGroupKeys: 1,
  publishLaunch: 1,
  readDataFormat: 1,
  recoverPool: 1,
  relabelGroups: 1,
  recordHealthCheckResult: 1,
  recordSpawnMachine: 1,
  recordSpawnOutcome: 1,
  registerSpawn: 1,
  releaseCycleLock: 1,
  releaseVm: 1,
  rememberHostKey: 1,
  removeVm: 1,
  renewLease: 1,
  saveMigrationProgress: 1,
  startMigration: 1,
  startSpawnAttempt: 1,
  startVmCheck: 1,
  startVmTermination: 1,
  trimArrivals: 1,
  unholdVm: 1,
  verifyPoolState: 1,
} as const satisfies Record<string, number>;

export type ScriptName = keyof typeof POOL_SCRIPTS;
export const SCRIPT_NAMES = Object.keys(POOL_SCRIPTS) as ScriptName[];

export interface ScriptSource {
  name: ScriptName;
  /** ioredis command name, such as `vmpoolAcquireVm`. */
  command: string;
  numberOfKeys: number;
  lua: string;
}

/** Lua text with its includes resolved. Includes name files under commands/ (`includes/replyCodes`). */
export function resolveIncludes(text: string, seen = new Set<string>()): string {
  return text.replace(/^--- @include "([^"]+)"\s*$/gm, (_line, name: string) => {
    if (seen.has(name)) return '';
    seen.add(name);
    return resolveIncludes(readFileSync(`${commandsDir}${name}.lua`, 'utf8'), seen);
  });
}

/** The text of a Lua script file with its includes resolved. */
function luaSource(file: URL): string {
  return resolveIncludes(readFileSync(file, 'utf8'));
}

const commandOf = (name: string) => `vmpool${name[0]!.toUpperCase()}${name.slice(1)}`;

let cachedSources: ScriptSource[] | undefined;

export function scriptSources(): ScriptSource[] {
  cachedSources ??= SCRIPT_NAMES.map((name) => {
    const numberOfKeys = POOL_SCRIPTS[name];
    return { name, command: commandOf(name), numberOfKeys, lua: luaSource(new URL(`./commands/${name}-${numberOfKeys}.lua`, import.meta.url)) };
  });
  return cachedSources;
}

/** Runs one pool script: its keys (as many as the script takes) and its arguments. */
export type RunScript = (name: ScriptName, keys: readonly string[], args: readonly (string | number)[]) => Promise<unknown>;

/** Defines every pool script on the connection (idempotent) and returns the caller. */
export function loadScripts(redis: RedisConnection): RunScript {
  const target = redis as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>;
  for (const source of scriptSources()) {
    if (typeof target[source.command] !== 'function') {
      redis.defineCommand(source.command, { numberOfKeys: source.numberOfKeys, lua: source.lua });
    }
  }
  const commands = new Map(scriptSources().map((s) => [s.name, target[s.command]!]));
  return (name, keys, args) => commands.get(name)!.call(redis, ...keys, ...args);
}
