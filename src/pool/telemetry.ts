import type { RedisConnection } from '../redis.js';
import { HISTORY_SAMPLES, parseHistory, type AcquireWaitMark, type HistorySample } from '../reconcile/history.js';
import { arrivalRateFromBuckets, type TargetWaitMeasure } from '../reconcile/targetWait.js';
import type { PoolContext } from './context.js';
import { poolKeys } from './keys.js';

/** One change to a shared metric's hash (src/metrics/shared.ts decides the metric and the fields). */
export interface MetricIncrement {
  /** The metric's key (SharedMetricDef.key). */
  metric: string;
  field: string;
  by: number;
  /** A float increment (a histogram's sum). */
  float?: boolean;
}

/**
 * Adds the increments to the shared metrics' hashes, in one pipeline. Worker processes call it
 * (through recordJobMetrics) on their own connection; the keys are the pool's.
 */
export async function writeSharedMetrics(redis: RedisConnection, prefix: string, increments: readonly MetricIncrement[]): Promise<void> {
  if (increments.length === 0) return;
  const keys = poolKeys(prefix);
  const pipeline = redis.pipeline();
  for (const i of increments) {
    if (i.float) pipeline.hincrbyfloat(keys.metric(i.metric), i.field, i.by);
    else pipeline.hincrby(keys.metric(i.metric), i.field, i.by);
  }
  await pipeline.exec();
}

/**
 * Minutes of arrivals a group without target_wait keeps (the acquire scripts count arrivals in every
 * group): a day, so that a target_wait turned on later, with a window of up to a day, measures at once.
 */
export const ARRIVALS_KEPT_WITHOUT_TARGET_WAIT = 24 * 60;
/** Minutes beyond those that may pile up before a trim. */
export const ARRIVALS_TRIM_SLACK = 60;

/**
 * What the pool records about itself beside its VMs: the groups' history samples, the arrivals and
 * boot times that target_wait sizes from, the orphan pass's state, and the audit trail's retention.
 */
export class Telemetry {
  constructor(private readonly ctx: PoolContext) {}

  /** See VmManager.measureTargetWait. */
  async measureTargetWait(group: string, windowMs: number): Promise<TargetWaitMeasure & { bootSamples: number }> {
    this.ctx.groupConfig(group);
    const now = this.ctx.clock();
    const [buckets, boot] = await Promise.all([this.ctx.reader.arrivals(group), this.ctx.reader.bootTime(group)]);
    const firstMinute = Math.floor((now - windowMs) / 60_000) + 1;
    // The acquire scripts count arrivals; the same include (includes/arrivals.lua) trims them.
    if ([...buckets.keys()].some((m) => m < firstMinute)) await this.ctx.scripts.trimArrivals(group, firstMinute);
    return { arrivalRate: arrivalRateFromBuckets(buckets, now, windowMs), bootMs: boot.emaMs, bootSamples: boot.samples };
  }

  /**
   * See VmManager.trimUnmeasuredArrivals: a group without target_wait keeps at most
   * ARRIVALS_KEPT_WITHOUT_TARGET_WAIT + ARRIVALS_TRIM_SLACK minutes of arrivals. One HLEN a cycle;
   * a trim (HKEYS of the hash) only once the slack is used up, so its cost is spread over the minutes
   * it drops.
   */
  async trimUnmeasuredArrivals(group: string): Promise<number> {
    this.ctx.groupConfig(group);
    if ((await this.ctx.redis.hlen(this.ctx.keys.arrivals(group))) <= ARRIVALS_KEPT_WITHOUT_TARGET_WAIT + ARRIVALS_TRIM_SLACK) return 0;
    const firstMinute = Math.floor(this.ctx.clock() / 60_000) - ARRIVALS_KEPT_WITHOUT_TARGET_WAIT + 1;
    return this.ctx.scripts.trimArrivals(group, firstMinute);
  }

  /** See VmManager.appendHistory. */
  async appendHistory(samples: ReadonlyMap<string, HistorySample>, mark: AcquireWaitMark, keep: number): Promise<void> {
    const { keys } = this.ctx;
    const tx = this.ctx.redis.multi();
    for (const [group, sample] of samples) {
      this.ctx.groupConfig(group);
      tx.lpush(keys.history(group), JSON.stringify(sample)).ltrim(keys.history(group), 0, keep - 1);
    }
    tx.set(keys.historyAcquire, JSON.stringify(mark));
    await tx.exec();
  }

  /** The group's history samples of the last `sinceMs` (oldest first), for the pool page. */
  async readHistory(group: string, sinceMs: number, limit = HISTORY_SAMPLES): Promise<HistorySample[]> {
    this.ctx.groupConfig(group);
    const from = this.ctx.clock() - sinceMs;
    return parseHistory(await this.ctx.reader.history(group, limit))
      .filter((s) => s.t >= from)
      .reverse();
  }

  /** Replaces what the group's orphan pass keeps for the next one (read it with reader.orphanPassState). */
  async replaceOrphanPassState(
    group: string,
    state: { unknown: Record<string, string | number>; missing: Record<string, string | number>; untagged?: readonly string[] },
  ): Promise<void> {
    const unknownKey = this.ctx.keys.orphanUnknown(group);
    const missingKey = this.ctx.keys.orphanMissing(group);
    const untaggedKey = this.ctx.keys.orphanUntagged(group);
    const tx = this.ctx.redis.multi().del(unknownKey, missingKey, untaggedKey);
    if (Object.keys(state.unknown).length > 0) tx.hset(unknownKey, state.unknown);
    if (Object.keys(state.missing).length > 0) tx.hset(missingKey, state.missing);
    if (state.untagged && state.untagged.length > 0) tx.sadd(untaggedKey, ...state.untagged);
    await tx.exec();
  }

  /** See VmManager.writeAuditRetention. */
  async writeAuditRetention(): Promise<void> {
    const max = this.ctx.config.audit?.max_events;
    if (max === undefined) await this.ctx.redis.del(this.ctx.keys.auditMaxEvents);
    else await this.ctx.redis.set(this.ctx.keys.auditMaxEvents, String(max));
  }
}
