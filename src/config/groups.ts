/**
 * Groups are identified by name (Redis keys, job payloads, records). A group's index in the
 * config's `groups` list is only an alias that the API and CLI accept (Copr's `group` integer),
 * resolved against the config of the process that receives it.
 */
import { GROUP_NAME_PATTERN } from './schemas.js';

/** How an API or CLI input names a group: its name, or its index in `groups` (a number, or a string of digits). */
export type GroupRef = string | number;

/** Whether a string can be a group's name (GROUP_NAME_PATTERN). */
export function isGroupName(value: unknown): value is string {
  return typeof value === 'string' && GROUP_NAME_PATTERN.test(value);
}

/** The name of the group that `ref` names in `groups` (by name, or by index), or null when none. */
export function groupNameOf(groups: readonly { name: string }[], ref: GroupRef): string | null {
  if (typeof ref === 'string' && !/^[0-9]+$/.test(ref)) return groups.some((g) => g.name === ref) ? ref : null;
  const index = Number(ref);
  return Number.isSafeInteger(index) && index >= 0 ? (groups[index]?.name ?? null) : null;
}

/** The index of the named group in `groups`, or null when the config has no such group (it was removed). */
export function groupIndexOf(groups: readonly { name: string }[], name: string): number | null {
  const index = groups.findIndex((g) => g.name === name);
  return index === -1 ? null : index;
}
