/**
 * Spill-over between groups (`fallback_groups`): while a group cannot take new demand (its spawn
 * circuit breaker is open, it is at max_vm_total, or its next spawn does not fit a resource limit:
 * quota_full), a request for it may be served by the first
 * of its fallback groups that can. Pure: the acquire processor and reconcile's demand both use it.
 */
import type { GroupConfig } from '../config/index.js';
import { breakerOpen, type BreakerState } from '../reconcile/breaker.js';

/**
 * The groups a request may be served in: each group asked for, followed, while it is blocked, by
 * its fallback groups (in their order, each once). A strict request keeps the groups it named.
 */
export function withFallbacks(groups: readonly Pick<GroupConfig, 'name' | 'fallback_groups'>[], ids: readonly string[], blocked: ReadonlySet<string>, strict = false): string[] {
  if (strict) return [...ids];
  const out: string[] = [];
  const add = (id: string) => {
    if (!out.includes(id)) out.push(id);
  };
  for (const id of ids) {
    add(id);
    if (!blocked.has(id)) continue;
    for (const name of groups.find((g) => g.name === id)?.fallback_groups ?? []) {
      if (groups.some((g) => g.name === name) && !ids.includes(name)) add(name);
    }
  }
  return out;
}

/**
 * The groups a request's demand counts for: its first group, and when that is blocked also the
 * first of its serving groups that is not (which spawns for it).
 */
export function demandGroupsOf(asked: readonly string[], serving: readonly string[], blocked: ReadonlySet<string>): string[] {
  const first = asked[0];
  if (first === undefined) return [];
  if (!blocked.has(first)) return [first];
  const spill = serving.find((id) => !blocked.has(id));
  return spill === undefined ? [first] : [first, spill];
}

/** Whether any group has fallbacks, so that callers skip reading what blocks groups when none has. */
export function hasFallbacks(groups: readonly Pick<GroupConfig, 'fallback_groups'>[]): boolean {
  return groups.some((g) => (g.fallback_groups?.length ?? 0) > 0);
}

/**
 * Groups that cannot take new demand now: an open spawn breaker (also while its probe runs), as
 * many VMs as max_vm_total (terminating ones do not count, as for spawning), or a next spawn that
 * does not fit the group's max_resources or its account's limits or cloud quota (`quotaFull`:
 * reconcile's quota_full marker, which lasts three cycles after the last cycle that found it).
 */
export function blockedGroups(
  groups: readonly Pick<GroupConfig, 'name' | 'max_vm_total'>[],
  state: readonly { group: string; breaker?: BreakerState | null; active: number; quotaFull?: boolean }[],
  now: number,
): Set<string> {
  const blocked = new Set<string>();
  for (const s of state) {
    const g = groups.find((c) => c.name === s.group);
    if (g && (breakerOpen(s.breaker, now) || s.active >= g.max_vm_total || s.quotaFull === true)) blocked.add(s.group);
  }
  return blocked;
}

