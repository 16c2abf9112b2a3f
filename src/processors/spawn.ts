import { DelayedError, Job, UnrecoverableError, WaitingError } from 'bullmq';
import { isValidVmIp, isValidVmName, SpawnSlotLost } from '../pool/types.js';
import { addressPolicy } from '../providers/addressPolicy.js';
import { ProviderError } from '../providers/command.js';
import { UNCLASSIFIED, type SpawnFailureClass } from '../providers/spawnErrors.js';
import { breakerOpen } from '../reconcile/breaker.js';
import { launchSuperseded } from '../reconcile/rollout.js';
import { SpawnAborted, type PrintedMachine, type SpawnedMachine } from '../providers/types.js';
import { SPAWN_QUEUE, spawnJobSchema, type SpawnJobResult } from '../../queues/spawn.js';
import { TERMINATE_QUEUE, addTerminateJob, spawnOrphanTerminateJobId, spawnStopTerminateJobId } from '../../queues/terminate.js';
import { crashAt, type JobContext } from '../runtime/context.js';
import type { ProcessorSpec } from '../runtime/worker.js';
import type { GroupConfig } from '../config/index.js';
import type { z } from 'zod';

/** A spawn job's payload, its group resolved to a name (a version-1 producer's index goes through the pool's recorded map). */
type SpawnData = Omit<z.output<typeof spawnJobSchema>, 'group'> & { group: string };
type Log = (line: string) => Promise<void>;

function isFinalAttempt(job: Job): boolean {
  return job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
}

/**
 * How much of a stop's deadline is kept for what follows a killed spawn hook (terminate job, job
 * handed back, connections closed): a running hook gets the rest.
 */
export const SPAWN_STOP_RESERVE_MS = 2_000;

/** A process's stop, as its spawn jobs see it. */
interface SpawnStop {
  stopping: boolean;
  /** When the stop's deadline passes (epoch ms, real time). */
  deadlineAt: number;
  /** Aborted when running spawn hooks must end (the deadline is near). */
  controller: AbortController;
}

const stops = new WeakMap<JobContext, SpawnStop>();

function stopOf(ctx: JobContext): SpawnStop {
  let stop = stops.get(ctx);
  if (!stop) {
    stop = { stopping: false, deadlineAt: Infinity, controller: new AbortController() };
    stops.set(ctx, stop);
  }
  return stop;
}

/**
 * The process stops (its spawn worker is closing, so it takes no new job): a running spawn hook may
 * finish until shortly before the deadline (SPAWN_STOP_RESERVE_MS), then its process group is
 * killed, the machine it printed is terminated, and its job goes back to the queue with its slot.
 */
export async function stopSpawns(ctx: JobContext, deadlineMs: number): Promise<void> {
  const stop = stopOf(ctx);
  if (stop.stopping) return;
  stop.stopping = true;
  stop.deadlineAt = Date.now() + deadlineMs;
  const reserve = Math.min(SPAWN_STOP_RESERVE_MS, deadlineMs / 2);
  setTimeout(() => stop.controller.abort(), Math.max(0, deadlineMs - reserve)).unref();
}

/** A job that reaches a stopping process goes back after this delay, so that it does not bounce. */
const STOPPED_REQUEUE_DELAY_MS = 250;

/**
 * Spawns one machine with the group's provider, validates what it returned, adds it to the pool
 * (got_ip; the VM takes the spawn's slot in the same step) and enqueues its first health check. A
 * machine that was created but cannot enter the pool is terminated, so that nothing leaks.
 *
 * Every run can be a re-run (stalled-job recovery after a crash, a retry): the spawn's record in
 * Redis, keyed by its spawn id (the job id is `spawn-<spawn id>`), says what earlier runs did. A VM
 * they added is not spawned again; a machine their hook printed is adopted when the hook succeeded
 * with it, else terminated before anything else is spawned.
 */
async function processSpawn(job: Job, payload: z.output<typeof spawnJobSchema>, ctx: JobContext): Promise<SpawnJobResult> {
  const group = await ctx.vmm.payloadGroup(payload.group);
  const data: SpawnData = { ...payload, group };
  const { spawnId } = data;
  if (!ctx.vmm.vmGroups.includes(group)) {
    // Its group left the config (it drains): nothing is spawned into it.
    await ctx.vmm.finishSpawn(group, spawnId).catch(() => undefined);
    throw new UnrecoverableError(`group ${group} is not in the config: nothing spawned`);
  }
  const groupConfig = ctx.vmm.groupConfig(group);
  const stop = stopOf(ctx);
  if (stop.stopping) {
    // Fetched as the worker began to close: another process (or the next start) takes it.
    await job.moveToDelayed(Date.now() + STOPPED_REQUEUE_DELAY_MS, job.token);
    throw new DelayedError();
  }
  if (await putBackIfSuperseded(job, data, ctx)) throw new DelayedError();
  const log: Log = (line) => job.log(line).then(() => undefined);
  const attempt = `attempt ${job.attemptsMade + 1} of ${job.opts.attempts ?? 1}`;
  await log(`spawn ${spawnId} in group ${group}, ${attempt}`);
  const started = ctx.clock();
  try {
    const earlier = await settleEarlierAttempts(job, data, groupConfig, ctx, log);
    if (earlier) return earlier;
    // An open breaker stops retries and queued spawns too (after what earlier runs left is settled);
    // only its probe reaches the provider. Counted as vmpool_spawns_total{error_class="breaker_open"}.
    if (data.reason !== 'probe' && breakerOpen(await ctx.vmm.reader.breaker(group), ctx.clock())) {
      await log(`spawn ${spawnId} skipped: the group's circuit breaker is open`);
      throw Object.assign(new UnrecoverableError(`spawn skipped: the circuit breaker of group ${groupConfig.name} is open`), { errorClass: BREAKER_OPEN });
    }
    const machine = await runSpawnHook(job, data, ctx, log, stop);
    const result = await addToPool(data, groupConfig, machine, ctx, log, started);
    await recordOutcome(ctx, group, null);
    await log(`spawned ${machine.name} at ${machine.ip} in ${ctx.clock() - started} ms`);
    ctx.logger.info({ vmName: machine.name, vmIp: machine.ip, group, spawnId }, 'VM spawned');
    return result;
  } catch (err) {
    if (err instanceof WaitingError || err instanceof DelayedError) throw err;
    await log(`spawn failed (${attempt}): ${(err as Error).message}`);
    if ((err as { errorClass?: unknown }).errorClass !== BREAKER_OPEN) await recordOutcome(ctx, group, err as Error);
    if (err instanceof UnrecoverableError || isFinalAttempt(job)) {
      await abandonPendingMachine(ctx, spawnId, group, 'spawn failed for good');
      await ctx.vmm.finishSpawn(group, spawnId);
    }
    throw err;
  }
}

/** A spawn job that reaches a worker on a superseded launch config goes back after this delay, for a current worker. */
export const SUPERSEDED_REQUEUE_DELAY_MS = 3_000;

/** Per process, the groups whose launch config it found superseded (logged once, until current again). */
const supersededGroups = new WeakMap<JobContext, Set<string>>();

/**
 * A worker whose launch config of the group is superseded (rollout.ts launchSuperseded) would make
 * a VM outdated at once: it runs no hook and puts the job back, delayed, so that a worker of the
 * current config takes it (not a spawn failure: no breaker count, no attempt used). A job whose
 * spawn no longer holds a slot (stale meanwhile) is not put back, and ends as any such spawn.
 * Returns whether the job was put back (the caller then throws DelayedError).
 */
async function putBackIfSuperseded(job: Job, data: SpawnData, ctx: JobContext): Promise<boolean> {
  const { group, spawnId } = data;
  const own = { fingerprint: ctx.vmm.launchFingerprint(group), launchRevision: ctx.vmm.groupConfig(group).launch_revision };
  const published = await ctx.vmm.reader.publishedLaunch(group);
  let warned = supersededGroups.get(ctx);
  if (!warned) supersededGroups.set(ctx, (warned = new Set()));
  if (!launchSuperseded(published, own)) {
    if (warned.delete(group)) ctx.logger.info({ group, fingerprint: own.fingerprint }, "this spawn worker's launch config of the group is current again: spawning");
    return false;
  }
  if (!(await ctx.vmm.getSpawnsInFlight(group)).some((s) => s.spawnId === spawnId)) return false;
  if (!warned.has(group)) {
    warned.add(group);
    ctx.logger.warn(
      { group, fingerprint: own.fingerprint, published: published?.fingerprint, spawnId },
      "this spawn worker's launch config of the group is superseded: it spawns nothing for the group and puts its spawn jobs back for a worker of the current config, until it is restarted with that config",
    );
  }
  await job.moveToDelayed(Date.now() + SUPERSEDED_REQUEUE_DELAY_MS, job.token);
  return true;
}

/** The error class of a spawn skipped because its group's breaker is open (no provider call). */
const BREAKER_OPEN = 'breaker_open';

/**
 * Feeds the group's circuit breaker: a success closes it, a provider failure counts by its class
 * (the hook's typed error; a timeout or bad output is unclassified). vmpool's own refusals of what
 * the provider returned (an address outside the allowed networks, a name the pool has) are not the
 * provider failing and count for nothing. A Redis error here never fails the spawn.
 */
async function recordOutcome(ctx: JobContext, group: string, err: Error | null): Promise<void> {
  if (err && !(err instanceof ProviderError)) return;
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

/**
 * What earlier runs of this spawn left: their VM in the pool (the result, after making sure its
 * health job exists), a machine to adopt (the result) or to terminate (then null: spawn anew), or
 * no slot (the spawn is over: fails for good). Null when this is the spawn's first run.
 */
async function settleEarlierAttempts(job: Job, data: SpawnData, groupConfig: GroupConfig, ctx: JobContext, log: Log): Promise<SpawnJobResult | null> {
  const { group, spawnId } = data;
  for (let round = 0; ; round++) {
    const start = await ctx.vmm.startSpawnAttempt(group, spawnId);
    switch (start.status) {
      case 'new':
        if (start.attempt > 1) await log(`run ${start.attempt} of spawn ${spawnId}: no machine of an earlier run is left; spawning`);
        return null;
      case 'added':
        // A re-run after a crash between adding the VM and the end of the job.
        await log(`an earlier run added ${start.vmName} (${start.vmIp}) to the pool; making sure its health check is queued`);
        await ctx.vmm.enqueueHealthCheck(start.vmName);
        await ctx.vmm.finishSpawn(group, spawnId);
        ctx.logger.info({ vmName: start.vmName, group, spawnId, jobId: job.id }, 'spawn re-run: its VM was in the pool already');
        return { vmName: start.vmName, vmIp: start.vmIp, group };
      case 'no_slot':
        throw new UnrecoverableError(`spawn ${spawnId} no longer holds a slot among the spawns in flight of group ${group} (finished, or dropped as stale): nothing spawned`);
      case 'machine': {
        const { vmName, vmIp, hookDone, slotHeld } = start;
        if (hookDone && slotHeld && vmIp !== null) {
          // A crash after the hook succeeded and before the VM entered the pool: adopt that machine.
          await log(`an earlier run's hook made ${vmName} (${vmIp}), which is not in the pool; adopting it`);
          ctx.logger.info({ vmName, vmIp, group, spawnId }, 'spawn re-run: adopting the machine an earlier run made');
          return addToPool(data, groupConfig, { name: vmName, ip: vmIp }, ctx, log);
        }
        if (round > 0) throw new Error(`spawn ${spawnId}: the machine ${vmName} of an earlier run is still recorded`);
        // The hook never finished with it (its process crashed or stopped meanwhile), or the spawn
        // lost its slot: it may be half-made, or no longer allowed. End it before spawning again.
        await log(`an earlier run's hook printed ${vmName} (${vmIp ?? 'no address'}) and ${hookDone ? 'the spawn lost its slot' : 'did not finish'}; terminating it`);
        ctx.logger.warn({ vmName, vmIp, group, spawnId }, 'spawn re-run: terminating the machine an earlier run left');
        await settleStopTerminateJob(ctx, groupConfig, spawnId, vmName);
        await ctx.provider(group).terminate({ group: ctx.vmm.providerGroup(group), vmName, vmIp, log });
        await ctx.vmm.forgetSpawnMachine(spawnId, vmName);
        await log(`terminated ${vmName}`);
        // Round two starts this run's attempt, or finds that the slot is gone.
      }
    }
  }
}

/**
 * Runs the provider's spawn. Each machine it names is recorded in Redis as soon as it is printed,
 * and again once the hook succeeded, so that a re-run after a crash finds it. When the process
 * stops, the hook is killed, the machine it printed is terminated (by a terminate job when that
 * does not fit before the deadline), and the job goes back to the queue with its slot (a WaitingError).
 */
async function runSpawnHook(job: Job, data: SpawnData, ctx: JobContext, log: Log, stop: SpawnStop): Promise<SpawnedMachine> {
  const { group, spawnId } = data;
  const recording: Promise<void>[] = [];
  const record = (machine: PrintedMachine, hookDone: boolean) =>
    ctx.vmm.recordSpawnMachine(spawnId, machine, hookDone).catch((err: Error) => {
      // A re-run then knows nothing of this machine: reconcile's orphan pass (list_cmd) is the fallback.
      ctx.logger.error({ err: err.message, vmName: machine.name, spawnId }, 'could not record the machine a spawn hook printed');
    });
  let machine: SpawnedMachine;
  try {
    machine = await ctx.provider(group).spawn({
      group: ctx.vmm.providerGroup(group),
      spawnId,
      log,
      signal: stop.controller.signal,
      onMachine: (m) => recording.push(record(m, false)),
    });
  } catch (err) {
    await Promise.all(recording);
    if (err instanceof SpawnAborted) {
      if (err.machine) {
        await log(`stopping: ${err.message}; terminating ${err.machine.name}`);
        await terminateBeforeDeadline(ctx, data, err.machine, log, stop.deadlineAt - STOP_CLOSE_MARGIN_MS);
      } else {
        await log(`stopping: ${err.message}`);
      }
      ctx.logger.warn({ group, spawnId, vmName: err.machine?.name }, 'spawn stopped by shutdown; its job goes back to the queue');
      await job.moveToWait(job.token);
      throw new WaitingError();
    }
    if (err instanceof ProviderError && err.leftover?.terminated) {
      // The provider already ran terminate_cmd for what its failed hook printed. If that failed too,
      // the record keeps the machine: the next run terminates it before it spawns (a terminate job
      // now could hit the next run's machine, were it given the same name), or, when this was the
      // last attempt, a terminate job does.
      await ctx.vmm.forgetSpawnMachine(spawnId, err.leftover.machine.name);
    }
    throw err;
  }
  await Promise.all(recording);
  await record(machine, true);
  crashAt(ctx, 'spawn-after-hook');
  return machine;
}

/**
 * Validates the machine and adds it to the pool, taking the spawn's slot; then its first health
 * check. A machine that cannot enter the pool is terminated (and the job fails for good).
 */
async function addToPool(data: SpawnData, groupConfig: GroupConfig, machine: SpawnedMachine, ctx: JobContext, log: Log, spawnStartedAt?: number): Promise<SpawnJobResult> {
  const { group, spawnId } = data;
  if (!isValidVmName(machine.name) || !isValidVmIp(machine.ip)) {
    const reason = `provider returned an invalid machine: name ${JSON.stringify(machine.name)}, ip ${JSON.stringify(machine.ip)}`;
    if (isValidVmName(machine.name)) await abandonMachine(ctx, spawnId, machine.name, group, null);
    throw new UnrecoverableError(reason);
  }
  const refusal = addressPolicy({ allowedNetworks: groupConfig.allowed_networks, allowLoopback: groupConfig.provider.type === 'local' }).refusal(machine.ip);
  if (refusal) {
    await log(`refused ${machine.name}: ${refusal}; terminating it`);
    await abandonMachine(ctx, spawnId, machine.name, group, machine.ip);
    throw new UnrecoverableError(`provider returned an unusable address for ${machine.name}: ${refusal}`);
  }
  try {
    await ctx.vmm.addVmToPool(machine.ip, machine.name, group, { spawnId, spawnStartedAt });
  } catch (err) {
    // A duplicate name is another machine under a name the pool has: the terminate job ends it by
    // the name and address the hook printed, and leaves the pool's VM of that name alone. A spawn
    // that lost its slot may no longer add a VM (max_vm_total).
    const why = err instanceof SpawnSlotLost ? 'the spawn no longer holds its slot' : (err as Error).message;
    await log(`could not add ${machine.name} to the pool: ${why}; terminating it`);
    await abandonMachine(ctx, spawnId, machine.name, group, machine.ip);
    throw new UnrecoverableError(`spawned machine ${machine.name} could not enter the pool: ${(err as Error).message}`);
  }
  crashAt(ctx, 'spawn-after-add');
  await ctx.vmm.enqueueHealthCheck(machine.name);
  await ctx.vmm.finishSpawn(group, spawnId);
  return { vmName: machine.name, vmIp: machine.ip, group };
}

/** What a stopping spawn leaves for handing its job back and closing, of the deadline. */
const STOP_CLOSE_MARGIN_MS = 150;

/**
 * Runs the provider's terminate for what a stopped hook printed, until `until` (epoch ms). When it
 * ends in time the spawn's record forgets the machine; else (or when it fails) a terminate job
 * takes over, and the record keeps it, so that the job's next run terminates it again (terminate
 * is idempotent) before it spawns.
 */
async function terminateBeforeDeadline(ctx: JobContext, data: SpawnData, machine: PrintedMachine, log: Log, until: number): Promise<void> {
  const { group, spawnId } = data;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), Math.max(0, until - Date.now()));
  });
  const ending = ctx
    .provider(group)
    .terminate({ group: ctx.vmm.providerGroup(group), vmName: machine.name, vmIp: machine.ip, log })
    .then(
      () => 'terminated' as const,
      (err: Error) => err,
    );
  const outcome = await Promise.race([ending, late]);
  clearTimeout(timer);
  if (outcome === 'terminated') {
    await ctx.vmm.forgetSpawnMachine(spawnId, machine.name);
    await log(`terminated ${machine.name}`);
    return;
  }
  const why = outcome === 'late' ? 'did not end before the shutdown deadline' : `failed: ${outcome.message}`;
  await log(`terminating ${machine.name} ${why}; a terminate job takes over`);
  ctx.logger.warn({ vmName: machine.name, group, spawnId }, `stopping: terminating the stopped spawn's machine ${why}; a terminate job takes over`);
  await addTerminateJob(ctx.queue(TERMINATE_QUEUE), { vmName: machine.name, reason: 'spawn_failed', orphan: { group, vmIp: machine.ip } }, spawnStopTerminateJobId(spawnId, machine.name));
}

/** How long a run waits for the terminate job a stopped run left, beyond the group's terminate timeout. */
const STOP_TERMINATE_WAIT_EXTRA_MS = 10_000;

/**
 * Before a run terminates an earlier run's machine and spawns anew: the terminate job a stopped run
 * left for it is removed while it waits, or waited for while it runs, so that it cannot end a
 * machine this run makes under the same name.
 */
async function settleStopTerminateJob(ctx: JobContext, groupConfig: GroupConfig, spawnId: string, vmName: string): Promise<void> {
  const queue = ctx.queue(TERMINATE_QUEUE);
  const id = spawnStopTerminateJobId(spawnId, vmName);
  const terminateMs = groupConfig.provider.type === 'command' ? groupConfig.provider.terminate_timeout * 1000 : 0;
  const until = Date.now() + terminateMs + STOP_TERMINATE_WAIT_EXTRA_MS;
  for (;;) {
    const job = await Job.fromId(queue, id);
    if (!job) return;
    const state = await job.getState();
    if (state === 'completed' || state === 'failed' || state === 'unknown') return;
    if (state !== 'active') {
      // Removing fails when a terminate worker took it meanwhile: then wait for it.
      const removed = await job.remove().then(
        () => true,
        () => false,
      );
      if (removed) return;
    }
    if (Date.now() > until) throw new Error(`terminate job ${id} for ${vmName} is still running`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Terminates a machine the pool has no record of, through the terminate queue. */
export async function requestOrphanTermination(ctx: JobContext, vmName: string, group: string, vmIp: string | null): Promise<void> {
  await addTerminateJob(ctx.queue(TERMINATE_QUEUE), { vmName, reason: 'spawn_failed', orphan: { group, vmIp } }, spawnOrphanTerminateJobId(vmName, ctx.clock()));
}

/** A spawn's machine that will not enter the pool: a terminate job ends it, and the spawn's record forgets it. */
async function abandonMachine(ctx: JobContext, spawnId: string, vmName: string, group: string, vmIp: string | null): Promise<void> {
  await requestOrphanTermination(ctx, vmName, group, vmIp);
  await ctx.vmm.forgetSpawnMachine(spawnId, vmName);
}

/** A spawn that ends for good: a machine its runs printed and the pool never got is terminated. */
async function abandonPendingMachine(ctx: JobContext, spawnId: string, group: string, why: string): Promise<void> {
  const pending = await ctx.vmm.reader.spawnMachine(spawnId);
  if (!pending || pending.added) return;
  ctx.logger.warn({ vmName: pending.vmName, group, spawnId }, `${why}: terminating the machine its hook printed`);
  await abandonMachine(ctx, spawnId, pending.vmName, group, pending.vmIp);
}

export const spawnProcessor: ProcessorSpec<z.output<typeof spawnJobSchema>, SpawnJobResult> = {
  queue: SPAWN_QUEUE,
  schema: spawnJobSchema,
  process: processSpawn,
  // A spawn that failed for good no longer counts as in flight, and leaves no machine (the
  // processor may never have seen its last attempt: it stalled too often).
  async onFinalFailure(job, ctx) {
    const parsed = spawnJobSchema.safeParse(job.data);
    if (!parsed.success) return;
    const { spawnId } = parsed.data;
    const group = await ctx.vmm.payloadGroup(parsed.data.group);
    if (ctx.vmm.vmGroups.includes(group)) await abandonPendingMachine(ctx, spawnId, group, 'spawn failed for good');
    await ctx.vmm.finishSpawn(group, spawnId);
  },
};
