import type { AcquireRequestData } from '../../queues/acquire.js';

/** An acquire request names a group or an arch that no configured group has. */
export class RequestGroupsError extends Error {
  override name = 'RequestGroupsError';
}

/**
 * Group ids of an acquire request: its groups as given (duplicates dropped, order kept), or the
 * groups listing its arch, in config order. Shared by the acquire processor and reconcile's demand.
 */
export function requestGroupIds(groups: readonly { archs: readonly string[] }[], request: Pick<AcquireRequestData, 'groups' | 'arch'>): number[] {
  if (request.groups) {
    const unknown = request.groups.filter((g) => !groups[g]);
    if (unknown.length) throw new RequestGroupsError(`unknown group ${unknown.join(', ')}; groups are 0..${groups.length - 1}`);
    return [...new Set(request.groups)];
  }
  const arch = request.arch!;
  const ids = groups.flatMap((g, i) => (g.archs.includes(arch) ? [i] : []));
  if (ids.length === 0) throw new RequestGroupsError(`unknown arch ${JSON.stringify(arch)}: no group lists it`);
  return ids;
}
