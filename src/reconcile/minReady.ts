import { CronExpressionParser, type CronExpression } from 'cron-parser';

/**
 * The warm-pool size of a group (`min_ready`) at a moment: a number, or a schedule of periods. A
 * period is a 5-field cron expression in a time zone; every minute it matches is inside it. The
 * first period that matches gives the value, else the default.
 */
export interface MinReadyPeriod {
  cron: string;
  tz: string;
  value: number;
}

export interface MinReadySchedule {
  default: number;
  periods: MinReadyPeriod[];
}

export type MinReady = number | MinReadySchedule;

/** Why a cron expression or time zone is not usable, or null. */
export function cronProblem(cron: string, tz: string): string | null {
  if (cron.trim().split(/\s+/).length !== 5) return 'a cron expression of 5 fields (minute hour day-of-month month day-of-week)';
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
  } catch {
    return `a time zone such as UTC or Europe/Prague (not ${JSON.stringify(tz)})`;
  }
  try {
    CronExpressionParser.parse(cron, { tz });
  } catch (err) {
    return `a valid cron expression (${(err as Error).message})`;
  }
  return null;
}

const parsed = new Map<string, CronExpression>();

function expression(p: MinReadyPeriod): CronExpression {
  const key = `${p.tz}\u0000${p.cron}`;
  let e = parsed.get(key);
  if (!e) {
    e = CronExpressionParser.parse(p.cron, { tz: p.tz });
    parsed.set(key, e);
  }
  return e;
}

/** The period in force at `now` (epoch ms), or null when the default applies. */
export function periodAt(schedule: MinReadySchedule, now: number): MinReadyPeriod | null {
  const minute = new Date(Math.floor(now / 60_000) * 60_000);
  return schedule.periods.find((p) => expression(p).includesDate(minute)) ?? null;
}

/** The effective min_ready of a group at `now`. */
export function minReadyAt(minReady: MinReady, now: number): number {
  if (typeof minReady === 'number') return minReady;
  return periodAt(minReady, now)?.value ?? minReady.default;
}

export function isScheduled(minReady: MinReady): minReady is MinReadySchedule {
  return typeof minReady !== 'number';
}

/** The effective value over [from, from + hours), as runs of equal value (minute resolution). */
export function minReadyTimeline(minReady: MinReady, from: number, hours = 24): { from: number; to: number; value: number }[] {
  const start = Math.floor(from / 60_000) * 60_000;
  const end = start + hours * 3_600_000;
  const out: { from: number; to: number; value: number }[] = [];
  for (let t = start; t < end; t += 60_000) {
    const value = minReadyAt(minReady, t);
    const last = out.at(-1);
    if (last && last.value === value) last.to = t + 60_000;
    else out.push({ from: t, to: t + 60_000, value });
  }
  return out;
}
