import type { AcquireRequestData } from '../../queues/acquire.js';

/** An acquire request names a group or an arch that no configured group has. */
export class RequestGroupsError extends Error {
  override name = 'RequestGroupsError';
}

/**
 * Group ids of an acquire request: its groups as given (duplicates dropped, order kept), or the
 * groups listing its arch, or every group, in config order; then only those that list every tag
 * asked for. Shared by the acquire processor, reconcile's demand and the API.
 */
export function requestGroupIds(
  groups: readonly { archs: readonly string[]; tags?: readonly string[] }[],
  request: Pick<AcquireRequestData, 'groups' | 'arch' | 'tags'>,
): number[] {
  let ids: number[];
  if (request.groups) {
    const unknown = request.groups.filter((g) => !groups[g]);
    if (unknown.length) throw new RequestGroupsError(`unknown group ${unknown.join(', ')}; groups are 0..${groups.length - 1}`);
    ids = [...new Set(request.groups)];
  } else if (request.arch !== undefined) {
    const arch = request.arch;
    ids = groups.flatMap((g, i) => (g.archs.includes(arch) ? [i] : []));
    if (ids.length === 0) throw new RequestGroupsError(`unknown arch ${JSON.stringify(arch)}: no group lists it`);
  } else {
    ids = groups.map((_, i) => i);
  }
  const tags = request.tags ?? [];
  if (tags.length === 0) return ids;
  const unknown = tags.filter((t) => !groups.some((g) => (g.tags ?? []).includes(t)));
  if (unknown.length) throw new RequestGroupsError(`unknown tag${unknown.length > 1 ? 's' : ''} ${unknown.map((t) => JSON.stringify(t)).join(', ')}: no group lists ${unknown.length > 1 ? 'them' : 'it'}`);
  const matching = ids.filter((i) => tags.every((t) => (groups[i]!.tags ?? []).includes(t)));
  if (matching.length === 0) throw new RequestGroupsError(`no ${request.groups || request.arch ? 'such ' : ''}group lists every tag of ${JSON.stringify(tags)}`);
  return matching;
}
