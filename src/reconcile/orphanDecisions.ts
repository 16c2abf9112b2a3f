import { VmStates, type VmState } from '../pool/types.js';
import type { ProviderMachine } from '../providers/types.js';

/** A pool VM as the leak check needs it. */
export interface OrphanPoolVm {
  name: string;
  ip: string;
  state: VmState;
  group: string;
  /** Epoch ms when it entered the pool, when known. */
  addedAt?: number | null;
}

export interface OrphanInput {
  /** The group whose provider produced `machines`. */
  group: string;
  /** This pool's identity: only machines tagged with it (ProviderMachine.pool) may be terminated. */
  poolId: string;
  /** Unknown machines tagged with no pool id that earlier passes already reported (names). */
  previousUntagged?: ReadonlySet<string>;
  /**
   * Pool VMs: a machine is known if any of them has its name (unless `knownNames` is given), and
   * the group's VMs among them are checked against the list. VmMaster passes only the group's VMs
   * the list misses, with `knownNames` and `groupVmCount`.
   */
  poolVms: readonly OrphanPoolVm[];
  /** Names of pool VMs of any group: at least every listed machine that is one. Absent: taken from poolVms. */
  knownNames?: ReadonlySet<string>;
  /** How many VMs the group has (counts.poolVms). Absent: counted from poolVms. */
  groupVmCount?: number;
  /** The provider's list for this group. */
  machines: readonly ProviderMachine[];
  /** Unknown machines of the previous pass: name -> epoch ms first seen. */
  previousUnknown: ReadonlyMap<string, number>;
  /** Pool VMs missing from the previous pass's list: name -> epoch ms first missed. */
  previousMissing: ReadonlyMap<string, number>;
  now: number;
  /** orphan_grace_period, in ms. */
  graceMs: number;
}

export interface OrphanDecision {
  /** Machines the pool does not know, seen on two passes in a row and older than the grace: terminate. */
  terminateMachines: ProviderMachine[];
  /**
   * Pool VMs (of this group) missing from this list and the previous one: mark and terminate, so
   * the record goes away.
   */
  terminateVms: OrphanPoolVm[];
  /** Unknown machines now, name -> first seen: the next pass's previousUnknown. */
  unknown: Map<string, number>;
  /** Pool VMs missing now and not skipped, name -> first missed: the next pass's previousMissing. */
  missing: Map<string, number>;
  /** Unknown machines that carry no pool id, left alone: the next pass's previousUntagged. */
  untagged: Set<string>;
  /** Those of `untagged` that no earlier pass reported: to log, once per machine. */
  newlyUntagged: ProviderMachine[];
  counts: {
    machines: number;
    poolVms: number;
    unknown: number;
    unknownTerminated: number;
    unknownWaiting: number;
    /** Unknown machines tagged with no pool id (left alone, reported once). */
    untagged: number;
    /** Unknown machines tagged with another pool's id (another pool's; left alone). */
    otherPools: number;
    missing: number;
    missingSkipped: number;
    /** Missing for the first time in a row: terminated if still missing on the next pass. */
    missingWaiting: number;
  };
}

/**
 * The leak and orphan pass (nodepool's leak cleanup, resalloc's cmd_list, Copr's cleanup_vm_nova),
 * as a pure function of the pool, the provider's list and the previous pass.
 *
 * - Only machines tagged with this pool's id are ever taken for leaks. An unknown machine with no
 *   pool id (a list hook that does not tag, a machine made by hand) or another pool's id (two pools
 *   sharing a host or a cloud tenant) is left alone; one without is reported once.
 * - An unknown machine is terminated only when it was unknown on the previous pass too and is older
 *   than the grace (by its created_at, else by when we first saw it): a spawn in flight has a machine
 *   before the pool has its record, and a single pass can race with it.
 * - A pool VM missing from the list is terminated only when it was missing from the previous pass
 *   too: a single list can miss a machine (a cloud API's eventual consistency, a page lost), and
 *   terminating an in_use VM mid-build for that would be costly. One already terminating is left
 *   alone, as is one in got_ip that entered the pool within the grace (or at an unknown time): the
 *   list may predate it. Neither counts as missed.
 */
export function decideOrphans(input: OrphanInput): OrphanDecision {
  const { now, graceMs } = input;
  const knownNames = input.knownNames ?? new Set(input.poolVms.map((v) => v.name));
  const listed = new Set(input.machines.map((m) => m.name));

  const unknown = new Map<string, number>();
  const terminateMachines: ProviderMachine[] = [];
  const untagged = new Set<string>();
  const newlyUntagged: ProviderMachine[] = [];
  let unknownWaiting = 0;
  let otherPools = 0;
  for (const machine of input.machines) {
    if (knownNames.has(machine.name) || unknown.has(machine.name) || untagged.has(machine.name)) continue;
    if (machine.pool !== input.poolId) {
      if (machine.pool) {
        otherPools++;
        continue;
      }
      untagged.add(machine.name);
      if (!input.previousUntagged?.has(machine.name)) newlyUntagged.push(machine);
      continue;
    }
    const previous = input.previousUnknown.get(machine.name);
    const firstSeen = previous ?? now;
    unknown.set(machine.name, firstSeen);
    const bornAt = machine.createdAt ?? firstSeen;
    if (previous !== undefined && now - bornAt >= graceMs) terminateMachines.push(machine);
    else unknownWaiting++;
  }

  const groupVms = input.poolVms.filter((v) => v.group === input.group);
  const terminateVms: OrphanPoolVm[] = [];
  const missing = new Map<string, number>();
  let missingSkipped = 0;
  let missingWaiting = 0;
  for (const vm of groupVms) {
    if (listed.has(vm.name)) continue;
    const young = vm.state === VmStates.GOT_IP && (vm.addedAt == null || now - vm.addedAt < graceMs);
    if (vm.state === VmStates.TERMINATING || young) {
      missingSkipped++;
      continue;
    }
    const previous = input.previousMissing.get(vm.name);
    missing.set(vm.name, previous ?? now);
    if (previous !== undefined) terminateVms.push(vm);
    else missingWaiting++;
  }

  return {
    terminateMachines,
    terminateVms,
    unknown,
    missing,
    untagged,
    newlyUntagged,
    counts: {
      machines: input.machines.length,
      poolVms: input.groupVmCount ?? groupVms.length,
      unknown: unknown.size,
      unknownTerminated: terminateMachines.length,
      unknownWaiting,
      untagged: untagged.size,
      otherPools,
      missing: terminateVms.length + missingSkipped + missingWaiting,
      missingSkipped,
      missingWaiting,
    },
  };
}

export interface LossSweepInput {
  /** Names of every pool VM (of every group), read after the provider's list. */
  poolVmNames: ReadonlySet<string>;
  /** The provider's list for the group. */
  machines: readonly ProviderMachine[];
  /** When the pool recovered from the loss of its state (epoch ms). */
  recoveredAt: number;
}

/**
 * The sweep after a loss of the pool's state (VmMaster.sweepAfterLoss): every machine the pool does
 * not know is terminated at once, without the orphan pass's two sightings and grace. Its record was
 * lost, or went back in time, so it may be a VM a builder still holds: it is never adopted and
 * handed out. A machine created after the recovery (when the provider says so) belongs to a spawn
 * since, and is left to the orphan pass.
 */
export function decideLossSweep(input: LossSweepInput): { terminate: ProviderMachine[]; spared: number } {
  const terminate: ProviderMachine[] = [];
  let spared = 0;
  const seen = new Set<string>();
  for (const machine of input.machines) {
    if (input.poolVmNames.has(machine.name) || seen.has(machine.name)) continue;
    seen.add(machine.name);
    if (machine.createdAt != null && machine.createdAt >= input.recoveredAt) spared++;
    else terminate.push(machine);
  }
  return { terminate, spared };
}
