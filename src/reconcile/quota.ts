/**
 * Resources and quota (zuul-launcher's model), as pure functions: what one VM uses, the limits a
 * spawn must fit (the group's max_resources, its account's max_resources and the cloud's own quota
 * less the usage of machines that are not this pool's), and quota_cmd's output format.
 */
import { z } from 'zod';
import { resourcesSchema, type Config, type GroupConfig } from '../config/schemas.js';

export type Resources = Readonly<Record<string, number>>;

/** The unit every VM uses one of. */
export const INSTANCES = 'instances';

/** What one VM of the group uses: its `resources`, and 1 instance. */
export function vmResources(g: Pick<GroupConfig, 'resources'>): Resources {
  return { [INSTANCES]: 1, ...g.resources };
}

/**
 * How many VMs of the group one owner may have bound: max_vm_per_user, or fewer when
 * max_resources_per_owner holds fewer of the group's VMs.
 */
export function ownerVmLimit(g: Pick<GroupConfig, 'max_vm_per_user' | 'resources' | 'max_resources_per_owner'>): number {
  let limit = g.max_vm_per_user;
  const per = vmResources(g);
  for (const [unit, max] of Object.entries(g.max_resources_per_owner ?? {})) {
    const amount = per[unit] ?? 0;
    if (amount > 0) limit = Math.min(limit, Math.floor(max / amount));
  }
  return limit;
}

/** Float sums of fractional amounts are not exact: the scripts' tolerance (ownerUsage.lua OWNER_USAGE_EPSILON). */
export const OWNER_USAGE_EPSILON = 1e-9;

/** The scope of an owner's limits across groups: `all` (every group), or `account:<name>` (the groups naming that account). */
export type OwnerScope = 'all' | `account:${string}`;

/** The scope of the account's max_resources_per_owner. */
export function accountScope(account: string): OwnerScope {
  return `account:${account}`;
}

/**
 * What the acquire scripts need of a group to count and limit an owner's resources across groups
 * (commands/includes/ownerUsage.lua): `r`, what one VM uses (with 1 `instances`); `s`, every scope
 * a VM of the group bound to an owner counts in (`all`, and its account's when it has one), with
 * the limit of that scope (`m`, absent when the scope has none: counted, not limited).
 */
export interface OwnerUsageSpec {
  r: Resources;
  s: { n: OwnerScope; m?: Resources }[];
}

/**
 * The group's owner usage spec under `config`: the top-level max_resources_per_owner (scope
 * `all`) and its account's (scope `account:<name>`). The caller's config, never Redis state another
 * replica wrote, decides the limits; waiting requests keep theirs.
 */
export function ownerUsageSpec(config: Pick<Config, 'max_resources_per_owner' | 'accounts'>, g: Pick<GroupConfig, 'resources' | 'account'>): OwnerUsageSpec {
  const limited = (n: OwnerScope, m: Resources | undefined) => (m && Object.keys(m).length > 0 ? { n, m } : { n });
  const s: OwnerUsageSpec['s'] = [limited('all', config.max_resources_per_owner)];
  if (g.account) s.push(limited(accountScope(g.account), config.accounts?.[g.account]?.max_resources_per_owner));
  return { r: vmResources(g), s };
}

/** Whether any scope of the spec has a limit. */
export function ownerUsageLimited(spec: OwnerUsageSpec): boolean {
  return spec.s.some((scope) => scope.m !== undefined);
}

/**
 * The first scope and the units whose limit one more VM of the spec would pass, given the owner's
 * usage per scope (what ownerUsage keys hold); null when it fits. As ownerUsage.lua decides.
 */
export function ownerOverLimit(spec: OwnerUsageSpec, usage: ReadonlyMap<string, Resources>): { scope: OwnerScope; units: string[] } | null {
  for (const scope of spec.s) {
    if (!scope.m) continue;
    const units = exceededUnits(usage.get(scope.n) ?? {}, spec.r, scope.m, OWNER_USAGE_EPSILON);
    if (units.length > 0) return { scope: scope.n, units };
  }
  return null;
}

/** How many more VMs of the spec's group the owner's limits across groups hold (Infinity without any). */
export function ownerRoomAcross(spec: OwnerUsageSpec, usage: ReadonlyMap<string, Resources>): number {
  let room = Infinity;
  for (const scope of spec.s) {
    for (const [unit, limit] of Object.entries(scope.m ?? {})) {
      const per = spec.r[unit] ?? 0;
      if (per > 0) room = Math.min(room, Math.max(0, Math.floor((limit - (usage.get(scope.n)?.[unit] ?? 0) + OWNER_USAGE_EPSILON) / per)));
    }
  }
  return room;
}

/** Whether max_resources_per_owner, not max_vm_per_user, sets the group's owner limit. */
export function ownerLimitIsResources(g: Pick<GroupConfig, 'max_vm_per_user' | 'resources' | 'max_resources_per_owner'>): boolean {
  return ownerVmLimit(g) < g.max_vm_per_user;
}

/** `n` VMs of the group. */
export function scaled(per: Resources, n: number): Record<string, number> {
  return Object.fromEntries(Object.entries(per).map(([unit, amount]) => [unit, amount * n]));
}

export function addResources(a: Resources, b: Resources): Record<string, number> {
  const out: Record<string, number> = { ...a };
  for (const [unit, amount] of Object.entries(b)) out[unit] = (out[unit] ?? 0) + amount;
  return out;
}

/** The lowest of each unit's limits (a unit limited by one side only keeps that limit). */
export function tighterLimits(a: Resources, b: Resources): Record<string, number> {
  const out: Record<string, number> = { ...a };
  for (const [unit, limit] of Object.entries(b)) out[unit] = Math.min(out[unit] ?? Infinity, limit);
  return out;
}

/**
 * The units whose limit `used` plus `more` would pass (by more than `tolerance`); empty when it
 * fits. A unit `more` does not use never blocks.
 */
export function exceededUnits(used: Resources, more: Resources, limits: Resources, tolerance = 0): string[] {
  const over: string[] = [];
  for (const [unit, limit] of Object.entries(limits)) {
    const extra = more[unit] ?? 0;
    if (extra > 0 && (used[unit] ?? 0) + extra > limit + tolerance) over.push(unit);
  }
  return over.sort();
}

/** quota_cmd's output: one JSON object. */
export const quotaReportSchema = z
  .strictObject({
    limits: resourcesSchema.describe("The account's limits, such as { instances: 20, cores: 64 }"),
    usage: resourcesSchema.default({}).describe('What every machine of the account uses now'),
    pool_usage: resourcesSchema
      .default({})
      .describe("What this pool's machines (those tagged with VMPOOL_POOL_ID) use of `usage`: subtracted, as the pool counts its own VMs itself"),
  })
  .describe("quota_cmd's output");
export type QuotaReport = z.output<typeof quotaReportSchema>;

/** Parses quota_cmd's stdout; throws an Error that says what is wrong. */
export function parseQuotaReport(stdout: string): QuotaReport {
  let value: unknown;
  try {
    value = JSON.parse(stdout);
  } catch {
    throw new Error(`quota_cmd printed no JSON object (it must print {"limits": {...}, "usage": {...}, "pool_usage": {...}}): ${JSON.stringify(stdout.trim().slice(0, 200))}`);
  }
  const parsed = quotaReportSchema.safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ');
    throw new Error(`quota_cmd's output is not a quota report: ${issues}`);
  }
  return parsed.data;
}

/** Usage of machines that are not this pool's: the account's usage less the pool's, never below 0. */
export function foreignUsage(report: Pick<QuotaReport, 'usage' | 'pool_usage'>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [unit, used] of Object.entries(report.usage)) out[unit] = Math.max(0, used - (report.pool_usage[unit] ?? 0));
  return out;
}

/**
 * What the pool's own VMs of an account may use: the tighter of the configured max_resources and
 * the cloud's limits, less the foreign usage. Without a report, the configured limits.
 */
export function accountLimitsForPool(configured: Resources, report: Pick<QuotaReport, 'limits' | 'usage' | 'pool_usage'> | null): Record<string, number> {
  if (!report) return { ...configured };
  const limits = tighterLimits(configured, report.limits);
  const foreign = foreignUsage(report);
  return Object.fromEntries(Object.entries(limits).map(([unit, limit]) => [unit, Math.max(0, limit - (foreign[unit] ?? 0))]));
}

/** The groups of the config that name the account. */
export function groupsOfAccount(config: Pick<Config, 'groups'>, account: string): GroupConfig[] {
  return config.groups.filter((g) => g.account === account);
}
