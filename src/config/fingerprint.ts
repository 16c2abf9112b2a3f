import { createHash } from 'node:crypto';
import type { GroupConfig } from './schemas.js';

/** Hex characters of a launch fingerprint (48 bits: a short name, not a security token). */
export const LAUNCH_FINGERPRINT_LENGTH = 12;

/** The parts of a group's config that shape the machines it makes, as launchFingerprint hashes them. */
export interface LaunchShape {
  provider: string;
  /** The spawn hook (argv) of a command provider; null for the local provider. */
  spawnCmd: readonly string[] | null;
  env: Readonly<Record<string, string>>;
  archs: readonly string[];
  tags: readonly string[];
  image: string | null;
  launchRevision: number;
}

type ShapeInput = Pick<GroupConfig, 'provider' | 'archs' | 'tags'> & Partial<Pick<GroupConfig, 'image' | 'launch_revision'>>;

/** A hook command as argv: a string is split on whitespace, as the hook runner does. */
function argv(command: string | readonly string[]): string[] {
  return typeof command === 'string' ? command.trim().split(/\s+/) : [...command];
}

/**
 * What shapes a group's machines: the provider type, its spawn hook and env, the archs, tags,
 * `image` and `launch_revision`. Limits, timeouts, the warm pool, the check and the terminate and
 * list hooks do not (a change of them replaces no VM). Lists that are sets (archs, tags) are sorted.
 */
export function launchShape(group: ShapeInput): LaunchShape {
  const p = group.provider;
  return {
    provider: p.type,
    spawnCmd: p.type === 'command' ? argv(p.spawn_cmd) : null,
    env: p.type === 'command' ? p.env : {},
    archs: [...group.archs].sort(),
    tags: [...group.tags].sort(),
    image: group.image ?? null,
    launchRevision: group.launch_revision ?? 0,
  };
}

/** JSON with every object's keys sorted, so that key order never changes the text. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * The fingerprint of a group's launch configuration: sha256 of its launchShape (canonical JSON),
 * the first LAUNCH_FINGERPRINT_LENGTH hex digits. Each VM records the fingerprint of the config that
 * spawned it; a VM whose fingerprint is not the group's current one is rolled out.
 */
export function launchFingerprint(group: ShapeInput): string {
  return createHash('sha256').update(canonicalJson(launchShape(group))).digest('hex').slice(0, LAUNCH_FINGERPRINT_LENGTH);
}
