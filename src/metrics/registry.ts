import type { Queue } from 'bullmq';
import { Gauge, Registry } from 'prom-client';
import { ALL_VM_STATES } from '../pool/types.js';
import { minReadyAt } from '../reconcile/minReady.js';
import { targetWaitSummary } from '../poolView.js';
import type { VmManager } from '../pool/vmManager.js';
import { ALL_QUEUE_NAMES, QueueNames, type QueueName } from '../../queues/names.js';
import { parseSharedCounter, parseSharedHistogram, sharedMetrics, type SharedMetricDef } from './shared.js';

/** Job states reported per queue (BullMQ's getJobCounts types). */
export const QUEUE_JOB_STATES = ['waiting', 'prioritized', 'active', 'delayed', 'waiting-children', 'completed', 'failed'] as const;

export interface MetricsDeps {
  vmm: VmManager;
  /** A Queue handle per vmpool queue. */
  queue(name: QueueName): Queue;
}

interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/**
 * A metric whose values live in Redis (see shared.ts), read at scrape time. prom-client's own
 * Counter/Histogram count in process memory, which would show only this replica's share.
 */
class RedisBackedMetric {
  readonly name: string;
  readonly help: string;
  readonly type: 'counter' | 'histogram';
  readonly aggregator = 'sum';

  constructor(
    private readonly deps: MetricsDeps,
    private readonly def: SharedMetricDef,
  ) {
    this.name = def.name;
    this.help = def.help;
    this.type = def.type;
  }

  /**
   * Workers record the group's name. A label of digits is the index that a version-1 worker
   * recorded (names are never digits only): shown by the name the pool recorded for it when it
   * migrated (keys.legacyGroupNames), never by this process's config, whose list may differ.
   */
  private named(labels: Record<string, string>, legacy: ReadonlyMap<string, string>): Record<string, string> {
    if (labels.group === undefined || !/^\d+$/.test(labels.group)) return labels;
    const name = legacy.get(labels.group);
    return name === undefined ? labels : { ...labels, group: name };
  }

  async get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    const hash = await this.deps.vmm.reader.sharedMetric(this.def.key);
    const legacyIndexes = this.def.labels.includes('group' as never) && Object.keys(hash).some((f) => /^\["\d+"/.test(f));
    const legacy = legacyIndexes ? await this.deps.vmm.reader.legacyGroupNames() : new Map<string, string>();
    const values: MetricValue[] = [];
    if (this.def.type === 'counter') {
      for (const c of parseSharedCounter(this.def, hash)) values.push({ labels: this.named(c.labels, legacy), value: c.value });
    } else {
      for (const raw of parseSharedHistogram(this.def, hash)) {
        const h = { ...raw, labels: this.named(raw.labels, legacy) };
        for (const b of h.buckets) {
          values.push({ metricName: `${this.name}_bucket`, labels: { ...h.labels, le: b.le === Infinity ? '+Inf' : b.le }, value: b.count });
        }
        values.push({ metricName: `${this.name}_sum`, labels: h.labels, value: h.sum });
        values.push({ metricName: `${this.name}_count`, labels: h.labels, value: h.count });
      }
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  // The Registry calls these on reset/remove; values live in Redis, so there is nothing to reset here.
  reset(): void {}
}

/**
 * The web process's Prometheus registry (its own, not prom-client's global one). Everything is
 * read at scrape time: pool gauges from the per-group state indexes (SCARD, no scan of VMs), queue
 * depths from BullMQ, and the counters/histograms that workers keep in Redis.
 */
export function createMetricsRegistry(deps: MetricsDeps): Registry {
  const registry = new Registry();
  const { vmm } = deps;

  new Gauge({
    name: 'vmpool_vms',
    help: 'VMs in the pool by group and state (a group removed from the config counts while it drains)',
    labelNames: ['group', 'state'],
    registers: [registry],
    async collect() {
      this.reset();
      const groups = [...vmm.vmGroups, ...(await vmm.refreshRemovedGroups()).keys()];
      const counts = await vmm.reader.stateCounts(groups);
      groups.forEach((g, i) => {
        for (const state of ALL_VM_STATES) this.set({ group: g, state }, counts[i]![state]);
      });
    },
  });

  new Gauge({
    name: 'vmpool_group_limit',
    help: 'Configured limits per group (max_vm_total, max_vm_per_user, max_spawn_processes, and min_ready in force now)',
    labelNames: ['group', 'limit'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of vmm.config.groups) {
        for (const limit of ['max_vm_total', 'max_vm_per_user', 'max_spawn_processes'] as const) {
          this.set({ group: g.name, limit }, g[limit]);
        }
        // The value in force now, when min_ready follows a schedule or target_wait sizes it.
        const tw = g.target_wait ? await targetWaitSummary(vmm, g.name) : undefined;
        this.set({ group: g.name, limit: 'min_ready' }, tw ? tw.minReady : minReadyAt(g.min_ready, vmm.clock()));
      }
    },
  });

  new Gauge({
    name: 'vmpool_provider_breaker_open',
    help: "1 while a group's spawn circuit breaker is open (no spawns but a probe), else 0; error_class says why",
    labelNames: ['group', 'error_class'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of vmm.vmGroups) {
        const b = await vmm.reader.breaker(g);
        this.set({ group: g, error_class: b?.open ? b.errorClass : '' }, b?.open ? 1 : 0);
      }
    },
  });

  new Gauge({
    name: 'vmpool_target_wait',
    help: 'What target_wait sizes a warm pool from, per group: arrivals_per_minute, boot_seconds, and the resulting min_ready',
    labelNames: ['group', 'figure'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of vmm.config.groups) {
        const tw = g.target_wait ? await targetWaitSummary(vmm, g.name) : undefined;
        if (!tw) continue;
        this.set({ group: g.name, figure: 'arrivals_per_minute' }, tw.arrivalsPerMinute);
        this.set({ group: g.name, figure: 'boot_seconds' }, tw.bootSeconds);
        this.set({ group: g.name, figure: 'min_ready' }, tw.minReady);
      }
    },
  });

  new Gauge({
    name: 'vmpool_spawns_in_flight',
    help: 'Spawns started and not finished, by group',
    labelNames: ['group'],
    registers: [registry],
    async collect() {
      this.reset();
      const counts = await vmm.reader.spawnCounts(vmm.vmGroups);
      vmm.vmGroups.forEach((g, i) => this.set({ group: g }, counts[i]!));
    },
  });

  new Gauge({
    name: 'vmpool_group_drained',
    help: 'Whether a group spawns nothing (1): drained at run time (vmpool drain) or by max_vm_total 0',
    labelNames: ['group'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of vmm.vmGroups) {
        const drained = vmm.groupConfig(g).max_vm_total === 0 || (await vmm.drainedSince(g)) !== null;
        this.set({ group: g }, drained ? 1 : 0);
      }
    },
  });

  new Gauge({
    name: 'vmpool_group_vms_outdated',
    help: "VMs of a group (not terminating) made by an older launch configuration than the group's current one: a rollout replaces them",
    labelNames: ['group'],
    registers: [registry],
    async collect() {
      this.reset();
      const states = await vmm.launchStates();
      vmm.vmGroups.forEach((g, i) => this.set({ group: g }, states[i]!.outdated));
    },
  });

  new Gauge({
    name: 'vmpool_group_launch_info',
    help: "A group's current launch fingerprint (label fingerprint; 1), its revision (label revision), and whether this process's config matches it (label configured: the fingerprint of this process's config)",
    labelNames: ['group', 'fingerprint', 'revision', 'configured'],
    registers: [registry],
    async collect() {
      this.reset();
      const states = await vmm.launchStates();
      vmm.vmGroups.forEach((g, i) => {
        const p = states[i]!.published;
        if (p) this.set({ group: g, fingerprint: p.fingerprint, revision: String(p.revision), configured: vmm.launchFingerprint(g) }, 1);
      });
    },
  });

  new Gauge({
    name: 'vmpool_acquire_demand',
    help: 'Acquire requests waiting for a VM, by group',
    labelNames: ['group'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const g of vmm.vmGroups) this.set({ group: g }, await vmm.countDemand(g));
    },
  });

  new Gauge({
    name: 'vmpool_queue_jobs',
    help: 'Jobs per vmpool queue and state',
    labelNames: ['queue', 'state'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const name of ALL_QUEUE_NAMES) {
        const counts = await deps.queue(name).getJobCounts(...QUEUE_JOB_STATES);
        for (const state of QUEUE_JOB_STATES) this.set({ queue: name, state }, counts[state] ?? 0);
      }
    },
  });

  new Gauge({
    name: 'vmpool_reconcile_last_cycle_timestamp_seconds',
    help: 'When the last reconcile cycle finished (Unix time); 0 when none has',
    registers: [registry],
    async collect() {
      const [last] = await deps.queue(QueueNames.RECONCILE).getJobs(['completed'], 0, 0, false);
      this.set((last?.finishedOn ?? 0) / 1000);
    },
  });

  new Gauge({
    name: 'vmpool_reconcile_cycle_period_seconds',
    help: 'Seconds between reconcile cycles (vm_cycle_timeout)',
    registers: [registry],
    collect() {
      this.set(vmm.config.vm_cycle_timeout);
    },
  });

  for (const def of Object.values(sharedMetrics)) {
    registry.registerMetric(new RedisBackedMetric(deps, def) as unknown as Parameters<Registry['registerMetric']>[0]);
  }
  return registry;
}
