import type { JobsOptions, Queue } from 'bullmq';
import { z } from 'zod';
import { VM_NAME_PATTERN } from '../src/pool/types.js';
import { GROUP_NAME_PATTERN } from '../src/config/schemas.js';
import { QueueNames } from './names.js';

export const TERMINATE_QUEUE = QueueNames.TERMINATE;

/** Why a VM is being terminated; shown in job data and counted in metrics. */
export const terminationReasons = [
  'dirty_timeout',
  'health_check_failed',
  // The VM failed its group's check_on_acquire as it was about to be handed out.
  'check_on_acquire',
  'terminate_again',
  'lease_expired',
  'reuse_limit',
  'surplus',
  'spawn_failed',
  'orphan',
  'provider_lost',
  // Redis lost or rolled back the pool's state: the VM's record could not be proven current.
  'state_lost',
  'operator',
  // The VM was made by an older launch configuration of its group (a rolling update replaced it).
  'rollout',
  // The VM stayed ready, unused, longer than its group's max_ready_age.
  'max_ready_age',
  'other',
] as const;
export type TerminationReason = (typeof terminationReasons)[number];

export const terminateJobSchema = z.strictObject({
  vmName: z.string().regex(VM_NAME_PATTERN, 'a VM name'),
  reason: z.enum(terminationReasons).default('other'),
  /**
   * For a machine the pool has no record of (a leak found by the orphan check, or a spawn whose VM
   * could not be added): the provider is asked to terminate it directly in this group.
   */
  orphan: z
    .strictObject({
      /** The group's name; a number is the index that a version-1 producer wrote (read through the pool's recorded map). */
      group: z.union([z.string().regex(GROUP_NAME_PATTERN, 'a group name'), z.number().int().nonnegative()]),
      vmIp: z.string().nullable().default(null),
    })
    .optional(),
});
export type TerminateJobData = z.input<typeof terminateJobSchema>;
export type TerminateJobResult = { vmName: string; removed: boolean };

export const terminateJobOptions: JobsOptions = {
  attempts: 5,
  backoff: { type: 'exponential', delay: 2_000 },
  removeOnComplete: { age: 24 * 3600, count: 10_000 },
  removeOnFail: { age: 7 * 24 * 3600, count: 10_000 },
};

/**
 * One terminate job per termination request: the id changes with terminating_since, so that a
 * request repeated by terminateAgain is a new job while a duplicate add of the same one is not.
 */
export function terminateJobId(vmName: string, terminatingSince: number): string {
  return `terminate-${vmName}-${terminatingSince}`;
}

/**
 * The parts of a group's machine in a job id: each encoded with encodeURIComponent (which escapes
 * ':' and never writes '+') and joined by '+', so that distinct (group, machine) pairs give distinct
 * ids. Joined by '-', as before, group `a` with machine `b-c` and group `a-b` with machine `c` shared
 * one id, and the second leak was never terminated: its pass found the first's job done.
 */
function machineIdParts(group: string, machineName: string): string {
  return `${encodeURIComponent(group)}+${encodeURIComponent(machineName)}`;
}

/**
 * The terminate job of a machine swept after the recovery of `generation` (a loss of the pool's
 * state): one per machine and recovery.
 */
export function lossSweepTerminateJobId(group: string, machineName: string, generation: string): string {
  return `lost-g${machineIdParts(group, machineName)}+${encodeURIComponent(generation)}`;
}

/**
 * The terminate job of a leaked machine: one per machine and first sighting, so that later
 * passes do not add it again while it is being terminated.
 */
export function leakTerminateJobId(group: string, machineName: string, firstSeen: number): string {
  return `leak-g${machineIdParts(group, machineName)}+${firstSeen}`;
}

/** The terminate job a stopped spawn left for its machine: the spawn's next run settles it first. */
export function spawnStopTerminateJobId(spawnId: string, vmName: string): string {
  return `spawn-stop-${spawnId}-${vmName}`;
}

/** The terminate job of a spawned machine that never entered the pool, requested at `at` (epoch ms). */
export function spawnOrphanTerminateJobId(vmName: string, at: number): string {
  return `orphan-${vmName}-${at}`;
}

/** Adds a terminate job with the default options under the given id (one of the ids above). */
export async function addTerminateJob(queue: Queue, data: TerminateJobData, jobId: string): Promise<void> {
  await queue.add('terminate', data, { ...terminateJobOptions, jobId });
}
