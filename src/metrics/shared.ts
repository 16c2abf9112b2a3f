import type { Job } from 'bullmq';
import type { RedisConnection } from '../redis.js';
import { writeSharedMetrics, type MetricIncrement } from '../pool/telemetry.js';
import { AcquireFailures, acquireFailureOf } from '../../queues/acquire.js';
import { QueueNames, type QueueName } from '../../queues/names.js';

/**
 * Metrics produced by worker processes (any replica, any machine) and reported by every `web`
 * process. They are kept in Redis, one hash per metric, so that a scrape of any web replica sees
 * the whole cluster and a restart loses nothing:
 *   counter   field `<label values as JSON>` -> count
 *   histogram fields `<labels>\tb\t<bucket index>` (non-cumulative), `<labels>\tsum`, `<labels>\tcount`
 */
export interface SharedMetricDef {
  key: string;
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  labels: readonly string[];
  /** Upper bounds of the histogram buckets, in seconds (+Inf is implied). */
  buckets?: readonly number[];
}

export const sharedMetrics = {
  acquireWait: {
    key: 'acquire_wait',
    name: 'vmpool_acquire_wait_seconds',
    help: 'Time from an acquire request to its outcome (assigned, no_vm, error)',
    type: 'histogram',
    labels: ['outcome'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
  },
  spawnDuration: {
    key: 'spawn_duration',
    name: 'vmpool_spawn_duration_seconds',
    help: 'Duration of spawn attempts by group and outcome (ok, retry, failed)',
    type: 'histogram',
    labels: ['group', 'outcome'],
    buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200],
  },
  spawns: {
    key: 'spawns',
    name: 'vmpool_spawns_total',
    help: 'Spawn attempts by group, outcome (ok, retry, failed) and error_class of a failure (quota, capacity, rate_limit, auth, transient, invalid_request, unclassified)',
    type: 'counter',
    labels: ['group', 'outcome', 'error_class'],
  },
  healthChecks: {
    key: 'health_checks',
    name: 'vmpool_health_checks_total',
    help: 'Health check jobs by outcome (ok, failed, terminating, ignored, error)',
    type: 'counter',
    labels: ['outcome'],
  },
  terminations: {
    key: 'terminations',
    name: 'vmpool_terminations_total',
    help: 'Termination attempts by reason and outcome (ok, retry, failed)',
    type: 'counter',
    labels: ['reason', 'outcome'],
  },
} as const satisfies Record<string, SharedMetricDef>;

function labelField(def: SharedMetricDef, labels: Record<string, string>): string {
  return JSON.stringify(def.labels.map((l) => labels[l] ?? ''));
}

/** The increments of one observation (histogram, in seconds) or one count (counter). */
function observe(out: MetricIncrement[], def: SharedMetricDef, labels: Record<string, string>, seconds = 0): void {
  const field = labelField(def, labels);
  if (def.type === 'counter') {
    out.push({ metric: def.key, field, by: 1 });
    return;
  }
  const buckets = def.buckets ?? [];
  let index = buckets.findIndex((b) => seconds <= b);
  if (index === -1) index = buckets.length;
  out.push({ metric: def.key, field: `${field}\tb\t${index}`, by: 1 });
  out.push({ metric: def.key, field: `${field}\tsum`, by: seconds, float: true });
  out.push({ metric: def.key, field: `${field}\tcount`, by: 1 });
}

export type JobOutcome = 'completed' | 'failed';

/** Whether a failed job will not be tried again. */
function isFinalFailure(job: Job, err: Error | undefined): boolean {
  if (err?.name === 'UnrecoverableError') return true;
  return job.attemptsMade >= (job.opts.attempts ?? 1);
}

const seconds = (ms: number) => Math.max(0, ms) / 1000;

/**
 * Records the metrics of one finished job attempt. Called by the worker runtime on BullMQ's
 * `completed` and `failed` events, in the process that ran the job, so each attempt counts once.
 */
export async function recordJobMetrics(
  redis: RedisConnection,
  prefix: string,
  queue: QueueName,
  job: Job,
  outcome: JobOutcome,
  detail: { result?: unknown; error?: Error; now: number },
): Promise<void> {
  const increments: MetricIncrement[] = [];
  const data = (job.data ?? {}) as Record<string, unknown>;
  const finishedAt = job.finishedOn ?? detail.now;
  const attemptOutcome = outcome === 'completed' ? 'ok' : isFinalFailure(job, detail.error) ? 'failed' : 'retry';
  switch (queue) {
    case QueueNames.ACQUIRE: {
      const noVm = outcome === 'failed' && acquireFailureOf(job) === AcquireFailures.NO_VM_AVAILABLE;
      const result = outcome === 'completed' ? 'assigned' : noVm ? 'no_vm' : 'error';
      observe(increments, sharedMetrics.acquireWait, { outcome: result }, seconds(finishedAt - job.timestamp));
      break;
    }
    case QueueNames.SPAWN: {
      const group = String(data.group ?? '');
      const started = job.processedOn ?? finishedAt;
      observe(increments, sharedMetrics.spawnDuration, { group, outcome: attemptOutcome }, seconds(finishedAt - started));
      const errorClass = outcome === 'completed' ? '' : ((detail.error as { errorClass?: unknown } | undefined)?.errorClass as string | undefined) ?? 'unclassified';
      observe(increments, sharedMetrics.spawns, { group, outcome: attemptOutcome, error_class: errorClass });
      break;
    }
    case QueueNames.HEALTH: {
      const result = detail.result as { outcome?: unknown } | undefined;
      const checkOutcome = outcome === 'completed' && typeof result?.outcome === 'string' ? result.outcome : 'error';
      observe(increments, sharedMetrics.healthChecks, { outcome: checkOutcome });
      break;
    }
    case QueueNames.TERMINATE: {
      const reason = typeof data.reason === 'string' ? data.reason : 'other';
      observe(increments, sharedMetrics.terminations, { reason, outcome: attemptOutcome });
      break;
    }
    default:
      return;
  }
  await writeSharedMetrics(redis, prefix, increments);
}

export interface SharedCounterValue {
  labels: Record<string, string>;
  value: number;
}

export interface SharedHistogramValue {
  labels: Record<string, string>;
  /** Cumulative counts per bucket upper bound, the last one +Inf. */
  buckets: { le: number; count: number }[];
  sum: number;
  count: number;
}

function parseLabels(def: SharedMetricDef, field: string): Record<string, string> | null {
  try {
    const values = JSON.parse(field) as unknown;
    if (!Array.isArray(values)) return null;
    return Object.fromEntries(def.labels.map((l, i) => [l, String(values[i] ?? '')]));
  } catch {
    return null;
  }
}

/** A counter's values from its hash (PoolReader.sharedMetric). */
export function parseSharedCounter(def: SharedMetricDef, hash: Record<string, string>): SharedCounterValue[] {
  const out: SharedCounterValue[] = [];
  for (const [field, value] of Object.entries(hash)) {
    const labels = parseLabels(def, field);
    if (labels) out.push({ labels, value: Number(value) });
  }
  return out;
}

/** A histogram's series from its hash (PoolReader.sharedMetric). */
export function parseSharedHistogram(def: SharedMetricDef, hash: Record<string, string>): SharedHistogramValue[] {
  const bounds = [...(def.buckets ?? []), Number.POSITIVE_INFINITY];
  const series = new Map<string, { perBucket: number[]; sum: number; count: number }>();
  const entry = (labelsField: string) => {
    let s = series.get(labelsField);
    if (!s) {
      s = { perBucket: bounds.map(() => 0), sum: 0, count: 0 };
      series.set(labelsField, s);
    }
    return s;
  };
  for (const [field, value] of Object.entries(hash)) {
    const parts = field.split('\t');
    const s = entry(parts[0]!);
    if (parts[1] === 'b') {
      const i = Number(parts[2]);
      if (Number.isInteger(i) && i >= 0 && i < bounds.length) s.perBucket[i]! += Number(value);
    } else if (parts[1] === 'sum') s.sum = Number(value);
    else if (parts[1] === 'count') s.count = Number(value);
  }
  const out: SharedHistogramValue[] = [];
  for (const [field, s] of series) {
    const labels = parseLabels(def, field);
    if (!labels) continue;
    let running = 0;
    const buckets = bounds.map((le, i) => ({ le, count: (running += s.perBucket[i]!) }));
    out.push({ labels, buckets, sum: s.sum, count: s.count });
  }
  return out;
}
