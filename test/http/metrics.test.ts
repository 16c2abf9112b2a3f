import { Queue, QueueEvents, type Job } from 'bullmq';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJobContext, runWorker, type OwnedJobContext, type RunningWorker } from '../../src/runtime/worker.js';
import { QUEUE_JOB_STATES } from '../../src/metrics/registry.js';
import { ALL_VM_STATES } from '../../src/pool/types.js';
import { ALL_QUEUE_NAMES, QueueNames, type QueueName } from '../../queues/names.js';
import { AcquireFailures, failAcquireJob, noVmAvailableReason } from '../../queues/acquire.js';
import type { Redis } from 'ioredis';
import { connect } from '../helpers/redis.js';
import { createWebKit, type WebKit } from './fixtures.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text exposition (the lines that are not comments). */
function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

function value(samples: Sample[], name: string, labels: Record<string, string>): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

describe('/metrics', () => {
  let kit: WebKit;
  let ctx: OwnedJobContext;
  const workers: RunningWorker[] = [];
  const queues = new Map<QueueName, Queue>();
  const queue = (name: QueueName) => {
    if (!queues.has(name)) queues.set(name, new Queue(name, { connection: kit.redis, prefix: kit.prefix }));
    return queues.get(name)!;
  };
  const scrape = async () => {
    const res = await kit.fetch('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    return parseMetrics(await res.text());
  };

  beforeAll(async () => {
    kit = await createWebKit('metrics');
    const fail = () => {
      throw new Error('the test processors need no provider');
    };
    ctx = createJobContext(kit.config, { prefix: kit.prefix, providerFactory: fail, healthCheckFactory: fail });
  });
  afterAll(async () => {
    for (const w of workers) await w.close(2_000);
    for (const q of queues.values()) await q.close();
    await ctx?.close();
    await kit?.close();
  });

  it('reports VMs by group and state as the pool holds them', async () => {
    await kit.addReady('m1', '10.3.0.1', 0);
    await kit.addReady('m2', '10.3.0.2', 0);
    await kit.addReady('m3', '10.3.0.3', 1);
    await kit.vmm.addVmToPool('10.3.0.4', 'm4', 'base');
    await kit.vmm.acquireVm({ groups: [0], owner: 'o', sandbox: 's', workerId: 'w' });
    await kit.vmm.startVmTermination('m3');
    const samples = await scrape();
    const vms = await kit.vmm.getAllVms();
    for (const [g, group] of kit.config.groups.entries()) {
      for (const state of ALL_VM_STATES) {
        const expected = vms.filter((v) => v.group === group.name && v.state === state).length;
        expect(value(samples, 'vmpool_vms', { group: group.name, state }), `${group.name}/${state}`).toBe(expected);
      }
    }
    expect(value(samples, 'vmpool_vms', { group: 'base', state: 'in_use' })).toBe(1);
    expect(value(samples, 'vmpool_group_limit', { group: 'base', limit: 'min_ready' })).toBe(1);
    expect(value(samples, 'vmpool_group_limit', { group: 'arm', limit: 'max_vm_total' })).toBe(3);
  });

  it('reports queue depths by state from BullMQ', async () => {
    await queue(QueueNames.RECONCILE).add('cycle', {}, { jobId: 'metrics-waiting-1' });
    await queue(QueueNames.RECONCILE).add('cycle', {}, { jobId: 'metrics-waiting-2' });
    await queue(QueueNames.RECONCILE).add('cycle', {}, { jobId: 'metrics-delayed-1', delay: 3_600_000 });
    const samples = await scrape();
    for (const name of ALL_QUEUE_NAMES) {
      const counts = await queue(name).getJobCounts(...QUEUE_JOB_STATES);
      for (const state of QUEUE_JOB_STATES) {
        expect(value(samples, 'vmpool_queue_jobs', { queue: name, state }), `${name}/${state}`).toBe(counts[state] ?? 0);
      }
    }
    expect(value(samples, 'vmpool_queue_jobs', { queue: QueueNames.RECONCILE, state: 'waiting' })).toBe(2);
    expect(value(samples, 'vmpool_queue_jobs', { queue: QueueNames.RECONCILE, state: 'delayed' })).toBe(1);
  });

  it('reports spawn, health, termination and acquire metrics that worker processes keep in Redis', async () => {
    // Real BullMQ workers on the real runtime (runWorker records the metrics on completed/failed);
    // the processors are the test's, so that outcomes are known.
    const spec = (queueName: QueueName, process: (job: Job) => Promise<unknown>) => ({
      queue: queueName,
      schema: z.any(),
      process: (job: Job) => process(job),
    });
    workers.push(
      runWorker(ctx, spec(QueueNames.SPAWN, async (job) => {
        if (String(job.data.spawnId).startsWith('bad')) throw new Error('provider refused');
        return { vmName: job.data.spawnId, vmIp: '10.0.0.1', group: job.data.group };
      }), 2),
      runWorker(ctx, spec(QueueNames.HEALTH, async (job) => ({ vmName: job.data.vmName, ok: job.data.vmName !== 'sick', outcome: job.data.vmName === 'sick' ? 'failed' : 'ok', detail: '' })), 2),
      runWorker(ctx, spec(QueueNames.TERMINATE, async (job) => ({ vmName: job.data.vmName, removed: true })), 2),
      runWorker(ctx, spec(QueueNames.ACQUIRE, async (job) => {
        // As the acquire processor fails a request that no VM came for.
        if (job.data.owner === 'nobody') throw await failAcquireJob(job, AcquireFailures.NO_VM_AVAILABLE, noVmAvailableReason('no VM within 1 ms'));
        return { vmName: 'x', vmIp: '10.0.0.9', group: 'base', leaseId: 'l', leaseExpiresAt: 1 };
      }), 2),
    );
    const jobs: [QueueName, unknown, number][] = [
      [QueueNames.SPAWN, { group: 'base', spawnId: 'ok-1' }, 1],
      [QueueNames.SPAWN, { group: 'base', spawnId: 'ok-2' }, 1],
      [QueueNames.SPAWN, { group: 'arm', spawnId: 'bad-1' }, 2], // one retry, then failed
      [QueueNames.HEALTH, { vmName: 'fine-1' }, 1],
      [QueueNames.HEALTH, { vmName: 'fine-2' }, 1],
      [QueueNames.HEALTH, { vmName: 'sick' }, 1],
      [QueueNames.TERMINATE, { vmName: 't1', reason: 'operator' }, 1],
      [QueueNames.TERMINATE, { vmName: 't2', reason: 'operator' }, 1],
      [QueueNames.TERMINATE, { vmName: 't3', reason: 'dirty_timeout' }, 1],
      [QueueNames.ACQUIRE, { owner: 'alice', sandbox: 's', groups: [0] }, 1],
      [QueueNames.ACQUIRE, { owner: 'nobody', sandbox: 's', groups: [0] }, 1],
    ];
    const finished: Promise<unknown>[] = [];
    let assignedJobId = '';
    const events = new Map<QueueName, QueueEvents>();
    const eventConnections: Redis[] = [];
    for (const name of [QueueNames.SPAWN, QueueNames.HEALTH, QueueNames.TERMINATE, QueueNames.ACQUIRE]) {
      const connection = connect({ maxRetriesPerRequest: null });
      eventConnections.push(connection);
      const ev = new QueueEvents(name, { connection, prefix: kit.prefix });
      await ev.waitUntilReady();
      events.set(name, ev);
    }
    try {
      for (const [name, data, attempts] of jobs) {
        const job = await queue(name).add('job', data, { attempts, backoff: { type: 'fixed', delay: 10 } });
        if (name === QueueNames.ACQUIRE && (data as { owner: string }).owner === 'alice') assignedJobId = job.id!;
        finished.push(job.waitUntilFinished(events.get(name)!, 15_000).catch(() => 'failed'));
      }
      await Promise.all(finished);
    } finally {
      for (const ev of events.values()) await ev.close();
      for (const c of eventConnections) await c.quit().catch(() => c.disconnect());
    }

    const expected: [string, Record<string, string>, number][] = [
      ['vmpool_spawns_total', { group: 'base', outcome: 'ok', error_class: '' }, 2],
      ['vmpool_spawns_total', { group: 'arm', outcome: 'retry', error_class: 'unclassified' }, 1],
      ['vmpool_spawns_total', { group: 'arm', outcome: 'failed', error_class: 'unclassified' }, 1],
      ['vmpool_spawn_duration_seconds_count', { group: 'base', outcome: 'ok' }, 2],
      ['vmpool_spawn_duration_seconds_bucket', { group: 'base', outcome: 'ok', le: '+Inf' }, 2],
      ['vmpool_health_checks_total', { outcome: 'ok' }, 2],
      ['vmpool_health_checks_total', { outcome: 'failed' }, 1],
      ['vmpool_terminations_total', { reason: 'operator', outcome: 'ok' }, 2],
      ['vmpool_terminations_total', { reason: 'dirty_timeout', outcome: 'ok' }, 1],
      ['vmpool_acquire_wait_seconds_count', { outcome: 'assigned' }, 1],
      ['vmpool_acquire_wait_seconds_count', { outcome: 'no_vm' }, 1],
    ];
    // The runtime records after BullMQ's events; wait (bounded) until the last write landed.
    let samples: Sample[] = [];
    for (let i = 0; i < 50; i += 1) {
      samples = await scrape();
      if (expected.every(([n, l, v]) => value(samples, n, l) === v)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const [n, l, v] of expected) expect(value(samples, n, l), `${n} ${JSON.stringify(l)}`).toBe(v);
    // Histogram buckets are cumulative and end at the count.
    const buckets = samples.filter((s) => s.name === 'vmpool_acquire_wait_seconds_bucket' && s.labels.outcome === 'assigned');
    expect(buckets.length).toBeGreaterThan(5);
    for (let i = 1; i < buckets.length; i += 1) expect(buckets[i]!.value).toBeGreaterThanOrEqual(buckets[i - 1]!.value);
    // The one assigned acquire waited from its enqueue to its finish, as BullMQ recorded them.
    const assigned = (await queue(QueueNames.ACQUIRE).getJob(assignedJobId))!;
    expect(assigned.finishedOn).toBeGreaterThanOrEqual(assigned.timestamp);
    const waited = (assigned.finishedOn! - assigned.timestamp) / 1000;
    expect(value(samples, 'vmpool_acquire_wait_seconds_sum', { outcome: 'assigned' })).toBeCloseTo(waited, 6);
    // It lies in the first bucket whose bound is at least the wait, and in none below.
    const firstIn = buckets.find((b) => b.value === 1)!;
    expect(Number(firstIn.labels.le)).toBeGreaterThanOrEqual(waited);
    const below = buckets.filter((b) => b.value === 0).map((b) => Number(b.labels.le));
    for (const le of below) expect(le).toBeLessThan(waited);
  });
});
