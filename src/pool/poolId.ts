/**
 * The pool's identity (pool_id): what it tags its machines with, so that two pools sharing a
 * provider (one host, one cloud tenant) never take each other's machines for leaks. Hooks get it
 * as VMPOOL_POOL_ID; the local provider keeps its state in a directory per pool id.
 */

/** A pool id: safe as a file name, a cloud tag or metadata value, and an environment value. */
export const POOL_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * The pool id of a prefix when pool_id is not configured: the prefix without its hash-tag braces
 * and leading dots or dashes (`{ci}` and `ci` give `ci`); `vmpool` if nothing is left.
 */
export function poolIdFromPrefix(prefix: string): string {
  const id = prefix.replace(/[{}]/g, '').replace(/^[^A-Za-z0-9]+/, '').slice(0, 128);
  return id === '' ? 'vmpool' : id;
}

/** The pool id of a config on a prefix: pool_id when given, else derived from the prefix. */
export function poolIdOf(config: { pool_id?: string }, prefix: string): string {
  return config.pool_id ?? poolIdFromPrefix(prefix);
}
