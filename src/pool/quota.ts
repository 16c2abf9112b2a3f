import type { PoolContext } from './context.js';
import type { SpawnLimit } from './poolScripts.js';
import { vmResources, type QuotaReport, type Resources } from '../reconcile/quota.js';

/** quota_cmd's last answer for an account, as every replica reads it. */
export interface CachedQuota {
  report: QuotaReport;
  /** When quota_cmd answered (epoch ms). */
  fetchedAt: number;
}

/** Why a group's spawns wait for resources (reconcile's last finding). */
export interface QuotaFull {
  /** The units one more VM would pass. */
  units: string[];
  /** Whose limit: the group's max_resources, or its account's (configured or the cloud's). */
  limit: 'group' | 'account';
  /** When reconcile found it (epoch ms). */
  at: number;
}

/** A cached answer is kept this many quota_cache periods, so that a failing quota_cmd does not drop it at once. */
const KEEP_CACHE_PERIODS = 10;

/**
 * The pool's resource limits in Redis: quota_cmd's cached answers (shared by every replica) and
 * the groups whose spawns wait for resources (read by why-waiting and the pool page).
 */
export class Quotas {
  constructor(private readonly ctx: PoolContext) {}

  async cached(account: string): Promise<CachedQuota | null> {
    const raw = await this.ctx.redis.get(this.ctx.keys.accountQuota(account));
    if (raw === null) return null;
    try {
      const value = JSON.parse(raw) as CachedQuota;
      return typeof value.fetchedAt === 'number' && value.report ? value : null;
    } catch {
      return null;
    }
  }

  async store(account: string, report: QuotaReport, fetchedAt: number, cacheSeconds: number): Promise<void> {
    const ttlMs = Math.ceil(cacheSeconds * 1000 * KEEP_CACHE_PERIODS);
    await this.ctx.redis.set(this.ctx.keys.accountQuota(account), JSON.stringify({ report, fetchedAt } satisfies CachedQuota), 'PX', ttlMs);
  }

  /** Records that the group's next spawn does not fit, for `ttlMs` (renewed each cycle it still does not). */
  async markFull(group: string, full: Omit<QuotaFull, 'at'>, now: number, ttlMs: number): Promise<void> {
    await this.ctx.redis.set(this.ctx.keys.quotaFull(group), JSON.stringify({ ...full, at: now } satisfies QuotaFull), 'PX', Math.max(1, Math.ceil(ttlMs)));
  }

  async clearFull(group: string): Promise<void> {
    await this.ctx.redis.del(this.ctx.keys.quotaFull(group));
  }

  /** Whether the group's spawns wait for resources, per group (null: they do not). */
  async full(groups: readonly string[]): Promise<(QuotaFull | null)[]> {
    if (groups.length === 0) return [];
    const raws = await this.ctx.redis.mget(...groups.map((g) => this.ctx.keys.quotaFull(g)));
    return raws.map((raw) => {
      if (raw === null) return null;
      try {
        return JSON.parse(raw) as QuotaFull;
      } catch {
        return null;
      }
    });
  }

  /**
   * The limits registerSpawn re-checks for one more VM of the group: its max_resources, and its
   * account's limits (`accountLimits`: what the pool may use of it) over the groups naming it. Those
   * include the groups removed from the config that drain (as last read, with the config reconcile
   * published for them): their VMs still use the account until they are terminated.
   */
  spawnLimits(group: string, accountLimits: Resources | undefined): SpawnLimit[] {
    const g = this.ctx.groupConfig(group);
    const limits: SpawnLimit[] = [];
    if (g.max_resources && Object.keys(g.max_resources).length > 0) {
      limits.push({ name: 'group', max: g.max_resources, groups: { [group]: vmResources(g) } });
    }
    if (g.account) {
      const max = accountLimits ?? this.ctx.config.accounts[g.account]?.max_resources ?? {};
      if (Object.keys(max).length > 0) {
        const all = [...this.ctx.config.groups, ...this.ctx.removedGroups.values()];
        const groups = Object.fromEntries(all.filter((o) => o.account === g.account).map((o) => [o.name, vmResources(o)]));
        limits.push({ name: 'account', max, groups });
      }
    }
    return limits;
  }
}
