/**
 * Acquire-path benchmark, on a private redis-server that this script starts and stops:
 *   (a) a raw BullMQ no-op job: add -> processed -> completion seen by the producer
 *       (QueueEvents + job.waitUntilFinished, the mechanism VmPoolClient uses);
 *   (b) VmPoolClient.acquire followed by VmPoolClient.release on a ready pool, the job processed
 *       by the acquire process type's own worker (runWorker: payload check, metrics, processor).
 * Both run in this one process under the same conditions: a BullMQ Worker of the same concurrency
 * on its own connection, the producer on another, the same retention options.
 * Then the fair acquire line under load (lib/acquireLine.ts): a light owner's time-to-VM with a
 * heavy owner's 5,000 requests waiting, Redis commands per freed VM with 2,000 waiting, and a real
 * acquire process's RSS with 10,000 waiting.
 *   npm run bench:acquire
 */
import { randomUUID } from 'node:crypto';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { parseConfig } from '../src/config/index.js';
import { acquireProcessor, stopAcquireWaits } from '../src/processors/acquire.js';
import { VmPoolClient } from '../src/client/vmPoolClient.js';
import { createJobContext, runWorker } from '../src/runtime/worker.js';
import { ACQUIRE_QUEUE, acquireJobOptions } from '../queues/acquire.js';
import { blockingConnectionTemplate } from '../src/redis.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { startPrivateRedis } from './lib/redisServer.js';
import { measureAcquireLine } from './lib/acquireLine.js';

const WARMUP = 100;
const SERIAL = 1_000;
const PARALLEL = 32;
const PARALLEL_SECONDS = 4;
const CONCURRENCY = 50;
const POOL = 200;
const TARGET_P50_RATIO = 1.5;
const TARGET_THROUGHPUT_RATIO = 0.5;
const PREFIX = 'bench';

// The pool logs every acquire at info, as in production.
const logger = discardingLogger();

interface Measured {
  p50: number;
  p99: number;
  perSecond: number;
}

type Cycle = () => Promise<unknown>;

/**
 * Measures two cycles under the same conditions: serial samples alternate between them, and the
 * parallel phase alternates windows of PARALLEL loops, so background load hits both alike.
 */
async function measurePair(a: Cycle, b: Cycle): Promise<[Measured, Measured]> {
  for (let i = 0; i < WARMUP; i++) {
    await a();
    await b();
  }
  const samples: [number[], number[]] = [[], []];
  const cycles = [a, b];
  for (let i = 0; i < SERIAL; i++) {
    for (const k of [0, 1]) {
      const t = process.hrtime.bigint();
      await cycles[k]!();
      samples[k]!.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
  }
  const done = [0, 0];
  const seconds = [0, 0];
  for (let w = 0; w < PARALLEL_SECONDS * 2; w++) {
    const k = w % 2;
    const end = Date.now() + 500;
    const started = process.hrtime.bigint();
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (Date.now() < end) {
          await cycles[k]!();
          done[k]! += 1;
        }
      }),
    );
    seconds[k]! += Number(process.hrtime.bigint() - started) / 1e9;
  }
  return [0, 1].map((k) => {
    const sorted = samples[k]!.sort((x, y) => x - y);
    return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), perSecond: done[k]! / seconds[k]! };
  }) as [Measured, Measured];
}

async function main(): Promise<void> {
  const started = Date.now();
  const redisServer = await startPrivateRedis();
  const url = redisServer.url;
  const producer = new Redis(url, { maxRetriesPerRequest: 2 });
  const workerConnections: Redis[] = [];
  const workerConnection = () => {
    const c = new Redis(url, { maxRetriesPerRequest: null });
    workerConnections.push(c);
    return c;
  };
  try {
    // (a) no-op job.
    const noopQueue = new Queue('bench-noop', { connection: producer, prefix: PREFIX });
    noopQueue.setMaxListeners(0);
    const noopEvents = new QueueEvents('bench-noop', { connection: blockingConnectionTemplate(producer), prefix: PREFIX });
    await noopEvents.waitUntilReady();
    const noopWorker = new Worker('bench-noop', async () => ({ ok: true }), {
      connection: workerConnection(),
      prefix: PREFIX,
      concurrency: CONCURRENCY,
    });
    await noopWorker.waitUntilReady();

    // (b) acquire + release on a ready pool.
    const config = parseConfig(
      {
        redis: { url, prefix: PREFIX },
        concurrency: { acquire: CONCURRENCY },
        groups: [{ name: 'bench', archs: ['x86_64'], max_vm_total: POOL, max_vm_per_user: POOL }],
      },
      {},
    );
    const fail = () => {
      throw new Error('no provider in the benchmark');
    };
    const ctx = createJobContext(config, { logger, prefix: PREFIX, providerFactory: fail, healthCheckFactory: fail });
    await ctx.vmm.markServerStart();
    for (let i = 0; i < POOL; i++) {
      const name = `vm-${i}`;
      await ctx.vmm.addVmToPool(`10.0.${i >> 8}.${i & 255}`, name, 'bench');
      await ctx.vmm.startVmCheck(name);
      await ctx.vmm.recordHealthCheckResult(name, true);
    }
    const acquireWorker = runWorker(ctx, acquireProcessor, CONCURRENCY);
    await acquireWorker.worker.waitUntilReady();
    const client = new VmPoolClient({ redis: producer, prefix: PREFIX, logger });
    let n = 0;
    const acquireOnly: number[] = [];
    let serialPhase = true;
    const [noop, acquire] = await measurePair(
      async () => {
        const job = await noopQueue.add('noop', { n: 1 }, { ...acquireJobOptions, jobId: `noop-${randomUUID()}` });
        await job.waitUntilFinished(noopEvents);
      },
      async () => {
        n += 1;
        const t = process.hrtime.bigint();
        const a = await client.acquire({ owner: `owner-${n % 8}`, sandbox: 'bench/x', arch: 'x86_64', taskId: `task-${n}` });
        if (serialPhase) acquireOnly.push(Number(process.hrtime.bigint() - t) / 1e6);
        if (n === WARMUP + SERIAL) serialPhase = false;
        if (!(await client.release(a))) throw new Error(`release of ${a.vmName} refused`);
      },
    );
    await noopWorker.close();
    await noopEvents.close();
    await noopQueue.close();
    const closing = acquireWorker.close(10_000);
    await stopAcquireWaits(ctx);
    await closing;
    await client.close();
    await ctx.close();
    // Acquire alone, in the serial phase after warm-up.
    const serialAcquire = acquireOnly.slice(WARMUP).sort((x, y) => x - y);
    const acqP50 = percentile(serialAcquire, 50);
    const acqP99 = percentile(serialAcquire, 99);

    const f = (x: number) => x.toFixed(3);
    const r = (x: number) => `${x.toFixed(2)}x`.padStart(7);
    const lines = [
      `bench:acquire — private redis-server ${url}; worker (concurrency ${CONCURRENCY}) and producer in this process`,
      `serial: ${SERIAL} cycles each after ${WARMUP} warm-up, alternating; parallel: ${PARALLEL} loops, alternating 0.5 s windows, ${PARALLEL_SECONDS} s each; pool of ${POOL} ready VMs`,
      '',
      markdownTable(
        ['case', 'p50 ms', 'p99 ms', 'cycles/s'],
        [
          ['no-op job', f(noop.p50), f(noop.p99), noop.perSecond.toFixed(0)],
          ['acquire (alone)', f(acqP50), f(acqP99), '-'],
          ['acquire + release', f(acquire.p50), f(acquire.p99), acquire.perSecond.toFixed(0)],
        ],
      ),
      '',
      `acquire p50 / no-op p50:            ${r(acqP50 / noop.p50)}  (target <= ${TARGET_P50_RATIO}x)  ${acqP50 / noop.p50 <= TARGET_P50_RATIO ? 'OK' : 'MISSED'}`,
      `acquire+release p50 / no-op p50:    ${r(acquire.p50 / noop.p50)}`,
      `acquire+release/s / no-op/s:        ${r(acquire.perSecond / noop.perSecond)}  (target >= ${TARGET_THROUGHPUT_RATIO}x)  ${acquire.perSecond / noop.perSecond >= TARGET_THROUGHPUT_RATIO ? 'OK' : 'MISSED'}`,
    ];
    console.log(lines.join('\n'));

    const line = await measureAcquireLine(url);
    const lineLines = [
      '',
      'the fair acquire line (waiting requests parked, one wake per freed VM)',
      '',
      markdownTable(
        ['case', 'p50 ms', 'p99 ms'],
        [
          ['light owner, nobody waiting', f(line.lightIdle.p50), f(line.lightIdle.p99)],
          [`light owner, heavy owner ${line.heavyWaiting} waiting`, f(line.lightBusy.p50), f(line.lightBusy.p99)],
        ],
      ),
      '',
      `light p50 busy / idle:               ${r(line.lightBusy.p50 / line.lightIdle.p50)}  (target <= 2x)  ${line.lightBusy.p50 / line.lightIdle.p50 <= 2 ? 'OK' : 'MISSED'}`,
      `light p99 busy / idle:               ${r(line.lightBusy.p99 / line.lightIdle.p99)}  (target <= 2x)  ${line.lightBusy.p99 / line.lightIdle.p99 <= 2 ? 'OK' : 'MISSED'}`,
      `Redis commands per freed VM, ${line.waitingForCommands} waiting: ${line.commandsPerFreedVm.toFixed(1)}  (target < 50; every command Redis ran, scripts' and BullMQ's included)  ${line.commandsPerFreedVm < 50 ? 'OK' : 'MISSED'}`,
      `acquire process RSS, ${line.waitingForRss} waiting:    ${line.rssMb.toFixed(1)} MB (idle ${line.rssIdleMb.toFixed(1)} MB); Redis ${line.redisMbPerThousand.toFixed(2)} MB per 1,000 waiting`,
      `total time ${((Date.now() - started) / 1000).toFixed(1)} s`,
    ];
    console.log(lineLines.join('\n'));
    if (process.env.BENCH_JSON === '1') {
      // For npm run bench (bench/run.ts): the fair line's figures as rows.
      const busyRatio = line.lightBusy.p50 / line.lightIdle.p50;
      const fairness = [
        { figure: `light owner p50 with ${line.heavyWaiting} heavy waiting / nobody waiting (${f(line.lightBusy.p50)} / ${f(line.lightIdle.p50)} ms)`, target: '<= 2x', measured: busyRatio, pass: busyRatio <= 2 },
        { figure: `light owner p99 with ${line.heavyWaiting} heavy waiting / nobody waiting (${f(line.lightBusy.p99)} / ${f(line.lightIdle.p99)} ms)`, target: '<= 2x', measured: line.lightBusy.p99 / line.lightIdle.p99, pass: line.lightBusy.p99 / line.lightIdle.p99 <= 2 },
        { figure: `Redis commands per freed VM, ${line.waitingForCommands} waiting`, target: '< 50', measured: line.commandsPerFreedVm, pass: line.commandsPerFreedVm < 50 },
        { figure: `acquire process RSS MB, ${line.waitingForRss} waiting (idle ${line.rssIdleMb.toFixed(1)})`, measured: line.rssMb },
      ];
      console.log(`BENCH_RESULT ${JSON.stringify({ fairness })}`);
    }
  } finally {
    for (const c of workerConnections) c.disconnect();
    producer.disconnect();
    await redisServer.stop();
  }
}

await main();
