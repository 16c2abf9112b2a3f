import { UnrecoverableError, type Job } from 'bullmq';
import { isValidVmIp, isValidVmName } from '../pool/types.js';
import { addressPolicy } from '../providers/addressPolicy.js';
import { ProviderError } from '../providers/command.js';
import { UNCLASSIFIED, type SpawnFailureClass } from '../providers/spawnErrors.js';
import { breakerOpen } from '../reconcile/breaker.js';
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
  // An open breaker stops retries and queued spawns too; only its probe reaches the provider.
  if (data.reason !== 'probe' && breakerOpen(await ctx.vmm.reader.breaker(group), ctx.clock())) {
    await ctx.vmm.finishSpawn(group, spawnId);
    await log(`spawn ${spawnId} skipped: the group's circuit breaker is open`);
    // Counted as vmpool_spawns_total{error_class="breaker_open"}: no provider call was made.
    throw Object.assign(new UnrecoverableError(`spawn skipped: the circuit breaker of group ${groupConfig.name} is open`), { errorClass: 'breaker_open' });
  }
  await log(`spawn ${spawnId} in group ${group} (${groupConfig.name}), ${attempt}`);
  const started = ctx.clock();
  try {
    const machine = await ctx.provider(group).spawn({ group: { id: group, config: groupConfig }, spawnId, log });
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
      await ctx.vmm.addVmToPool(machine.ip, machine.name, group, started);
    } catch (err) {
      // A duplicate name is another machine under a name the pool has: the terminate job ends it by
      // the name and address the hook printed, and leaves the pool's VM of that name alone.
      await log(`could not add ${machine.name} to the pool: ${(err as Error).message}; terminating it`);
      await requestOrphanTermination(ctx, machine.name, group, machine.ip);
      throw new UnrecoverableError(`spawned machine ${machine.name} could not enter the pool: ${(err as Error).message}`);
    }
    await ctx.vmm.enqueueHealthCheck(machine.name);
    await ctx.vmm.finishSpawn(group, spawnId);
    await recordOutcome(ctx, group, null);
    await log(`spawned ${machine.name} at ${machine.ip} in ${ctx.clock() - started} ms`);
    ctx.logger.info({ vmName: machine.name, vmIp: machine.ip, group, spawnId }, 'VM spawned');
    return { vmName: machine.name, vmIp: machine.ip, group };
  } catch (err) {
    await log(`spawn failed (${attempt}): ${(err as Error).message}`);
    await recordOutcome(ctx, group, err as Error);
    if (err instanceof UnrecoverableError || isFinalAttempt(job)) await ctx.vmm.finishSpawn(group, spawnId);
    throw err;
  }
}

/**
 * Feeds the group's circuit breaker: a success closes it, a failure counts by its class (the hook's
 * typed error; a failure around the hook is unclassified). A Redis error here never fails the spawn.
 */
async function recordOutcome(ctx: JobContext, group: number, err: Error | null): Promise<void> {
  try {
    if (!err) await ctx.vmm.recordSpawnOutcome(group, 'ok');
    else await ctx.vmm.recordSpawnOutcome(group, 'failed', spawnErrorClass(err), err.message);
  } catch (e) {
    ctx.logger.warn({ group, err: (e as Error).message }, 'could not record the spawn outcome in the circuit breaker');
  }
}

/** The class of a spawn failure: the provider's typed error, else unclassified. */
export function spawnErrorClass(err: unknown): SpawnFailureClass {
  return err instanceof ProviderError ? err.errorClass : UNCLASSIFIED;
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
