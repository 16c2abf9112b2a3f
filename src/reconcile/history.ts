/**
 * The pool's recent history, for the pool page's charts: reconcile takes one sample per group per
 * HISTORY_PERIOD_MS from the state indexes and counters (never a scan of the VMs), and the pool
 * keeps the last HISTORY_SAMPLES of each group. These are the pure parts.
 */
import type { VmState } from '../pool/types.js';

/** One sample per group per minute. */
export const HISTORY_PERIOD_MS = 60_000;
/** Samples kept per group: two hours at one a minute (the page draws the last hour). */
export const HISTORY_SAMPLES = 120;

export interface HistorySample {
  /** When it was taken (epoch ms). */
  t: number;
  /** VMs of the group per state. */
  counts: Record<VmState, number>;
  /** Acquire requests waiting for the group. */
  waiting: number;
  /**
   * The 95th percentile of the acquire waits that ended since the previous sample, in seconds, over
   * the whole pool (the acquire wait histogram has no group); null when none ended.
   */
  acquireP95: number | null;
}

/** The acquire wait histogram's cumulative bucket counts at the last sample, to diff the next one against. */
export interface AcquireWaitMark {
  t: number;
  /** Cumulative counts per bucket (the last one +Inf), assigned acquires only. */
  buckets: number[];
}

/** Whether a sample is due: none yet, a period passed, or the last one lies in the future (the clock went back). */
export function isHistoryDue(last: number | null, now: number, periodMs = HISTORY_PERIOD_MS): boolean {
  return last === null || now - last >= periodMs || now < last;
}

/**
 * The q-quantile of the observations between two cumulative bucket snapshots, as Prometheus's
 * histogram_quantile: linear within the bucket it falls in; in the +Inf bucket, the highest finite
 * bound. Null when nothing was observed between them (or the counts went back: a reset).
 */
export function quantileBetween(bounds: readonly number[], before: readonly number[] | null, after: readonly number[], q: number): number | null {
  const delta = after.map((n, i) => n - (before?.[i] ?? 0));
  if (delta.some((d) => d < 0)) return quantileBetween(bounds, null, after, q);
  const total = delta.at(-1) ?? 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < delta.length; i++) {
    if (delta[i]! < rank) continue;
    if (i >= bounds.length) return bounds.at(-1) ?? null;
    const lower = i === 0 ? 0 : bounds[i - 1]!;
    const below = i === 0 ? 0 : delta[i - 1]!;
    const inBucket = delta[i]! - below;
    return inBucket > 0 ? lower + (bounds[i]! - lower) * ((rank - below) / inBucket) : bounds[i]!;
  }
  return bounds.at(-1) ?? null;
}

/** Parses stored samples, dropping anything that is not one (newest first, as stored). */
export function parseHistory(raw: readonly string[]): HistorySample[] {
  const out: HistorySample[] = [];
  for (const text of raw) {
    try {
      const s = JSON.parse(text) as HistorySample;
      if (typeof s?.t === 'number' && s.counts && typeof s.counts === 'object' && typeof s.waiting === 'number') out.push(s);
    } catch {
      // Not a sample.
    }
  }
  return out;
}

/** Parses a stored AcquireWaitMark; anything else is null. */
export function parseAcquireWaitMark(raw: string | null): AcquireWaitMark | null {
  if (raw === null) return null;
  try {
    const m = JSON.parse(raw) as AcquireWaitMark;
    return typeof m?.t === 'number' && Array.isArray(m.buckets) && m.buckets.every((n) => typeof n === 'number') ? m : null;
  } catch {
    return null;
  }
}
