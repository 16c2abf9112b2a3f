import { groupConfigSchema, groupIndexOf, groupNameOf, type Config, type GroupConfig, type GroupRef } from '../config/index.js';
import type { Logger } from '../logger.js';
import type { RedisConnection } from '../redis.js';
import { poolKeys, type PoolKeys } from './keys.js';
import { PoolReader } from './poolReader.js';
import { PoolScripts } from './poolScripts.js';
import { UnknownGroup } from './types.js';

export type Clock = () => number;

/**
 * One pool's Redis on one connection: its keys, its reads and its scripts. VmManager and
 * VmPoolClient each build one; the pool's modules reach Redis only through it.
 */
export class PoolAccess {
  readonly keys: PoolKeys;
  readonly reader: PoolReader;
  readonly scripts: PoolScripts;

  constructor(
    readonly redis: RedisConnection,
    readonly prefix: string,
  ) {
    this.keys = poolKeys(prefix);
    this.reader = new PoolReader(redis, prefix);
    this.scripts = new PoolScripts(redis, prefix);
  }
}

/** What every part of a VmManager shares: the pool's Redis, its config, its logger and its clock. */
export class PoolContext extends PoolAccess {
  /**
   * Groups removed from the config that the pool still has (its registry), with the config
   * reconcile last published for each: they drain. Read by refreshRemovedGroups.
   */
  private removed = new Map<string, GroupConfig>();

  constructor(
    redis: RedisConnection,
    prefix: string,
    readonly config: Config,
    readonly logger: Logger,
    readonly clock: Clock,
  ) {
    super(redis, prefix);
  }

  /** The names of the config's groups, in config order (groups are identified by name). */
  get vmGroups(): string[] {
    return this.config.groups.map((g) => g.name);
  }

  /**
   * The config of a group by name: the config's, or for a group removed from it that still drains,
   * the one last published (refreshRemovedGroups); UnknownGroup otherwise.
   */
  groupConfig(group: string): GroupConfig {
    const g = this.config.groups.find((c) => c.name === group) ?? this.removed.get(group);
    if (!g) throw new UnknownGroup(group, this.vmGroups);
    return g;
  }

  /** The groups removed from the config that drain (as last read), by name. */
  get removedGroups(): ReadonlyMap<string, GroupConfig> {
    return this.removed;
  }

  /**
   * Reads the groups the pool knows (keys.groupRegistry) that the config does not have, with their
   * published configs. A removed group without a published config is left out (nothing can
   * terminate its machines: the log says so once per refresh).
   */
  async refreshRemovedGroups(): Promise<ReadonlyMap<string, GroupConfig>> {
    const names = (await this.redis.smembers(this.keys.groupRegistry)).filter((n) => !this.config.groups.some((g) => g.name === n)).sort();
    const removed = new Map<string, GroupConfig>();
    const raws = names.length ? await this.redis.mget(...names.map((n) => this.keys.publishedGroupConfig(n))) : [];
    names.forEach((name, i) => {
      const parsed = raws[i] ? groupConfigSchema.safeParse(JSON.parse(raws[i]!)) : null;
      if (parsed?.success) removed.set(name, parsed.data);
      else this.logger.warn({ group: name }, 'a group removed from the config has no usable published config: its VMs stay until it is back in the config');
    });
    this.removed = removed;
    return removed;
  }

  /** The group's config, reading the removed groups again when it is in neither the config nor the last read. */
  async knownGroupConfig(group: string): Promise<GroupConfig> {
    if (!this.config.groups.some((g) => g.name === group) && !this.removed.has(group)) await this.refreshRemovedGroups();
    return this.groupConfig(group);
  }

  /** The name of the group an API or CLI input names (its name, or its index in the config; or the name of a removed group that drains); UnknownGroup when none. */
  resolveGroup(ref: GroupRef): string {
    // A group removed from the config is still named (never indexed): its VMs drain.
    const name = groupNameOf(this.config.groups, ref) ?? (typeof ref === 'string' && this.removed.has(ref) ? ref : null);
    if (name === null) throw new UnknownGroup(ref, this.vmGroups);
    return name;
  }

  /** The group's index in the config's list (the API's alias), or null when the config no longer has it. */
  groupIndex(group: string): number | null {
    return groupIndexOf(this.config.groups, group);
  }
}
