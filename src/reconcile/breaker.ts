/**
 * The spawn circuit breaker of a group, as reconcile sees it. The transitions are one Lua script
 * (src/pool/commands/recordSpawnOutcome-1.lua), run by the spawn processor for every attempt; the
 * decision here is pure: while the breaker is open nothing is spawned, and once its backoff passed
 * one spawn (the probe) may run, whose outcome closes or re-opens it.
 */
import type { GroupConfig } from '../config/index.js';
import { OPERATOR_CLASSES, type SpawnFailureClass } from '../providers/spawnErrors.js';

export interface BreakerState {
  /** The class of the failures that opened it (or of the last failure, while still closed). */
  errorClass: string;
  /** Failures of that class in a row. */
  failures: number;
  /** Times it opened since it was last closed (the backoff doubles with each). */
  openings: number;
  open: boolean;
  openedAt: number | null;
  /** When the probe may run (epoch ms); null while open until an operator resets it. */
  openUntil: number | null;
  message: string | null;
}

export function breakerFromHash(h: Record<string, string>): BreakerState | null {
  if (!h.error_class) return null;
  const open = h.state === 'open';
  const until = Number(h.open_until ?? 0);
  return {
    errorClass: h.error_class,
    failures: Number(h.failures ?? 0),
    openings: Number(h.openings ?? 0),
    open,
    openedAt: open && h.opened_at ? Number(h.opened_at) : null,
    openUntil: open && h.manual !== '1' && until > 0 ? until : null,
    message: h.message ? h.message : null,
  };
}

/** The breaker's settings of a group (its `breaker` section, with the defaults). */
export function breakerPolicy(g: Pick<GroupConfig, 'breaker'>): { failures: number; backoff: number; maxBackoff: number } {
  return { failures: g.breaker?.failures ?? 3, backoff: g.breaker?.backoff ?? 60, maxBackoff: g.breaker?.max_backoff ?? 3600 };
}

export function needsOperator(errorClass: SpawnFailureClass): boolean {
  return (OPERATOR_CLASSES as readonly string[]).includes(errorClass);
}

/**
 * What the breaker lets reconcile spawn now: `any` (closed), `none` (open, backing off or waiting
 * for an operator), or `probe` (open, its backoff passed: one spawn, when none is in flight).
 */
export function breakerGate(b: BreakerState | null | undefined, now: number): 'any' | 'none' | 'probe' {
  if (!b || !b.open) return 'any';
  if (b.openUntil === null || now < b.openUntil) return 'none';
  return 'probe';
}

/** Whether the group's breaker keeps it from spawning now (open, and not waiting for its probe). */
export function breakerOpen(b: BreakerState | null | undefined, now: number): boolean {
  return breakerGate(b, now) !== 'any';
}
