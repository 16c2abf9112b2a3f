import { UnrecoverableError, type Job } from 'bullmq';
import { isValidVmIp, isValidVmName } from '../pool/types.js';
import { addressPolicy } from '../providers/addressPolicy.js';
import { SPAWN_QUEUE, spawnJobSchema, type SpawnJobResult } from '../../queues/spawn.js';
import { TERMINATE_QUEUE, addTerminateJob } from '../../queues/terminate.js';
import type { JobContext } from '../runtime/context.js';
import type { ProcessorSpec } from '../runtime/worker.js';
import type { z } from 'zod';

type SpawnData = z.output<typeof spawnJobSchema>;

function isFinalAttempt(job: Job): boolean {
  return job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
}

/**
 * Spawns one machine with the group's provider, validates what it returned, adds it to the pool
 * (got_ip) and enqueues its first health check. A machine that was created but cannot enter the
 * pool is terminated, so that nothing leaks.
 */
async function processSpawn(job: Job, data: SpawnData, ctx: JobContext): Promise<SpawnJobResult> {
  const { group, spawnId } = data;
  const groupConfig = ctx.config.groups[group];
  if (!groupConfig) {
    await ctx.vmm.finishSpawn(group, spawnId).catch(() => undefined);
    throw new UnrecoverableError(`unknown group ${group}`);
  }
  const log = (line: string) => job.log(line).then(() => undefined);
  const attempt = `attempt ${job.attemptsMade + 1} of ${job.opts.attempts ?? 1}`;
  await log(`spawn ${spawnId} in group ${group} (${groupConfig.name}), ${attempt}`);
  const started = ctx.clock();
  try {
    const machine = await ctx.provider(group).spawn({ group: { id: group, config: groupConfig, poolId: ctx.vmm.poolId }, spawnId, log });
    if (!isValidVmName(machine.name) || !isValidVmIp(machine.ip)) {
      const reason = `provider returned an invalid machine: name ${JSON.stringify(machine.name)}, ip ${JSON.stringify(machine.ip)}`;
      if (isValidVmName(machine.name)) await requestOrphanTermination(ctx, machine.name, group, null);
      throw new UnrecoverableError(reason);
    }
    const refusal = addressPolicy({ allowedNetworks: groupConfig.allowed_networks, allowLoopback: groupConfig.provider.type === 'local' }).refusal(machine.ip);
    if (refusal) {
      await log(`refused ${machine.name}: ${refusal}; terminating it`);
      await requestOrphanTermination(ctx, machine.name, group, machine.ip);
      throw new UnrecoverableError(`provider returned an unusable address for ${machine.name}: ${refusal}`);
    }
    try {
      await ctx.vmm.addVmToPool(machine.ip, machine.name, group);
    } catch (err) {
      // A duplicate name is another machine under a name the pool has: the terminate job ends it by
      // the name and address the hook printed, and leaves the pool's VM of that name alone.
      await log(`could not add ${machine.name} to the pool: ${(err as Error).message}; terminating it`);
      await requestOrphanTermination(ctx, machine.name, group, machine.ip);
      throw new UnrecoverableError(`spawned machine ${machine.name} could not enter the pool: ${(err as Error).message}`);
    }
    await ctx.vmm.enqueueHealthCheck(machine.name);
    await ctx.vmm.finishSpawn(group, spawnId);
    await log(`spawned ${machine.name} at ${machine.ip} in ${ctx.clock() - started} ms`);
    ctx.logger.info({ vmName: machine.name, vmIp: machine.ip, group, spawnId }, 'VM spawned');
    return { vmName: machine.name, vmIp: machine.ip, group };
  } catch (err) {
    await log(`spawn failed (${attempt}): ${(err as Error).message}`);
    if (err instanceof UnrecoverableError || isFinalAttempt(job)) await ctx.vmm.finishSpawn(group, spawnId);
    throw err;
  }
}

/** Terminates a machine the pool has no record of, through the terminate queue. */
export async function requestOrphanTermination(ctx: JobContext, vmName: string, group: number, vmIp: string | null): Promise<void> {
  await addTerminateJob(ctx.queue(TERMINATE_QUEUE), { vmName, reason: 'spawn_failed', orphan: { group, vmIp } }, `orphan-${vmName}-${ctx.clock()}`);
}

export const spawnProcessor: ProcessorSpec<SpawnData, SpawnJobResult> = {
  queue: SPAWN_QUEUE,
  schema: spawnJobSchema,
  process: processSpawn,
  // A spawn that failed for good no longer counts as in flight (the processor may never have seen
  // its last attempt: it stalled too often).
  async onFinalFailure(job, ctx) {
    const parsed = spawnJobSchema.safeParse(job.data);
    if (parsed.success) await ctx.vmm.finishSpawn(parsed.data.group, parsed.data.spawnId);
  },
};
