import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Redis } from 'ioredis';

/**
 * Loads the pool's Lua scripts (`commands/<name>-<numberOfKeys>.lua`) into an ioredis connection
 * with defineCommand, once per connection. A line `--- @include "includes/x"` is replaced by that
 * file, once per script, as BullMQ does.
 */
const commandsDir = fileURLToPath(new URL('./commands/', import.meta.url));

export interface ScriptSource {
  /** ioredis command name, such as `vmpoolAcquireVm`. */
  command: string;
  numberOfKeys: number;
  lua: string;
}

function resolveIncludes(file: string, seen: Set<string>): string {
  const text = readFileSync(`${commandsDir}${file}.lua`, 'utf8');
  return text.replace(/^--- @include "([^"]+)"\s*$/gm, (_line, name: string) => {
    if (seen.has(name)) return '';
    seen.add(name);
    return resolveIncludes(name, seen);
  });
}

let cachedSources: ScriptSource[] | undefined;

export function scriptSources(): ScriptSource[] {
  if (cachedSources) return cachedSources;
  cachedSources = readdirSync(commandsDir)
    .filter((f) => f.endsWith('.lua'))
    .map((f) => {
      const match = /^(\w+)-(\d+)\.lua$/.exec(f);
      if (!match) throw new Error(`Lua script file name must be <name>-<numberOfKeys>.lua: ${f}`);
      const [, name, keys] = match as unknown as [string, string, string];
      return {
        command: `vmpool${name[0]!.toUpperCase()}${name.slice(1)}`,
        numberOfKeys: Number(keys),
        lua: resolveIncludes(f.slice(0, -4), new Set()),
      };
    });
  return cachedSources;
}

type ScriptReply = unknown;
export type ScriptName =
  | 'addVm'
  | 'acquireVm'
  | 'releaseVm'
  | 'startVmTermination'
  | 'removeVm'
  | 'startVmCheck'
  | 'recordHealthCheckResult'
  | 'markVmCheckFailed'
  | 'markServerStart'
  | 'holdVm'
  | 'unholdVm';

/** Defines every pool script on the connection (idempotent) and returns a typed caller. */
export function loadScripts(redis: Redis): (name: ScriptName | string, keys: string[], args: (string | number)[]) => Promise<ScriptReply> {
  const target = redis as unknown as Record<string, unknown>;
  for (const source of scriptSources()) {
    if (typeof target[source.command] !== 'function') {
      redis.defineCommand(source.command, { numberOfKeys: source.numberOfKeys, lua: source.lua });
    }
  }
  return (name, keys, args) => {
    const command = `vmpool${name[0]!.toUpperCase()}${name.slice(1)}`;
    const fn = target[command] as ((...a: (string | number)[]) => Promise<ScriptReply>) | undefined;
    if (!fn) throw new Error(`unknown pool script ${name}`);
    return fn.call(redis, ...keys, ...args);
  };
}
