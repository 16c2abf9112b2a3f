import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Queue } from 'bullmq';
import type { Config } from '../config/index.js';
import type { Logger } from '../logger.js';
import { ALL_VM_STATES, VmDescriptorNotFound, VmError, VmStates, activeVmCount } from '../pool/types.js';
import type { ExpiredLease, VmManager } from '../pool/vmManager.js';
import { decideLossSweep, decideOrphans, type OrphanDecision } from './orphanDecisions.js';
import type { Provider } from '../providers/types.js';
import { ACQUIRE_QUEUE } from '../../queues/acquire.js';
import { HEALTH_QUEUE, addHealthJobs } from '../../queues/health.js';
import type { QueueName } from '../../queues/names.js';
import { SPAWN_QUEUE, addSpawnJob } from '../../queues/spawn.js';
import { TERMINATE_QUEUE, addTerminateJob, leakTerminateJobId, lossSweepTerminateJobId } from '../../queues/terminate.js';
import type { CycleLock } from '../pool/locks.js';
import {
  decideCheckVmsHealth,
  decideFinalizeLongHealthChecks,
  decideRecheckAfterServerStart,
  decideRemoveOldDirtyVms,
  decideRetireSurplus,
  decideStartSpawnIfRequired,
  decideTerminateAgain,
  spawnFigures,
  warmPoolOf,
  type GroupCounts,
  type GroupSnapshot,
  type PoolSnapshot,
  type ReconcileAction,
} from './decisions.js';
import { readDemand, type DemandRoute } from './demand.js';
import { readAccountLimits } from './quotaRefresh.js';
import type { Resources } from './quota.js';
import { decideRollOut, type GroupLaunch } from './rollout.js';
import { blockedGroups, demandGroupsOf, hasFallbacks, withFallbacks } from '../acquire/fallback.js';
import { targetWaitDecision, warmPoolVaries, type TargetWaitMeasure } from './targetWait.js';
import type { DueQuery } from '../pool/poolReader.js';
import { HISTORY_SAMPLES, isHistoryDue, parseAcquireWaitMark, quantileBetween, type HistorySample } from './history.js';
import { parseSharedHistogram, sharedMetrics } from '../metrics/shared.js';
import { isOrphanPassDue, LAST_ORPHAN_CHECK, parseEpochMs, parseUnknownMachines } from './orphanPass.js';

/** Copr's per-group pool info key for the last spawn start (epoch ms). */
export const LAST_VM_SPAWN_START = 'last_vm_spawn_start';

export const DEFAULT_CYCLE_LOCK_TTL_MS = 30_000;

export interface VmMasterOptions {
  /** Queue handles to add spawn and health jobs to (a JobContext's `queue`). Without it, the manager's (vmm.queue). */
  queue?: (name: QueueName) => Queue;
  /** Expiry of the cycle lock; a replica that dies mid-cycle holds it at most this long. */
  cycleLockTtlMs?: number;
  /** The provider of a group (a JobContext's `provider`). Without it, cleanupOrphans does nothing. */
  provider?: (group: string) => Provider;
  /** Between history samples (src/reconcile/history.ts); default HISTORY_PERIOD_MS. */
  historyPeriodMs?: number;
  /**
   * When this process started (epoch ms; default: the manager's clock at construction). Of two
   * launch configs of a group with one launch_revision, the one of the process started later wins.
   */
  startedAt?: number;
}

/** One group's sweep after a loss of the pool's state, as logged. */
export interface LossSweep {
  group: string;
  machines: number;
  /** Machines the pool does not know, terminated (terminate jobs added). */
  terminated: number;
  /** Unknown machines created after the recovery, left to the orphan pass. */
  spared: number;
}

/** One group's leak and orphan pass, as logged. */
export interface OrphanPass {
  group: string;
  counts: OrphanDecision['counts'];
  /** Terminate jobs added (or retried) for machines the pool does not know. */
  leaksTerminated: number;
  /** Pool VMs whose machine the provider no longer has, moved to terminating. */
  lostVmsTerminated: number;
}

export const CYCLE_STEPS = [
  'reclaimExpiredLeases',
  'expireHolds',
  'rollOut',
  'removeOldDirtyVms',
  'retireSurplus',
  'checkVmsHealth',
  'recheckAfterServerStart',
  'startSpawnIfRequired',
  'finalizeLongHealthChecks',
  'terminateAgain',
  'cleanupOrphans',
  'recordHistory',
] as const;
export type CycleStep = (typeof CYCLE_STEPS)[number];

/** The steps that decide from the pool's snapshot (decisions.ts) and apply the actions. */
type DecisionStep = Extract<
  CycleStep,
  'rollOut' | 'removeOldDirtyVms' | 'retireSurplus' | 'checkVmsHealth' | 'recheckAfterServerStart' | 'startSpawnIfRequired' | 'finalizeLongHealthChecks' | 'terminateAgain'
>;

/** One step of the reconcile cycle (VmMaster.steps). */
export interface ReconcileStep {
  name: CycleStep;
  /** Runs the step; `pool` reads the snapshot, or gives the one read since the pool last changed. Returns the step's count. */
  run(pool: () => Promise<PoolSnapshot>): Promise<number>;
  /**
   * Its count is no change of the pool's VMs (the history sample): the snapshot stays valid for
   * the next step, and a cycle that did only this is routine.
   */
  changesNoVm?: boolean;
}

export interface CycleReport {
  /** False when another cycle held the lock (nothing was done). */
  ran: boolean;
  /** Actions applied per step. */
  counts: Record<CycleStep, number>;
  /** Steps not run because the lock was lost mid-cycle. */
  skipped: CycleStep[];
}

/** The lock key of reconcile cycles: one per pool, beside the pool's keys (src/pool/locks.ts). */
export { cycleLockKey } from '../pool/locks.js';

/**
 * Copr's VmMaster: each step reads a snapshot of the pool, asks a pure decision function
 * (decisions.ts) what to do, and applies the actions through the pool's atomic scripts and queues.
 * doCycle runs every step under a Redis lock, so that only one cycle runs at a time across replicas.
 */
export class VmMaster {
  private readonly logger: Logger;
  private readonly lock: CycleLock;
  /** This process, as publishLaunch weighs it against other replicas. */
  readonly launchProcess: { startedAt: number; processId: string };
  /** Per group, whether this process's launch config is the published one (set by rollOut). */
  private readonly launchCurrent = new Map<string, boolean>();

  constructor(
    readonly vmm: VmManager,
    private readonly options: VmMasterOptions = {},
  ) {
    this.logger = vmm.logger.child({ component: 'reconcile' });
    this.lock = vmm.cycleLock(options.cycleLockTtlMs ?? DEFAULT_CYCLE_LOCK_TTL_MS);
    this.launchProcess = { startedAt: options.startedAt ?? vmm.clock(), processId: `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}` };
  }

  private queue(name: QueueName): Queue {
    return this.options.queue ? this.options.queue(name) : this.vmm.queue(name);
  }

  /**
   * Reads what the decisions need, in proportion to what is due: the records of the VMs the
   * due-time sets name (dueVmNames), per group the VM counts from the indexes, and spawns in
   * flight, demand (the line and the queued vm-acquire jobs, see demand.ts) and last spawn start.
   * A group whose warm pool varies and has more clean ready VMs than it keeps also gets those
   * VMs' records (retireSurplus picks the longest idle). With nothing due, O(groups).
   */
  async readSnapshot(): Promise<PoolSnapshot> {
    const vmm = this.vmm;
    const now = vmm.clock();
    // The config's groups, then the groups removed from it that drain (as read at the cycle's start).
    const groupNames = [...vmm.vmGroups, ...vmm.removedGroups.keys()];
    const removed = (group: string) => !vmm.vmGroups.includes(group);
    // Spawns in flight first, then the VM counts: a spawn whose VM entered the pool in between is
    // then counted twice (one spawn too few this cycle), never not at all (one too many).
    const groups = await Promise.all(
      groupNames.map(async (group): Promise<Omit<GroupSnapshot, 'demand'>> => {
        const targetWait = removed(group) ? undefined : vmm.groupConfig(group).target_wait;
        const [spawnsInFlight, last, breaker, drainedSince, measure] = await Promise.all([
          vmm.getSpawnsInFlight(group),
          vmm.readVmPoolInfo(group, LAST_VM_SPAWN_START),
          vmm.reader.breaker(group),
          vmm.drainedSince(group),
          targetWait ? vmm.measureTargetWait(group, targetWait.window * 1000) : undefined,
          // Without target_wait nothing reads the arrivals: kept bounded all the same.
          targetWait || removed(group) ? undefined : vmm.trimUnmeasuredArrivals(group),
        ]);
        const lastSpawnStart = last === null || last === '' || !Number.isFinite(Number(last)) ? null : Number(last);
        return {
          group,
          spawnsInFlight,
          lastSpawnStart,
          breaker,
          drained: drainedSince !== null,
          ...(removed(group) ? { removed: true } : {}),
          ...(measure ? { targetWait: measure } : {}),
        };
      }),
    );
    const [serverStart, serverStartSeq, stateCounts, supply] = await Promise.all([
      vmm.getServerStart(),
      vmm.reader.serverStartSeq(),
      vmm.reader.stateCounts(groupNames),
      vmm.reader.supplyCounts(groupNames),
    ]);
    for (const g of groups) if (g.targetWait) this.noteTargetWait(g.group, g.targetWait);
    const counts = new Map<string, GroupCounts>(
      groupNames.map((group, i) => {
        const byState = stateCounts[i]!;
        const all = Object.values(byState).reduce((a, b) => a + b, 0);
        return [group, { all, active: activeVmCount(byState), coming: supply[i]!.coming }];
      }),
    );
    // With fallback groups, a request for a blocked group (breaker open, at max_vm_total, quota_full)
    // counts for the fallback that serves it.
    let route: DemandRoute | undefined;
    if (hasFallbacks(vmm.config.groups)) {
      // quota_full markers of the last cycles: one MGET of the groups' keys.
      const full = await vmm.quotas.full(groupNames);
      const blocked = blockedGroups(vmm.config.groups, groups.map((g, i) => ({ ...g, active: counts.get(g.group)?.active ?? 0, quotaFull: full[i] != null })), now);
      route = (r) => demandGroupsOf(r.groups, withFallbacks(vmm.config.groups, r.groups, blocked, r.strict), blocked);
    }
    const demand = await readDemand(vmm, this.queue(ACQUIRE_QUEUE), route);
    const withDemand: GroupSnapshot[] = groups.map((g, i) => ({ ...g, demand: demand[i] ?? 0, counts: counts.get(g.group)! }));

    // What is due, per group: each query's bound is the time before which a score means due.
    const queries: DueQuery[] = [];
    for (const group of groupNames) {
      const g = vmm.groupConfig(group);
      queries.push({ group, set: 'check', upTo: now - g.vm_health_check_period * 1000 });
      // Checked before the server start: acquire skips them until checked again (recheckAfterServerStart).
      if (serverStart !== null) queries.push({ group, set: 'check', upTo: serverStart, inclusive: true });
      // A reuse limit can be reached at any time after a release: every dirty VM is then a candidate.
      const reuse = g.reuse_max_count > 0 || g.reuse_max_time > 0;
      queries.push({ group, set: 'dirty', upTo: reuse ? null : now - g.vm_dirty_terminating_timeout * 1000 });
      queries.push({ group, set: 'checkStarted', upTo: now - g.vm_health_check_max_time * 1000 });
      queries.push({ group, set: 'terminating', upTo: now - g.vm_terminating_timeout * 1000 });
    }
    const names = new Set((await vmm.reader.dueVmNames(queries)).flat());
    // The rollout's VMs, of the groups whose launch this process published (rollOut ran).
    const launchGroups = vmm.vmGroups.filter((group) => this.launchCurrent.get(group) === true);
    const launchDue = await vmm.reader.launchDue(
      launchGroups.map((group) => {
        const age = vmm.groupConfig(group).max_ready_age;
        return { group, agedBefore: age === undefined ? null : now - age * 1000 };
      }),
    );
    const launches = new Map<string, GroupLaunch>();
    for (const group of vmm.vmGroups) if (this.launchCurrent.get(group) === false) launches.set(group, { current: false, outdated: [], aged: [], readyCurrent: 0 });
    for (const [i, group] of launchGroups.entries()) {
      const due = launchDue[i]!;
      for (const name of [...due.outdated, ...due.aged]) names.add(name);
      launches.set(group, { current: true, ...due, readyCurrent: supply[vmm.vmGroups.indexOf(group)]!.readyClean });
    }
    for (const [i, group] of groupNames.entries()) {
      const g = vmm.groupConfig(group);
      if (!warmPoolVaries(g) && !removed(group)) continue;
      const snap = withDemand.find((s) => s.group === group)!;
      if (supply[i]!.readyClean > warmPoolOf(this.decisionConfig(), snap, now) + Math.max(0, snap.demand)) {
        for (const name of await vmm.reader.readyCleanNames(group)) names.add(name);
      }
    }
    const vms = await vmm.reader.vmRecords([...names]);
    for (const g of withDemand) {
      const launch = launches.get(g.group);
      if (!launch) continue;
      g.launch = launch;
      // Aged VMs are about to go: their replacements are spawned first, as outdated ones' are.
      if (g.counts && launch.aged.length > 0) g.counts = { ...g.counts, coming: Math.max(0, g.counts.coming - launch.aged.length) };
    }
    const terminatingIps = [...new Set(vms.filter((v) => v.state === VmStates.TERMINATING).map((v) => v.vmIp))];
    const vmsByIp = await vmm.reader.vmNamesByIps(terminatingIps);
    const accountLimits = await readAccountLimits(vmm, this.logger, now);
    this.accountLimits = accountLimits;
    return { vms, vmsByIp, groups: withDemand, serverStart, serverStartSeq, accountLimits };
  }

  /** What the pool may use of each account, from the last snapshot (registerSpawn re-checks it). */
  private accountLimits = new Map<string, Resources>();

  private readonly lastTargetWait = new Map<string, number>();

  /** Logs a target_wait decision: at info when the warm pool's size changes, else at debug. */
  private noteTargetWait(group: string, measure: TargetWaitMeasure): void {
    const d = targetWaitDecision(this.vmm.groupConfig(group), measure, this.vmm.config.vm_cycle_timeout);
    if (!d) return;
    const fields = { group, arrivalsPerMinute: Number(d.arrivalsPerMinute.toFixed(2)), bootSeconds: Number(d.bootSeconds.toFixed(1)), bootMeasured: d.bootMeasured, minReady: d.minReady, lateShare: Number(d.lateShare.toFixed(4)) };
    const changed = this.lastTargetWait.get(group) !== d.minReady;
    this.lastTargetWait.set(group, d.minReady);
    this.logger[changed ? 'info' : 'debug'](fields, 'target_wait sized the warm pool');
  }

  /**
   * The steps that decide from the snapshot (decisions.ts) and apply what they decided. The
   * methods of the same names (Copr's VmMaster, public API) run one alone.
   */
  /** The config the decisions see: the config's groups and the removed groups that drain (their published configs). */
  private decisionConfig(): Config {
    return { ...this.vmm.config, groups: this.vmm.allGroupConfigs() };
  }

  private readonly decisions: Record<DecisionStep, (s: PoolSnapshot, now: number) => ReconcileAction[]> = {
    rollOut: (s, now) => decideRollOut(s, this.decisionConfig(), now),
    removeOldDirtyVms: (s, now) => decideRemoveOldDirtyVms(s, this.decisionConfig(), now),
    retireSurplus: (s, now) => decideRetireSurplus(s, this.decisionConfig(), now),
    checkVmsHealth: (s, now) => decideCheckVmsHealth(s, this.decisionConfig(), now),
    recheckAfterServerStart: (s, now) => decideRecheckAfterServerStart(s, this.decisionConfig(), now),
    startSpawnIfRequired: (s, now) => {
      const actions = decideStartSpawnIfRequired(s, this.decisionConfig(), now);
      if (actions.length > 0) {
        const figures = s.groups.filter((g) => this.vmm.vmGroups.includes(g.group)).map((g) => spawnFigures(s, this.decisionConfig(), g, now));
        this.logger.debug({ figures }, 'spawn figures');
      }
      return actions;
    },
    finalizeLongHealthChecks: (s, now) => decideFinalizeLongHealthChecks(s, this.decisionConfig(), now),
    terminateAgain: (s, now) => decideTerminateAgain(s, this.decisionConfig(), now),
  };

  /** Runs one decision step on the snapshot (read when not given) and returns the actions applied. */
  private async decideAndApply(step: DecisionStep, snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    const s = snapshot ?? (await this.readSnapshot());
    return this.apply(step, this.decisions[step](s, this.vmm.clock()));
  }

  /**
   * The cycle's steps, in CYCLE_STEPS order. Each returns its count: the actions it applied (for
   * recordHistory, 1 when it took a sample). A step that counted some changed the pool, so the
   * next one reads a fresh snapshot, unless it `changesNoVm`.
   */
  readonly steps: readonly ReconcileStep[] = this.cycleSteps();

  private cycleSteps(): ReconcileStep[] {
    const decision = (step: DecisionStep) => ({ run: async (pool: () => Promise<PoolSnapshot>) => (await this.decideAndApply(step, await pool())).length });
    const steps: Record<CycleStep, Omit<ReconcileStep, 'name'>> = {
      reclaimExpiredLeases: { run: async () => (await this.reclaimExpiredLeases()).length },
      expireHolds: { run: async () => (await this.expireHolds()).length },
      rollOut: {
        // Publishes first, so that the snapshot read next has each group's launch.
        run: async (pool) => {
          const changed = await this.publishLaunches();
          return changed + (await this.decideAndApply('rollOut', await pool())).length;
        },
      },
      removeOldDirtyVms: decision('removeOldDirtyVms'),
      retireSurplus: decision('retireSurplus'),
      checkVmsHealth: decision('checkVmsHealth'),
      recheckAfterServerStart: decision('recheckAfterServerStart'),
      startSpawnIfRequired: decision('startSpawnIfRequired'),
      finalizeLongHealthChecks: decision('finalizeLongHealthChecks'),
      terminateAgain: decision('terminateAgain'),
      // Reads the pool itself, after the provider's list.
      cleanupOrphans: { run: async () => (await this.cleanupOrphans()).reduce((n, p) => n + p.leaksTerminated + p.lostVmsTerminated, 0) },
      recordHistory: { run: async () => ((await this.recordHistory()) ? 1 : 0), changesNoVm: true },
    };
    return CYCLE_STEPS.map((name) => ({ name, ...steps[name] }));
  }

  /**
   * Publishes this process's launch config of each group (VmManager.publishLaunch), and notes per
   * group whether it is the current one: a group whose published config is another process's newer
   * one gets no spawn, rollout or retire decision from this process (logged once per change).
   * Returns how many VMs changed sides (outdated or current again) by a publication.
   */
  async publishLaunches(): Promise<number> {
    let changed = 0;
    // One script call per group, sent together (one round trip on the connection).
    const outcomes = await Promise.all(this.vmm.vmGroups.map((group) => this.vmm.publishLaunch(group, this.launchProcess)));
    for (const [i, group] of this.vmm.vmGroups.entries()) {
      const outcome = outcomes[i]!;
      const current = outcome.status !== 'superseded';
      const before = this.launchCurrent.get(group);
      this.launchCurrent.set(group, current);
      const fingerprint = this.vmm.launchFingerprint(group);
      if (outcome.status === 'published') {
        changed += outcome.changed;
        this.logger.info({ group, fingerprint, revision: outcome.revision, outdatedChanged: outcome.changed }, 'launch config published; VMs of older launches are rolled out');
      } else if (outcome.status === 'superseded' && before !== false) {
        const { fingerprint: published, revision, launchRevision, publishedAt, publishedBy } = outcome;
        this.logger.warn(
          { group, fingerprint, published, revision, launchRevision, publishedAt, publishedBy },
          "another process's newer launch config of this group is current: this process makes no spawn, rollout or retire decision for it until it runs that config",
        );
      } else if (outcome.status === 'current' && before === false) {
        this.logger.info({ group, fingerprint, revision: outcome.revision }, 'launch config of this group is current again');
      }
    }
    return changed;
  }

  /** Retires the outdated and aged VMs whose replacements keep min_ready (rollout.ts), after publishing the launch configs. */
  async rollOut(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    await this.publishLaunches();
    return this.decideAndApply('rollOut', snapshot);
  }

  /** Copr's remove_old_dirty_vms: terminates dirty VMs not re-acquired within vm_dirty_terminating_timeout, or past a reuse limit. */
  removeOldDirtyVms(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('removeOldDirtyVms', snapshot);
  }

  /** Copr's check_vms_health: enqueues a health job (at most one pending per VM) for every VM due for a check. */
  checkVmsHealth(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('checkVmsHealth', snapshot);
  }

  /** Enqueues a health job for ready VMs last checked before the server start (acquire skips them until then). */
  recheckAfterServerStart(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('recheckAfterServerStart', snapshot);
  }

  /** Copr's finalize_long_health_checks: marks VMs stuck in check_health past vm_health_check_max_time as failed. */
  finalizeLongHealthChecks(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('finalizeLongHealthChecks', snapshot);
  }

  /** Copr's terminate_again: requests termination again of VMs terminating past vm_terminating_timeout (or removes a stale record). */
  terminateAgain(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('terminateAgain', snapshot);
  }

  /** Retires idle clean VMs above a scheduled min_ready (a period ended) plus demand. */
  retireSurplus(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('retireSurplus', snapshot);
  }

  /** Copr's start_spawn_if_required: drops stale spawns in flight and starts spawns for the warm pool and demand, within Copr's limits. */
  startSpawnIfRequired(snapshot?: PoolSnapshot): Promise<ReconcileAction[]> {
    return this.decideAndApply('startSpawnIfRequired', snapshot);
  }

  /** Ends the holds whose time is up (VmManager.expireHolds): reads only the holds that are due. */
  async expireHolds(): Promise<string[]> {
    return this.vmm.expireHolds();
  }

  /** Hands VMs whose lease lapsed to on_lease_expiry (VmManager.expireLeases). */
  async reclaimExpiredLeases(): Promise<ExpiredLease[]> {
    // expireLeases logs each VM and enqueues its terminate or health job.
    return this.vmm.expireLeases();
  }

  /**
   * Leak and orphan cleanup (nodepool, resalloc's cmd_list, Copr's cleanup_vm_nova): for each group
   * whose provider has `list`, at most every orphan_check_period, compares the provider's machines
   * with the pool (decideOrphans) and
   * - terminates machines the pool does not know, seen on two passes in a row and older than
   *   orphan_grace_period (a terminate job with `orphan`, one per machine and first sighting);
   * - moves pool VMs whose machine is missing from two passes in a row to terminating (reason
   *   provider_lost), so that the terminate job (an idempotent provider.terminate) removes the record.
   * The unknown machines and missing VMs of each pass are kept in Redis for the next one. A group whose pass fails
   * (its list hook failed) waits for the next period; the errors are thrown after every group ran.
   */
  async cleanupOrphans(): Promise<OrphanPass[]> {
    const providerOf = this.options.provider;
    if (!providerOf) {
      this.logger.debug('no provider given to VmMaster; orphan cleanup is off');
      return [];
    }
    const passes: OrphanPass[] = [];
    const errors: unknown[] = [];
    for (const group of this.vmm.vmGroups) {
      try {
        const pass = await this.orphanPass(group, providerOf);
        if (pass) passes.push(pass);
      } catch (err) {
        errors.push(err);
        this.logger.error({ err, group }, 'orphan pass failed');
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, `cleanupOrphans: ${errors.length} group(s) failed`);
    return passes;
  }

  private async orphanPass(group: string, providerOf: (group: string) => Provider): Promise<OrphanPass | null> {
    const vmm = this.vmm;
    const config = vmm.groupConfig(group);
    if (!(config.orphan_check_period > 0)) return null;
    const started = vmm.clock();
    const last = parseEpochMs(await vmm.readVmPoolInfo(group, LAST_ORPHAN_CHECK));
    if (!isOrphanPassDue(last, started, config.orphan_check_period)) return null;
    const provider = providerOf(group);
    if (!provider.list) return null;
    // Recorded first, so that a failing list hook runs once per period, not once per cycle.
    await vmm.writeVmPoolInfo(group, LAST_ORPHAN_CHECK, started);

    // Read after the list, so that every machine a VM names is known: the group's VM names once
    // (its state sets), whether the other listed machines are pool VMs, and the records of only
    // the VMs the list misses. A VM added while the list ran (added_at from the pass's start on)
    // may be missing from it, so it does not count as missed (one added in the start's own millisecond does: it is terminated only if the next list misses it too).
    const machines = await provider.list(vmm.providerGroup(group));
    const [groupNames, previous] = await Promise.all([vmm.reader.vmNamesByGroupsAndStates([group], ALL_VM_STATES), vmm.reader.orphanPassState(group)]);
    const listed = new Set(machines.map((m) => m.name));
    const inGroup = new Set(groupNames);
    const others = await vmm.reader.knownVmNames([...listed].filter((n) => !inGroup.has(n)));
    const unlisted = await vmm.reader.vmRecords(groupNames.filter((n) => !listed.has(n)));
    const addedBefore = (v: { addedAt?: number | null }) => (v.addedAt ?? 0) <= started;
    const before = new Set(unlisted.filter(addedBefore).map((v) => v.vmName));
    const now = vmm.clock();
    const decision = decideOrphans({
      group,
      poolId: vmm.poolId,
      previousUntagged: new Set(previous.untagged),
      poolVms: unlisted.map((v) => ({ name: v.vmName, ip: v.vmIp, state: v.state, group: v.group, addedAt: v.addedAt })),
      knownNames: new Set([...groupNames, ...others]),
      groupVmCount: groupNames.length,
      machines,
      previousUnknown: parseUnknownMachines(previous.unknown),
      previousMissing: parseUnknownMachines(previous.missing),
      now,
      graceMs: config.orphan_grace_period * 1000,
    });
    // A VM added while the list ran does not count as missed.
    const missing = [...decision.missing].filter(([name]) => before.has(name));
    await vmm.replaceOrphanPassState(group, { unknown: Object.fromEntries(decision.unknown), missing: Object.fromEntries(missing), untagged: [...decision.untagged] });
    for (const machine of decision.newlyUntagged) {
      this.logger.warn(
        { group, vmName: machine.name, vmIp: machine.ip ?? null, poolId: vmm.poolId },
        'orphan pass: the provider lists a machine unknown to the pool that carries no pool id; left alone (tag machines with VMPOOL_POOL_ID at spawn, and list it as `pool`)',
      );
    }

    const errors: unknown[] = [];
    let leaksTerminated = 0;
    for (const machine of decision.terminateMachines) {
      try {
        if (await this.terminateLeak(group, machine.name, machine.ip ?? null, decision.unknown.get(machine.name)!)) leaksTerminated++;
      } catch (err) {
        errors.push(err);
        this.logger.error({ err, group, vmName: machine.name }, 'orphan pass: could not request termination of a leaked machine');
      }
    }
    let lostVmsTerminated = 0;
    const lostSkipped = decision.terminateVms.filter((v) => !before.has(v.name)).length;
    for (const vm of decision.terminateVms) {
      if (!before.has(vm.name)) continue;
      try {
        if (await vmm.startVmTermination(vm.name, undefined, 'provider_lost')) {
          lostVmsTerminated++;
          this.logger.warn({ group, vmName: vm.name, vmIp: vm.ip, state: vm.state }, 'orphan pass: the provider no longer has this VM; terminating it');
        }
      } catch (err) {
        if (err instanceof VmDescriptorNotFound) continue;
        errors.push(err);
        this.logger.error({ err, group, vmName: vm.name }, 'orphan pass: could not terminate a lost VM');
      }
    }
    const pass: OrphanPass = { group, counts: decision.counts, leaksTerminated, lostVmsTerminated };
    const fields = { ...pass, missingAddedDuringList: lostSkipped, errors: errors.length, durationMs: vmm.clock() - started };
    this.logger[errors.length > 0 ? 'warn' : 'info'](fields, 'orphan pass');
    if (errors.length > 0) throw new AggregateError(errors, `orphan pass of group ${group}: ${errors.length} action(s) failed`);
    return pass;
  }

  /**
   * After the pool recovered from a loss of its state (VmManager.recoverPool), reads each group's
   * provider list once and terminates every machine the pool does not know (decideLossSweep): its
   * record was lost or went back in time, so it is never handed out again. Groups without `list`,
   * or with the orphan pass off (orphan_check_period 0), are skipped. A group whose list fails is
   * tried again at the next cycle; the errors are thrown after every group ran. Costs one read of
   * the marker per cycle when no sweep is owed.
   */
  async sweepAfterLoss(): Promise<LossSweep[]> {
    const providerOf = this.options.provider;
    if (!providerOf) return [];
    const vmm = this.vmm;
    const marker = await vmm.reader.poolState();
    const generation = marker?.sweepGeneration;
    if (!marker || !generation) return [];
    const sweeps: LossSweep[] = [];
    const errors: unknown[] = [];
    for (const group of vmm.vmGroups) {
      if (marker.swept[group] === generation) continue;
      const config = vmm.groupConfig(group);
      const provider = providerOf(group);
      try {
        if (provider.list && config.orphan_check_period > 0) {
          // Only this pool's machines (tagged with its id): another pool's, or untagged ones, are left alone.
          const machines = (await provider.list(vmm.providerGroup(group))).filter((m) => m.pool === vmm.poolId);
          const names = new Set(await vmm.reader.allVmNames());
          const decision = decideLossSweep({ poolVmNames: names, machines, recoveredAt: marker.recoveredAt ?? vmm.clock() });
          const queue = this.queue(TERMINATE_QUEUE);
          for (const machine of decision.terminate) {
            await addTerminateJob(queue, { vmName: machine.name, reason: 'state_lost', orphan: { group, vmIp: machine.ip ?? null } }, lossSweepTerminateJobId(group, machine.name, generation));
          }
          const sweep = { group, machines: machines.length, terminated: decision.terminate.length, spared: decision.spared };
          this.logger.warn({ ...sweep, generation }, "sweep after the loss of the pool's state: machines the pool does not know terminated");
          sweeps.push(sweep);
        }
        await vmm.markLossSwept(group, generation);
      } catch (err) {
        errors.push(err);
        this.logger.error({ err, group }, "sweep after the loss of the pool's state failed; tried again at the next cycle");
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, `sweepAfterLoss: ${errors.length} group(s) failed`);
    return sweeps;
  }

  /**
   * Adds the terminate job of a leaked machine. A job already pending for it is left alone; one
   * that finished while the machine is still listed (a failed or ineffective terminate) is retried.
   * Returns whether a job was added or retried.
   */
  private async terminateLeak(group: string, vmName: string, vmIp: string | null, firstSeen: number): Promise<boolean> {
    const queue = this.queue(TERMINATE_QUEUE);
    const jobId = leakTerminateJobId(group, vmName, firstSeen);
    const existing = await queue.getJob(jobId);
    if (existing) {
      const state = await existing.getState();
      if (state !== 'completed' && state !== 'failed') return false;
      await existing.retry(state);
      this.logger.warn({ group, vmName, jobId, previous: state }, 'orphan pass: leaked machine still listed; termination retried');
      return true;
    }
    await addTerminateJob(queue, { vmName, reason: 'orphan', orphan: { group, vmIp } }, jobId);
    this.logger.warn({ group, vmName, vmIp, firstSeen, jobId }, 'orphan pass: machine unknown to the pool; terminating it');
    return true;
  }

  /**
   * Takes the history sample of every group when one is due (one per historyPeriodMs): VMs per
   * state from the state indexes, waiting requests from the lines, and the p95 of the acquire waits
   * that ended since the last sample from the acquire wait histogram. O(groups); no VM is read.
   * Returns whether it took one.
   */
  async recordHistory(): Promise<boolean> {
    const vmm = this.vmm;
    const now = vmm.clock();
    const mark = parseAcquireWaitMark(await vmm.reader.historyAcquireMark());
    if (!isHistoryDue(mark?.t ?? null, now, this.options.historyPeriodMs)) return false;
    const groups = vmm.vmGroups;
    const def = sharedMetrics.acquireWait;
    const [counts, waiting, histograms] = await Promise.all([
      vmm.reader.stateCounts(groups),
      Promise.all(groups.map((g) => vmm.countDemand(g))),
      vmm.reader.sharedMetric(def.key).then((hash) => parseSharedHistogram(def, hash)),
    ]);
    const bounds = [...def.buckets];
    const assigned = histograms.find((h) => h.labels.outcome === 'assigned');
    const buckets = assigned ? assigned.buckets.map((b) => b.count) : bounds.map(() => 0).concat(0);
    const acquireP95 = quantileBetween(bounds, mark?.buckets ?? null, buckets, 0.95);
    const samples = new Map<string, HistorySample>(groups.map((g, i) => [g, { t: now, counts: counts[i]!, waiting: waiting[i]!, acquireP95 }]));
    await vmm.appendHistory(samples, { t: now, buckets }, HISTORY_SAMPLES);
    return true;
  }

  /**
   * One reconcile cycle: the sweep owed after a loss of the pool's state, then `steps` in Copr's
   * order: reclaim expired leases, remove old dirty VMs, check health (and re-check VMs checked
   * before the server start), spawn, finalize long health checks, terminate again; then the leak
   * and orphan pass, and the history sample. Runs under the cycle lock and returns `ran: false` at
   * once if another cycle holds it. Every step runs even if one fails; the errors are then thrown
   * together.
   */
  async doCycle(): Promise<CycleReport> {
    const counts = Object.fromEntries(CYCLE_STEPS.map((s) => [s, 0])) as Record<CycleStep, number>;
    const started = this.vmm.clock();
    const errors: unknown[] = [];
    const skipped: CycleStep[] = [];
    const outcome = await this.lock.run(async (lost) => {
      // The config's groups join the pool's registry (a group removed later is still known, and drains).
      await this.vmm.registerConfigGroups().catch((err: unknown) => errors.push(err));
      await this.vmm.refreshRemovedGroups().catch((err: unknown) => errors.push(err));
      // First, before this cycle spawns: machines from before a loss of the pool's state.
      await this.sweepAfterLoss().catch((err: unknown) => errors.push(err));
      let snapshot: PoolSnapshot | undefined;
      // Read once, and shared by the steps until one changes the pool.
      const pool = async () => (snapshot ??= await this.readSnapshot());
      for (const step of this.steps) {
        if (lost()) {
          skipped.push(step.name);
          continue;
        }
        try {
          counts[step.name] = await step.run(pool);
          if (counts[step.name] > 0 && !step.changesNoVm) snapshot = undefined;
        } catch (err) {
          snapshot = undefined;
          errors.push(err);
          this.logger.error({ err, step: step.name }, 'reconcile step failed');
        }
      }
      // A group removed from the config is forgotten once it drained: no VM, spawn or waiting request.
      for (const group of this.vmm.removedGroups.keys()) {
        if (lost()) break;
        const forgotten = await this.vmm.forgetGroupIfEmpty(group).catch((err: unknown) => {
          errors.push(err);
          return false;
        });
        if (forgotten) this.logger.info({ group }, 'a group removed from the config drained: its keys are deleted');
      }
    });
    if (!outcome.acquired) {
      this.logger.debug('another reconcile cycle is running; skipped');
      return { ran: false, counts, skipped: [...CYCLE_STEPS] };
    }
    // A cycle that changed nothing is routine (one every vm_cycle_timeout): debug, not info.
    const acted = this.steps.some((step) => counts[step.name] > 0 && !step.changesNoVm);
    const level = skipped.length > 0 || errors.length > 0 ? 'warn' : acted ? 'info' : 'debug';
    this.logger[level]({ counts, skipped, errors: errors.length, durationMs: this.vmm.clock() - started }, 'reconcile cycle');
    if (errors.length > 0) throw new AggregateError(errors, `reconcile cycle: ${errors.length} step(s) failed`);
    return { ran: true, counts, skipped };
  }

  /**
   * Applies the actions of one step. A VM that vanished or changed state since the snapshot is a
   * normal race (the scripts re-check the state) and is skipped; other errors fail the step after
   * the remaining actions ran. Returns the actions that were applied.
   */
  private async apply(step: CycleStep, actions: ReconcileAction[]): Promise<ReconcileAction[]> {
    const applied: ReconcileAction[] = [];
    const errors: unknown[] = [];
    // Health jobs go in bulk: one round trip per HEALTH_BULK_SIZE VMs, not one per VM.
    const health = actions.filter((a) => a.type === 'enqueueHealth');
    if (health.length > 0) {
      try {
        await addHealthJobs(this.queue(HEALTH_QUEUE), health.map((a) => a.vmName));
        applied.push(...health);
      } catch (err) {
        errors.push(err);
        this.logger.error({ err, step, vms: health.length }, 'reconcile: adding health jobs failed');
      }
    }
    for (const action of actions) {
      if (action.type === 'enqueueHealth') continue;
      try {
        if (await this.applyOne(action)) applied.push(action);
      } catch (err) {
        if (err instanceof VmDescriptorNotFound || (err instanceof VmError && action.type === 'removeStaleRecord')) {
          this.logger.debug({ action, err: (err as Error).message }, 'VM changed since the snapshot; skipped');
          continue;
        }
        errors.push(err);
        this.logger.error({ err, action, step }, 'reconcile action failed');
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, `${step}: ${errors.length} action(s) failed`);
    return applied;
  }

  private async applyOne(action: ReconcileAction): Promise<boolean> {
    const vmm = this.vmm;
    switch (action.type) {
      case 'terminate': {
        const acted = await vmm.startVmTermination(action.vmName, action.allowedPreState, action.reason);
        if (acted) this.logger.info({ vmName: action.vmName, reason: action.reason }, 'reconcile: termination requested');
        return acted;
      }
      case 'enqueueHealth':
        // Added in bulk by apply.
        return false;
      case 'markCheckFailed': {
        const marked = await vmm.markVmCheckFailed(action.vmName);
        if (marked) this.logger.warn({ vmName: action.vmName }, 'reconcile: health check took too long; marked failed');
        return marked;
      }
      case 'removeStaleRecord':
        await vmm.removeVmFromPool(action.vmName);
        this.logger.info({ vmName: action.vmName }, 'reconcile: stale terminating record removed (its IP belongs to another VM)');
        return true;
      case 'dropStaleSpawn':
        await vmm.finishSpawn(action.group, action.spawnId);
        this.logger.warn({ group: action.group, spawnId: action.spawnId }, 'reconcile: stale spawn dropped');
        return true;
      case 'spawn':
        return this.startSpawn(action.group, action.reason);
      case 'quotaFull':
        await this.noteQuotaFull(action.group, action.limit, action.units);
        // Nothing changed in the pool: not counted as an applied action.
        return false;
    }
  }

  /**
   * Records that the group's requests wait for resources, for three cycles (renewed while it lasts).
   * Not a spawn failure: the breaker is not touched.
   */
  private async noteQuotaFull(group: string, limit: 'group' | 'account', units: string[]): Promise<void> {
    const g = this.vmm.config.groups.find((c) => c.name === group);
    await this.vmm.quotas.markFull(group, { limit, units }, this.vmm.clock(), 3 * this.vmm.config.vm_cycle_timeout * 1000);
    this.logger.info({ group, limit, units, account: g?.account }, 'reconcile: spawn waits, resource limit reached (quota_full)');
  }

  /**
   * Registers the spawn in flight (if one more VM still fits the resource limits: false when not),
   * records the spawn start, then adds the spawn job.
   */
  private async startSpawn(group: string, reason: string): Promise<boolean> {
    const now = this.vmm.clock();
    const spawnId = `g${group}-${now}-${randomBytes(4).toString('hex')}`;
    const account = this.vmm.groupConfig(group).account;
    const blocked = await this.vmm.registerSpawn(group, spawnId, account === undefined ? undefined : this.accountLimits.get(account));
    if (blocked) {
      await this.noteQuotaFull(group, blocked.limit === 'group' ? 'group' : 'account', [blocked.unit]);
      return false;
    }
    await this.vmm.quotas.clearFull(group);
    await this.vmm.writeVmPoolInfo(group, LAST_VM_SPAWN_START, now);
    try {
      await addSpawnJob(this.queue(SPAWN_QUEUE), { group, spawnId, reason });
    } catch (err) {
      // No job will finish this spawn: do not let it hold a slot until it goes stale.
      await this.vmm.finishSpawn(group, spawnId).catch(() => undefined);
      throw err;
    }
    this.logger.info({ group, spawnId, reason }, 'reconcile: spawn requested');
    return true;
  }
}
