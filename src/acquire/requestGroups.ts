import type { AcquireRequestData } from '../../queues/acquire.js';
import { groupNameOf } from '../config/groups.js';

/** An acquire request names a group or an arch that no configured group has. */
export class RequestGroupsError extends Error {
  override name = 'RequestGroupsError';
}

/**
 * The group names of an acquire request: its groups as given (each a name, or an index in the
 * config's list, resolved against `groups`; duplicates dropped, order kept), or the groups listing
 * its arch, or every group, in config order; then only those that list every tag asked for.
 * `removed`: groups no longer in the config whose VMs still drain; a request may name them (by
 * name only), and is served their VMs until they retire. Shared by the acquire processor,
 * reconcile's demand and the API.
 */
export function requestGroupIds(
  groups: readonly { name: string; archs: readonly string[]; tags?: readonly string[] }[],
  request: Pick<AcquireRequestData, 'groups' | 'arch' | 'tags'>,
  removed: ReadonlySet<string> = new Set(),
): string[] {
  let ids: string[];
  if (request.groups) {
    const resolved = request.groups.map((ref) => groupNameOf(groups, ref) ?? (typeof ref === 'string' && removed.has(ref) ? ref : null));
    const unknown = request.groups.filter((_, i) => resolved[i] === null);
    if (unknown.length) {
      throw new RequestGroupsError(`unknown group ${unknown.map((g) => JSON.stringify(g)).join(', ')}; groups are ${groups.map((g, i) => `${g.name} (${i})`).join(', ')}`);
    }
    ids = [...new Set(resolved as string[])];
  } else if (request.arch !== undefined) {
    const arch = request.arch;
    ids = groups.flatMap((g) => (g.archs.includes(arch) ? [g.name] : []));
    if (ids.length === 0) throw new RequestGroupsError(`unknown arch ${JSON.stringify(arch)}: no group lists it`);
  } else {
    ids = groups.map((g) => g.name);
  }
  const tags = request.tags ?? [];
  if (tags.length === 0) return ids;
  const unknown = tags.filter((t) => !groups.some((g) => (g.tags ?? []).includes(t)));
  if (unknown.length) throw new RequestGroupsError(`unknown tag${unknown.length > 1 ? 's' : ''} ${unknown.map((t) => JSON.stringify(t)).join(', ')}: no group lists ${unknown.length > 1 ? 'them' : 'it'}`);
  const matching = ids.filter((name) => tags.every((t) => (groups.find((g) => g.name === name)?.tags ?? []).includes(t)));
  if (matching.length === 0) throw new RequestGroupsError(`no ${request.groups || request.arch ? 'such ' : ''}group lists every tag of ${JSON.stringify(tags)}`);
  return matching;
}
