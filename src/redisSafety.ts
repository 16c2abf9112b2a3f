import type { RedisConnection } from './redis.js';
import type { Config } from './config/index.js';
import type { Logger } from './logger.js';
import type { RedisPersistence } from './pool/stateLoss.js';

/**
 * Redis settings that decide whether vmpool's state survives a Redis restart or memory pressure.
 * Each unsafe one is a finding with what happens and how to fix it; docs/redis.md ("Running Redis
 * for vmpool") explains them.
 */
export interface RedisSafetyFinding {
  setting: string;
  value: string;
  problem: string;
  fix: string;
}

const FSYNC_STRENGTH = { no: 0, everysec: 1, always: 2 } as const;

/** CONFIG GET of one setting, or null when the server does not allow CONFIG (managed Redis). */
async function configGet(redis: RedisConnection, name: string): Promise<string | null> {
  try {
    const reply = (await redis.call('CONFIG', 'GET', name)) as string[] | Record<string, string>;
    if (Array.isArray(reply)) return reply[1] ?? null;
    return reply[name] ?? null;
  } catch {
    return null;
  }
}

/**
 * Redis's persistence as it runs now, for the pool state watch (src/pool/stateLoss.ts provesNoLoss):
 * null for what the server does not show.
 */
export async function readPersistence(redis: RedisConnection): Promise<RedisPersistence> {
  const [appendonly, appendfsync, replication] = await Promise.all([
    configGet(redis, 'appendonly'),
    configGet(redis, 'appendfsync'),
    redis.info('replication').catch(() => ''),
  ]);
  const offset = /second_repl_offset:(-?\d+)/.exec(replication)?.[1];
  return { appendonly, appendfsync, promoted: offset === undefined ? null : offset !== '-1' };
}

/** Reads Redis's settings and returns what is unsafe for vmpool (empty when all is well). */
export async function checkRedisSafety(redis: RedisConnection, wanted: Pick<Config['redis'], 'appendfsync'>): Promise<RedisSafetyFinding[]> {
  const findings: RedisSafetyFinding[] = [];
  const policy = await configGet(redis, 'maxmemory-policy');
  const aof = await configGet(redis, 'appendonly');
  const fsync = await configGet(redis, 'appendfsync');
  if (policy === null && aof === null) {
    return [
      {
        setting: 'CONFIG',
        value: 'not allowed',
        problem: 'the server does not let vmpool read its settings, so their safety is unknown',
        fix: 'check by hand that maxmemory-policy is noeviction and AOF is on (see "Running Redis for vmpool")',
      },
    ];
  }
  if (policy !== null && policy !== 'noeviction') {
    findings.push({
      setting: 'maxmemory-policy',
      value: policy,
      problem: 'under memory pressure Redis evicts keys: VM records, leases and queued jobs vanish, and machines leak',
      fix: 'CONFIG SET maxmemory-policy noeviction (and in redis.conf)',
    });
  }
  if (aof !== null && aof !== 'yes') {
    findings.push({
      setting: 'appendonly',
      value: aof,
      problem: 'a restart loses every write since the last RDB snapshot (all of them without one): vmpool then replaces every VM it cannot account for',
      fix: 'CONFIG SET appendonly yes (and in redis.conf)',
    });
  } else if (fsync !== null && fsync in FSYNC_STRENGTH && FSYNC_STRENGTH[fsync as keyof typeof FSYNC_STRENGTH] < FSYNC_STRENGTH[wanted.appendfsync ?? 'everysec']) {
    findings.push({
      setting: 'appendfsync',
      value: fsync,
      problem: `weaker than redis.appendfsync: ${wanted.appendfsync ?? 'everysec'} asks: a crash may lose acknowledged assignments and releases`,
      fix: `CONFIG SET appendfsync ${wanted.appendfsync ?? 'everysec'}`,
    });
  }
  const replication = await redis.info('replication').catch(() => '');
  const slaves = Number(/connected_slaves:(\d+)/.exec(replication)?.[1] ?? 0);
  if (/role:master/.test(replication) && slaves > 0) {
    const minReplicas = await configGet(redis, 'min-replicas-to-write');
    if (minReplicas !== null && Number(minReplicas) < 1) {
      findings.push({
        setting: 'min-replicas-to-write',
        value: minReplicas,
        problem: 'a failover may promote a replica that missed acknowledged writes: a VM a builder holds could be handed out again',
        fix: 'CONFIG SET min-replicas-to-write 1 (with min-replicas-max-lag 10)',
      });
    }
  }
  return findings;
}

/** Thrown when redis.require_safe is set and Redis's settings are unsafe. */
export class UnsafeRedis extends Error {
  constructor(readonly findings: RedisSafetyFinding[]) {
    super(`Redis is not safe for vmpool (redis.require_safe): ${findings.map((f) => `${f.setting} is ${f.value}: ${f.problem}; fix: ${f.fix}`).join('; ')}`);
    this.name = 'UnsafeRedis';
  }
}

/**
 * At a process's start: logs each unsafe setting as a warning, or, with redis.require_safe,
 * throws UnsafeRedis.
 */
export async function ensureRedisSafety(redis: RedisConnection, config: Pick<Config['redis'], 'appendfsync' | 'require_safe'>, logger: Logger): Promise<RedisSafetyFinding[]> {
  const findings = await checkRedisSafety(redis, config);
  if (findings.length > 0 && config.require_safe === true) throw new UnsafeRedis(findings);
  for (const f of findings) logger.warn({ setting: f.setting, value: f.value, fix: f.fix }, `Redis is unsafe for vmpool: ${f.problem}`);
  return findings;
}
