import { groupIndexOf, groupNameOf, type Config, type GroupConfig, type GroupRef } from '../config/index.js';
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

  /** The config of a group by name; UnknownGroup when the config has no such group. */
  groupConfig(group: string): GroupConfig {
    const g = this.config.groups.find((c) => c.name === group);
    if (!g) throw new UnknownGroup(group, this.vmGroups);
    return g;
  }

  /** The name of the group an API or CLI input names (its name, or its index in the config); UnknownGroup when none. */
  resolveGroup(ref: GroupRef): string {
    const name = groupNameOf(this.config.groups, ref);
    if (name === null) throw new UnknownGroup(ref, this.vmGroups);
    return name;
  }

  /** The group's index in the config's list (the API's alias), or null when the config no longer has it. */
  groupIndex(group: string): number | null {
    return groupIndexOf(this.config.groups, group);
  }
}
