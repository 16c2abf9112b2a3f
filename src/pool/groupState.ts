import type { PoolContext } from './context.js';

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

  /** Adds the config's groups to the pool's registry of known groups (keys.groupRegistry): a group later removed from the config stays known until it drained. */
  async registerConfigGroups(): Promise<void> {
    await this.ctx.redis.sadd(this.ctx.keys.groupRegistry, ...this.ctx.vmGroups);
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
