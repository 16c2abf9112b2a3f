/** What the operator surfaces (HTTP API, pool page, CLI) show of the pool. */
import type { Config } from './config.js';
import { isScheduled, minReadyAt } from './reconcile/minReady.js';
import { ALL_VM_STATES, UnknownGroup, type VmRecord, type VmState } from './pool/types.js';

export { UnknownGroup };
import type { VmManager } from './pool/vmManager.js';

/** A group by id or by name; UnknownGroup otherwise. */
export function resolveGroup(config: Config, value: string): number {
  const byName = config.groups.findIndex((g) => g.name === value);
  if (byName !== -1) return byName;
  const id = Number(value);
  if (/^\d+$/.test(value) && config.groups[id]) return id;
  throw new UnknownGroup(value, `unknown group ${JSON.stringify(value)}; groups: ${config.groups.map((g, i) => `${i} (${g.name})`).join(', ')}`);
}

/** A VM record without what only the pool needs (its lease id and check sequence). */
export function withoutLease(vm: VmRecord): Omit<VmRecord, 'leaseId' | 'checkSeq'> {
  const { leaseId: _leaseId, checkSeq: _checkSeq, ...rest } = vm;
  return rest;
}

export interface GroupSummary {
  id: number;
  name: string;
  archs: string[];
  tags: string[];
  limits: { max_vm_total: number; max_vm_per_user: number; max_spawn_processes: number };
  /** Warm pool target: clean ready VMs kept waiting. */
  minReady: number;
  counts: Record<VmState, number>;
  total: number;
  held: number;
  /** Whether min_ready follows a schedule (minReady is then the value in force now). */
  minReadyScheduled: boolean;
  /** Ready VMs bound to nobody (what min_ready counts). */
  readyClean: number;
  demand: number;
  spawnsInFlight: number;
  /**
   * Whether the group spawns nothing: drained at run time (`vmpool drain`, drainedSince) or by its
   * config (max_vm_total: 0). Its VMs are still served and retired by their timeouts.
   */
  drained: boolean;
  /** When `vmpool drain` drained it (epoch ms), or null. */
  drainedSince: number | null;
}

/** Per-group summary: limits from the config, counts from the state indexes, demand and spawns from Redis. */
export async function groupSummaries(vmm: VmManager, records?: VmRecord[]): Promise<GroupSummary[]> {
  const vms = records ?? (await vmm.getAllVmRecords());
  const out: GroupSummary[] = [];
  for (const id of vmm.vmGroups) {
    const g = vmm.groupConfig(id);
    const mine = vms.filter((v) => v.group === id);
    const counts = Object.fromEntries(ALL_VM_STATES.map((s) => [s, 0])) as Record<VmState, number>;
    for (const v of mine) counts[v.state] += 1;
    const drainedSince = await vmm.drainedSince(id);
    out.push({
      id,
      name: g.name,
      archs: g.archs,
      tags: g.tags,
      limits: { max_vm_total: g.max_vm_total, max_vm_per_user: g.max_vm_per_user, max_spawn_processes: g.max_spawn_processes },
      minReady: minReadyAt(g.min_ready, vmm.clock()),
      minReadyScheduled: isScheduled(g.min_ready),
      counts,
      total: mine.length,
      held: mine.filter((v) => v.heldBy !== null).length,
      readyClean: mine.filter((v) => v.state === 'ready' && v.boundToUser === null && v.heldBy === null).length,
      demand: await vmm.countDemand(id),
      spawnsInFlight: (await vmm.getSpawnsInFlight(id)).length,
      drained: drainedSince !== null || g.max_vm_total === 0,
      drainedSince,
    });
  }
  return out;
}
