/**
 * Scheduling and bookkeeping of the leak and orphan pass (VmMaster.cleanupOrphans), as pure
 * functions. What to terminate is decided by decideOrphans (orphanDecisions.ts).
 */

/** Per-group pool info key of the last orphan pass start (epoch ms). */
export const LAST_ORPHAN_CHECK = 'last_orphan_check';

/**
 * Whether a group's orphan pass is due: never with a period of 0; else on the first pass, once
 * `period` seconds passed since the last one (>=, as vm_spawn_min_interval), or when the last pass
 * lies in the future (the clock went back).
 */
export function isOrphanPassDue(lastPass: number | null, now: number, periodSeconds: number): boolean {
  if (!(periodSeconds > 0)) return false;
  if (lastPass === null) return true;
  return now - lastPass >= periodSeconds * 1000 || now < lastPass;
}

/** Reads a stored epoch ms (pool info value); anything else is null. */
export function parseEpochMs(value: string | null): number | null {
  if (value === null || value === '' || !/^\d+$/.test(value)) return null;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : null;
}

/**
 * A stored orphan-pass hash (unknown machines: name -> first seen; missing VMs: name -> first
 * missed; epoch ms) as a map; bad entries are dropped.
 */
export function parseUnknownMachines(hash: Record<string, string>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, value] of Object.entries(hash)) {
    const firstSeen = parseEpochMs(value);
    if (firstSeen !== null) out.set(name, firstSeen);
  }
  return out;
}
