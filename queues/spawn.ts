import type { JobsOptions, Queue } from 'bullmq';
import { z } from 'zod';
import { GROUP_NAME_PATTERN } from '../src/config/schemas.js';
import { QueueNames } from './names.js';

export const SPAWN_QUEUE = QueueNames.SPAWN;

/** One spawn of one machine into a group. spawnId is also the entry in the group's spawns in flight. */
export const spawnJobSchema = z.strictObject({
  /** The group's name; a number is the index that a version-1 producer wrote, read through the pool's recorded map (keys.legacyGroupNames). */
  group: z.union([z.string().regex(GROUP_NAME_PATTERN, 'a group name'), z.number().int().nonnegative()]),
  spawnId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, 'a spawn id'),
  /** Why the spawn was requested (warm pool, demand, copr_max), for logs and metrics. */
  reason: z.string().max(64).optional(),
});
export type SpawnJobData = z.input<typeof spawnJobSchema>;
export type SpawnJobResult = { vmName: string; vmIp: string; group: string };

export const spawnJobOptions: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 5_000 },
  removeOnComplete: { age: 24 * 3600, count: 10_000 },
  removeOnFail: { age: 7 * 24 * 3600, count: 10_000 },
};

export function spawnJobId(spawnId: string): string {
  return `spawn-${spawnId}`;
}

/** Adds the spawn job of a spawn in flight, with the default options. */
export async function addSpawnJob(queue: Queue, data: SpawnJobData): Promise<void> {
  await queue.add('spawn', data, { ...spawnJobOptions, jobId: spawnJobId(data.spawnId) });
}
