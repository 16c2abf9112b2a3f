/** "just now", "5 seconds ago", "2 minutes ago", "in 3 hours": for tables and the pool page. */
export function relativeTime(then: number | null, now: number): string {
  if (then === null || !Number.isFinite(then)) return '-';
  const diff = Math.round((now - then) / 1000);
  const abs = Math.abs(diff);
  if (abs < 2) return 'just now';
  const units: [number, string][] = [
    [86400, 'day'],
    [3600, 'hour'],
    [60, 'minute'],
    [1, 'second'],
  ];
  for (const [size, unit] of units) {
    if (abs >= size) {
      const n = Math.floor(abs / size);
      const text = `${n} ${unit}${n === 1 ? '' : 's'}`;
      return diff >= 0 ? `${text} ago` : `in ${text}`;
    }
  }
  return 'just now';
}

/** A duration such as `90s`, `30m`, `2h`, `1d` or `45` (seconds), in ms; null when it is not one. */
export function parseDuration(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$/.exec(text.trim());
  if (!m) return null;
  const ms = Number(m[1]) * { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
  return ms > 0 ? ms : null;
}
