import type { GroupConfig } from '../config/index.js';
import type { PoolContext } from './context.js';

/**
 * A group's config as reconcile publishes it in Redis (keys.publishedGroupConfig): without the
 * provider's and the check's `env`, whose values may be secrets and never go to Redis. `pass_env`
 * (names of variables of vmpool's own environment) is kept: a process draining a removed group
 * still passes them.
 */
export function publishableGroupConfig(g: GroupConfig): GroupConfig {
  const copy = structuredClone(g);
  delete (copy.provider as { env?: unknown }).env;
  delete (copy.check as { env?: unknown }).env;
  return copy;
}

/** Pool info field of a group drained at run time: when (epoch ms). See VmManager.drainGroup. */
export const DRAINED_SINCE = 'drained_since';

/** A group's run-time state beside its config: its pool info fields, of which the drain. */
export class GroupState {
  constructor(private readonly ctx: PoolContext) {}

  async writeInfo(group: string, key: string, value: string | number): Promise<void> {
    this.ctx.groupConfig(group);
    await this.ctx.redis.hset(this.ctx.keys.groupInfo(group), key, String(value));
  }

  async readInfo(group: string, key: string): Promise<string | null> {
    this.ctx.groupConfig(group);
    return this.ctx.reader.groupInfo(group, key);
  }

  /**
   * Adds the config's groups to the pool's registry of known groups (keys.groupRegistry) and
   * publishes each one's config (publishableGroupConfig), so that a group later removed from the
   * config stays known, and can be drained, until it is empty. O(groups).
   */
  async registerConfigGroups(): Promise<void> {
    const tx = this.ctx.redis.multi().sadd(this.ctx.keys.groupRegistry, ...this.ctx.vmGroups);
    for (const g of this.ctx.config.groups) tx.set(this.ctx.keys.publishedGroupConfig(g.name), JSON.stringify(publishableGroupConfig(g)));
    await tx.exec();
  }

  /**
   * Forgets a group removed from the config once it has no VM, no spawn in flight and no waiting
   * request (forgetGroup-1.lua): its keys are deleted and it leaves the registry. False when it
   * still has any, or is in the config.
   */
  async forgetIfEmpty(group: string): Promise<boolean> {
    if (this.ctx.vmGroups.includes(group)) return false;
    // Cheap first (a few counts each cycle); the scan for its keys only once it looks empty.
    const [counts] = await this.ctx.reader.stateCounts([group]);
    const [spawning, waiting] = await Promise.all([this.ctx.redis.zcard(this.ctx.keys.spawning(group)), this.ctx.redis.zcard(this.ctx.keys.waiters(group))]);
    if (Object.values(counts!).some((n) => n > 0) || spawning > 0 || waiting > 0) return false;
    const head = this.ctx.keys.groupKeyPrefix(group);
    const tails = (await this.ctx.reader.keysStartingWith(head)).map((k) => k.slice(head.length));
    return this.ctx.scripts.forgetGroup(group, tails);
  }

  /** The names of the groups the pool has known: the registry (config groups and removed ones that still drain). */
  async knownGroups(): Promise<string[]> {
    return (await this.ctx.redis.smembers(this.ctx.keys.groupRegistry)).sort();
  }

  /** See VmManager.drainGroup. */
  async drain(group: string): Promise<boolean> {
    this.ctx.groupConfig(group);
    return (await this.ctx.redis.hsetnx(this.ctx.keys.groupInfo(group), DRAINED_SINCE, String(this.ctx.clock()))) === 1;
  }

  /** Ends a run-time drain. Returns false when the group was not drained. */
  async undrain(group: string): Promise<boolean> {
    this.ctx.groupConfig(group);
    return (await this.ctx.redis.hdel(this.ctx.keys.groupInfo(group), DRAINED_SINCE)) === 1;
  }

  /** When the group was drained at run time (epoch ms), or null (the config's max_vm_total: 0 is not this). */
  async drainedSince(group: string): Promise<number | null> {
    const value = await this.readInfo(group, DRAINED_SINCE);
    return value !== null && /^\d+$/.test(value) ? Number(value) : null;
  }

  /** The groups drained at run time: group name -> since (epoch ms). */
  async drained(): Promise<Map<string, number>> {
    const drained = new Map<string, number>();
    for (const group of this.ctx.vmGroups) {
      const since = await this.drainedSince(group);
      if (since !== null) drained.set(group, since);
    }
    return drained;
  }
}
