import type { Config, GroupConfig } from '../config/index.js';
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

  /** Group ids: indexes into config.groups. */
  get vmGroups(): number[] {
    return this.config.groups.map((_, i) => i);
  }

  /** The config of a group; UnknownGroup when the config has no such group. */
  groupConfig(group: number): GroupConfig {
    const g = Number.isInteger(group) ? this.config.groups[group] : undefined;
    if (!g) throw new UnknownGroup(group, this.config.groups.length);
    return g;
  }
}
