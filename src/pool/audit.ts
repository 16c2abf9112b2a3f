/**
 * The audit trail: every lifecycle event of a VM, in a capped Redis stream that the pool scripts
 * write in the same script as the transition (commands/includes/audit.lua).
 */

/** The events, in the order a VM usually meets them. */
export const auditEventTypes = [
  'spawned',
  'ready',
  'check_failed',
  'acquired',
  'reattached',
  'lease_renewed',
  'released',
  'lease_expired',
  'held',
  'unheld',
  'terminate_requested',
  'removed',
] as const;
export type AuditEventType = (typeof auditEventTypes)[number];

/** How many events the trail keeps when audit.max_events is not set (as includes/audit.lua). */
export const DEFAULT_AUDIT_MAX_EVENTS = 100_000;

/** One event of the trail. Fields the VM did not have at the time are null. */
export interface AuditEvent {
  /** The stream entry id (`<ms>-<seq>`): a cursor for `since`. */
  id: string;
  event: AuditEventType;
  vm: string;
  /** When it was recorded, epoch ms: the id's first part (Redis's clock, one for every process). */
  time: number;
  group: string | null;
  owner: string | null;
  sandbox: string | null;
  task: string | null;
  lease: string | null;
  /** Why: a termination reason, a hold's reason, a check that never reported back, a release because the request was withdrawn (`withdrawn`). */
  reason: string | null;
  /** More of what the event says, when it has it: by (held), until (held), worker (acquired), ip (spawned), check_fails (check_failed), detail (check_failed at hand-over: what the check said), lease_expires_at (lease_renewed), action (lease_expired). */
  details: Record<string, string>;
}

/** Filters and paging of an audit trail read. */
export interface AuditQuery {
  /** Events after this entry id (exclusive), or at or after this time (epoch ms, a number or digits). */
  since?: string | number | null;
  /** At most this many events (default 100, at most 1000). */
  limit?: number;
  vm?: string | null;
  owner?: string | null;
}

export interface AuditPage {
  events: AuditEvent[];
  /**
   * Where the read stopped (the last entry looked at): pass it as `since` for the next page, or later
   * for the events recorded since. The `since` given when nothing was read; null for an empty trail.
   */
  next: string | null;
  /** Whether more events were there when read (a full page, or the scan's bound reached under filters). */
  more: boolean;
}

export const AUDIT_PAGE_MAX = 1000;
/** At most this many entries are looked at per read, so a filter that matches little stays bounded. */
export const AUDIT_SCAN_MAX = 10_000;

const STREAM_ID = /^\d{1,20}-\d{1,20}$/;
const EPOCH_MS = /^\d{1,16}$/;

/** Whether a `since` value is a stream entry id or an epoch ms. */
export function isAuditCursor(since: string): boolean {
  return STREAM_ID.test(since) || EPOCH_MS.test(since);
}

/** XRANGE start for a `since` value: exclusive for an entry id, inclusive for a time. */
export function auditRangeStart(since: string | number | null | undefined): string {
  if (since === null || since === undefined || since === '') return '-';
  const text = String(since);
  if (STREAM_ID.test(text)) return `(${text}`;
  if (EPOCH_MS.test(text)) return text;
  throw new RangeError(`since must be an event id (<ms>-<seq>) or a time in epoch ms, not ${JSON.stringify(text)}`);
}

const MAIN_FIELDS = new Set(['event', 'vm', 'group', 'owner', 'sandbox', 'task', 'lease', 'reason']);

/** An event from a stream entry (id and flat field list, as XRANGE gives them). */
export function auditEventFromEntry(id: string, flat: readonly string[]): AuditEvent {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) f[flat[i]!] = flat[i + 1]!;
  const details: Record<string, string> = {};
  for (const [k, v] of Object.entries(f)) if (!MAIN_FIELDS.has(k)) details[k] = v;
  return {
    id,
    event: f.event as AuditEventType,
    vm: f.vm ?? '',
    time: Number(id.split('-')[0]),
    group: f.group ?? null,
    owner: f.owner ?? null,
    sandbox: f.sandbox ?? null,
    task: f.task ?? null,
    lease: f.lease ?? null,
    reason: f.reason ?? null,
    details,
  };
}
