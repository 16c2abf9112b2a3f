/**
 * Warm pool by target wait: the smallest `min_ready` for which a chosen percentile of acquires is
 * served within the target, from the measured arrival rate and spawn-to-ready (boot) time.
 *
 * The model is the (S-1, S) base-stock policy with a deterministic lead time: every acquire that
 * takes a clean VM makes reconcile spawn one, which is ready L seconds later (the boot time plus at
 * most one reconcile period). With k clean VMs kept ready and Poisson arrivals of rate λ, a request
 * is served from the k-th spawn requested before it, so it waits longer than T exactly when at
 * least k other requests arrived in the last L - T seconds:
 *
 *   P(wait > T) = P(Poisson(λ · (L - T)) >= k)
 *
 * The warm pool is the smallest k that keeps this at or below 1 - percentile, within
 * [min_ready_floor, min_ready_ceiling]. Pure: no Redis, no clock.
 */
import { targetWaitPercentiles, type GroupConfig } from '../config/index.js';
import { isScheduled, minReadyAt } from './minReady.js';

export interface TargetWaitInputs {
  /** Acquire requests per second for the group, measured over the window. */
  arrivalRate: number;
  /** Measured spawn-to-ready time in ms (an exponential moving average), or null before the first VM. */
  bootMs: number | null;
  /** The target wait in seconds, and the share of acquires that must meet it (0.95 for p95). */
  targetSeconds: number;
  percentile: number;
  /** Seconds a spawn may wait for the next reconcile cycle (vm_cycle_timeout). */
  cycleSeconds: number;
  floor: number;
  ceiling: number;
}

export interface TargetWaitDecision {
  /** The resulting warm-pool size. */
  minReady: number;
  /** Requests per minute the decision used. */
  arrivalsPerMinute: number;
  /** Boot time in seconds the decision used (the default before the first measurement). */
  bootSeconds: number;
  /** Whether bootSeconds is a measurement (false: the default guess). */
  bootMeasured: boolean;
  /** The probability (0..1) that a request waits longer than the target with minReady VMs ready. */
  lateShare: number;
}

/** The boot time assumed before any VM of the group became ready. */
export const DEFAULT_BOOT_SECONDS = 60;

/** P(N >= k) for N ~ Poisson(mean). */
export function poissonTail(mean: number, k: number): number {
  if (k <= 0) return 1;
  if (mean <= 0) return 0;
  if (mean > 600) {
    // exp(-mean) underflows; the normal approximation is exact enough at this size.
    const z = (k - 0.5 - mean) / Math.sqrt(mean);
    return 0.5 * erfc(z / Math.SQRT2);
  }
  let term = Math.exp(-mean);
  let cdf = term;
  for (let i = 1; i < k; i++) {
    term *= mean / i;
    cdf += term;
  }
  return Math.max(0, 1 - cdf);
}

/** Complementary error function (Numerical Recipes' erfcc, relative error < 1.2e-7). */
function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? r : 2 - r;
}

export function decideTargetWait(input: TargetWaitInputs): TargetWaitDecision {
  const bootMeasured = input.bootMs !== null && Number.isFinite(input.bootMs) && input.bootMs >= 0;
  const bootSeconds = bootMeasured ? input.bootMs! / 1000 : DEFAULT_BOOT_SECONDS;
  const rate = Number.isFinite(input.arrivalRate) && input.arrivalRate > 0 ? input.arrivalRate : 0;
  const exposure = Math.max(0, bootSeconds + input.cycleSeconds - input.targetSeconds);
  const mean = rate * exposure;
  const allowed = 1 - input.percentile;
  const floor = Math.max(0, Math.floor(input.floor));
  const ceiling = Math.max(floor, Math.floor(input.ceiling));
  // With no exposure a fresh spawn meets the target; otherwise k = 0 makes every request late.
  const late = (k: number) => (exposure <= 0 ? 0 : poissonTail(mean, k));
  let k = floor;
  while (k < ceiling && late(k) > allowed) k++;
  return { minReady: k, arrivalsPerMinute: rate * 60, bootSeconds, bootMeasured, lateShare: late(k) };
}

/** Per-minute arrival counts (minute number → count) as the window's rate in requests per second. */
export function arrivalRateFromBuckets(buckets: ReadonlyMap<number, number>, now: number, windowMs: number): number {
  const thisMinute = Math.floor(now / 60_000);
  const firstMinute = Math.floor((now - windowMs) / 60_000) + 1;
  let count = 0;
  for (const [minute, n] of buckets) {
    if (minute >= firstMinute && minute <= thisMinute) count += n;
  }
  // The window covers the whole minutes before this one, and this minute up to now.
  const coveredMs = (thisMinute - firstMinute) * 60_000 + (now - thisMinute * 60_000);
  return coveredMs > 0 ? count / (coveredMs / 1000) : 0;
}

/** The next exponential moving average of the boot time (weight of the new sample: alpha). */
export function nextBootEma(previous: number | null, sampleMs: number, alpha = 0.2): number {
  return previous === null ? sampleMs : previous + alpha * (sampleMs - previous);
}

/** What reconcile measured for a group's target_wait (GroupSnapshot). */
export interface TargetWaitMeasure {
  arrivalRate: number;
  bootMs: number | null;
}

type TargetWaitConfig = NonNullable<GroupConfig['target_wait']>;

/** The percentile a target_wait names, as its seconds and share: { p95: 30 } → 30 s at 0.95. */
export function targetOf(t: TargetWaitConfig): { seconds: number; percentile: number; name: string } {
  for (const name of targetWaitPercentiles) {
    const seconds = t[name];
    if (seconds !== undefined) return { seconds, percentile: Number(name.slice(1)) / 100, name };
  }
  throw new Error('target_wait names no percentile');
}

/** The target-wait decision of a group, or null when it keeps a fixed or scheduled min_ready. */
export function targetWaitDecision(g: GroupConfig, measured: TargetWaitMeasure | undefined, cycleSeconds: number): TargetWaitDecision | null {
  if (!g.target_wait) return null;
  const target = targetOf(g.target_wait);
  return decideTargetWait({
    arrivalRate: measured?.arrivalRate ?? 0,
    bootMs: measured?.bootMs ?? null,
    targetSeconds: target.seconds,
    percentile: target.percentile,
    cycleSeconds,
    floor: g.min_ready_floor ?? 0,
    ceiling: g.min_ready_ceiling ?? g.max_vm_total,
  });
}

/** The warm-pool size of a group at `now`: by target wait, by schedule, or fixed. */
export function warmPoolSize(g: GroupConfig, measured: TargetWaitMeasure | undefined, now: number, cycleSeconds: number): number {
  return targetWaitDecision(g, measured, cycleSeconds)?.minReady ?? minReadyAt(g.min_ready, now);
}

/** Whether the warm pool's size changes over time, so that surplus ready VMs are retired. */
export function warmPoolVaries(g: GroupConfig): boolean {
  return g.target_wait !== undefined || isScheduled(g.min_ready);
}
