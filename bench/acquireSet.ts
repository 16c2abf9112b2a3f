/**
 * What a VM set (several VMs at once, all or nothing) costs, on a private redis-server that this
 * script starts and stops:
 * 1. through BullMQ: VmPoolClient.acquire (one VM) beside VmPoolClient.acquireSet of 1, 2, 4 and 8
 *    VMs, the jobs processed by the acquire process type's own worker (runWorker); serial samples
 *    alternate between the cases, so background load hits each alike; each sample's VMs are
 *    released before the next (dirty reuse after the warm-up: the repeat build's case);
 * 2. the script alone: VmManager.tryAcquireVm and VmManager.tryAcquireVmSet of 1, 2, 4 and 8 called
 *    directly (no waiter), at a pool of 64 and of 10,000 ready VMs (one pool each, measured in
 *    alternating rounds): clean (a new owner each time; its VMs replaced by new ones, untimed) and
 *    dirty (an owner whose sandbox has 8 ready VMs bound to it, released after each sample);
 * 3. contention: two sets of 2 VMs of two owners, then single requests of other owners, waiting in
 *    one group's line with no ready VM; VMs then become ready one at a time (addVm, check, passing
 *    result), each once the request it serves was served: how long a set waits from the moment the
 *    VM that completes it is ready, beside a single request's wait for its VM, and whether any
 *    single got a VM before both sets were served (the sets keep the VMs they can use).
 *   npm run bench:sets                      (BENCH_JSON=1: also one line `BENCH_RESULT <json>`)
 *   BENCH_SETS_SAMPLES (per case, part 1; default 500), BENCH_SETS_DIRECT_SAMPLES (per case and
 *   pool, part 2; default 1000), BENCH_SETS_ROUNDS (rounds of part 3; default 50)
 */
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { parseConfig, type ConfigInput } from '../src/config/index.js';
import { acquireProcessor, stopAcquireWaits } from '../src/processors/acquire.js';
import { VmPoolClient } from '../src/client/vmPoolClient.js';
import { VmManager } from '../src/pool/vmManager.js';
import { createJobContext, runWorker, type OwnedJobContext } from '../src/runtime/worker.js';
import type { Provider } from '../src/providers/types.js';
import type { VmAssignment, VmSetAssignment } from '../queues/acquire.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { addReadyVms } from './lib/fill.js';
import { startPrivateRedis } from './lib/redisServer.js';

/** The set sizes measured, in the order they are reported. */
export const SET_SIZES = [1, 2, 4, 8] as const;

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, not ${raw}`);
  return n;
}

const WARMUP = 30;
const PREFIX = 'bench-sets';
const logger = discardingLogger();

export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
}

function percentiles(samples: number[]): Percentiles {
  const sorted = [...samples].sort((x, y) => x - y);
  return { p50: percentile(sorted, 50), p95: percentile(sorted, 95), p99: percentile(sorted, 99) };
}

/** Part 1: one case of acquire through BullMQ; `size` 0 is a single acquire (VmPoolClient.acquire). */
export interface QueuedCase extends Percentiles {
  size: number;
  samples: number;
}

/** Part 2: one case (0: tryAcquireVm) at one pool size, p50 of the call's wall time in µs. */
export interface DirectCase {
  size: number;
  pool: number;
  cleanP50: number;
  dirtyP50: number;
}

/** Part 3's figures. */
export interface ContentionResult {
  rounds: number;
  /** Single requests behind the two sets, per round. */
  singles: number;
  /** ms from the passing check of the VM that completes a set to its acquireSet resolving. */
  setWait: Percentiles & { samples: number };
  /** ms from the passing check of a single's VM to its acquire resolving (the same wake, for one VM). */
  singleWait: Percentiles & { samples: number };
  /** Sets served at the 2nd or the 4th VM, as the line should serve them (of rounds × 2). */
  setsServedInTurn: number;
  /** Singles given one of the first 4 VMs, those the sets could use (0 when the sets keep them). */
  singlesBeforeSets: number;
  /** Requests not served when the round's VMs had all come (withdrawn then). */
  unserved: number;
}

export interface AcquireSetBenchResult {
  queued: { cases: QueuedCase[]; pool: number; concurrency: number };
  direct: { cases: DirectCase[]; pools: number[]; samples: number; evalshaP50: number };
  contention: ContentionResult;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ms = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e6;

/** Part 1: acquire and acquireSet through the acquire worker, alternating. */
async function benchQueued(ctx: OwnedJobContext, client: VmPoolClient, group: string, pool: number, samplesPerCase: number): Promise<QueuedCase[]> {
  const sizes = [0, ...SET_SIZES];
  const samples = new Map<number, number[]>(sizes.map((s) => [s, []]));
  let n = 0;
  for (let i = 0; i < WARMUP + samplesPerCase; i++) {
    for (const size of sizes) {
      n += 1;
      // Two owners, each with its own sandbox: each binds at most 8 VMs, the pool has room for both.
      const owner = `owner-${n % 2}`;
      const request = { owner, sandbox: `${owner}/x`, timeoutMs: 60_000 };
      let held: VmAssignment[];
      const t = process.hrtime.bigint();
      if (size === 0) {
        // No task id, as the set has no request id: both jobs get random ids, neither claims anything.
        held = [await client.acquire({ ...request, groups: [group] })];
      } else {
        const set: VmSetAssignment = await client.acquireSet({ ...request, vms: Array.from({ length: size }, () => ({ groups: [group] })) });
        held = set.vms;
      }
      const took = ms(t);
      if (i >= WARMUP) samples.get(size)!.push(took);
      if (held.length !== Math.max(1, size)) throw new Error(`asked ${Math.max(1, size)} VMs, got ${held.length}`);
      const released = await Promise.all(held.map((a) => client.release(a)));
      if (!released.every(Boolean)) throw new Error('a release was refused');
    }
  }
  const left = (await ctx.vmm.getVmsByGroupAndStates(group, ['ready'])).length;
  if (left !== pool) throw new Error(`pool drifted: ${left} ready VMs, expected ${pool}`);
  return sizes.map((size) => ({ size, samples: samples.get(size)!.length, ...percentiles(samples.get(size)!) }));
}

/** One pool of part 2, under its own prefix. */
interface DirectPool {
  size: number;
  vmm: VmManager;
  nextVm: number;
  nextOwner: number;
  clean: Map<number, number[]>;
  dirty: Map<number, number[]>;
}

const DIRTY_OWNERS = 4;
const ipOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

async function createDirectPool(redis: Redis, size: number): Promise<DirectPool> {
  const groups: ConfigInput['groups'] = [{ name: 'bench', max_vm_total: 100_000, max_vm_per_user: 100_000 }];
  const vmm = new VmManager({ groups }, { redis, prefix: `${PREFIX}-direct-${size}`, logger });
  await vmm.markServerStart();
  await addReadyVms(vmm, { count: size, group: 'bench', ipOf });
  // The dirty owners: each takes a set of 8 and gives it back, so that 8 ready VMs are bound to its sandbox.
  for (let o = 0; o < DIRTY_OWNERS; o++) {
    const attempt = await vmm.tryAcquireVmSet({ owner: `dirty-${o}`, sandbox: `dirty-${o}/x`, workerId: 'bench', items: Array.from({ length: 8 }, () => ({ groups: ['bench'] })) });
    if (attempt.status !== 'acquired') throw new Error(`the dirty owner's set: ${attempt.status}`);
    for (const { vm } of attempt.vms) await vmm.releaseVm(vm.vmName);
  }
  const cases = [0, ...SET_SIZES];
  return { size, vmm, nextVm: size, nextOwner: 0, clean: new Map(cases.map((c) => [c, []])), dirty: new Map(cases.map((c) => [c, []])) };
}

/** One direct attempt of case `size` (0: tryAcquireVm) for an owner; the VM names and the µs it took. */
async function directAttempt(vmm: VmManager, size: number, owner: string): Promise<{ names: string[]; micros: number }> {
  const request = { owner, sandbox: `${owner}/x`, workerId: 'bench' };
  const t = process.hrtime.bigint();
  if (size === 0) {
    const a = await vmm.tryAcquireVm({ ...request, groups: ['bench'] });
    const micros = ms(t) * 1000;
    if (a.status !== 'acquired') throw new Error(`tryAcquireVm: ${a.status}`);
    return { names: [a.vm.vmName], micros };
  }
  const a = await vmm.tryAcquireVmSet({ ...request, items: Array.from({ length: size }, () => ({ groups: ['bench'] })) });
  const micros = ms(t) * 1000;
  if (a.status !== 'acquired') throw new Error(`tryAcquireVmSet of ${size}: ${a.status}`);
  return { names: a.vms.map((v) => v.vm.vmName), micros };
}

/** `count` rounds of every case, clean then dirty, at one pool. */
async function sampleDirect(pool: DirectPool, count: number, record: boolean): Promise<void> {
  const { vmm } = pool;
  for (let i = 0; i < count; i++) {
    for (const size of pool.clean.keys()) {
      // Clean: a new owner; its VMs are replaced by new clean ones, so the pool keeps its size.
      const owner = `clean-${pool.nextOwner++}`;
      const clean = await directAttempt(vmm, size, owner);
      if (record) pool.clean.get(size)!.push(clean.micros);
      await Promise.all(clean.names.map((name) => vmm.startVmTermination(name, 'in_use').then(() => vmm.removeVmFromPool(name))));
      await addReadyVms(vmm, { from: pool.nextVm, count: clean.names.length, group: 'bench', ipOf });
      pool.nextVm += clean.names.length;
      // Dirty: an owner whose sandbox has 8 ready VMs bound to it; given back at once.
      const dirty = await directAttempt(vmm, size, `dirty-${(pool.nextOwner + size) % DIRTY_OWNERS}`);
      if (record) pool.dirty.get(size)!.push(dirty.micros);
      for (const name of dirty.names) await vmm.releaseVm(name);
    }
  }
}

/** Part 2: the scripts alone, at each pool size, in alternating rounds. */
async function benchDirect(url: string, sizes: readonly number[], samples: number): Promise<{ cases: DirectCase[]; evalshaP50: number }> {
  const redis = new Redis(url, { maxRetriesPerRequest: 2 });
  try {
    const noopSha = String(await redis.script('LOAD', 'return 1'));
    const evalsha: number[] = [];
    const pools: DirectPool[] = [];
    for (const size of sizes) {
      process.stderr.write(`sets: filling a pool of ${size} ready VMs...\n`);
      pools.push(await createDirectPool(redis, size));
    }
    process.stderr.write('sets: the scripts alone...\n');
    for (const pool of pools) await sampleDirect(pool, 20, false);
    const ROUND = 50;
    for (let done = 0; done < samples; done += ROUND) {
      const n = Math.min(ROUND, samples - done);
      for (let i = 0; i < n; i++) {
        const t = process.hrtime.bigint();
        await redis.evalsha(noopSha, 0);
        evalsha.push(ms(t) * 1000);
      }
      for (const pool of pools) await sampleDirect(pool, n, true);
    }
    const cases: DirectCase[] = [];
    for (const pool of pools) {
      const ready = (await pool.vmm.getVmsByGroupAndStates('bench', ['ready'])).length;
      if (ready !== pool.size) throw new Error(`pool drifted: ${ready} ready VMs, expected ${pool.size}`);
      for (const size of pool.clean.keys()) {
        const p50 = (xs: number[]) => percentile([...xs].sort((x, y) => x - y), 50);
        cases.push({ size, pool: pool.size, cleanP50: p50(pool.clean.get(size)!), dirtyP50: p50(pool.dirty.get(size)!) });
      }
      await pool.vmm.close();
    }
    return { cases, evalshaP50: percentile(evalsha.sort((x, y) => x - y), 50) };
  } finally {
    redis.disconnect();
  }
}

/**
 * Part 3: two sets of 2 and `singles` single requests waiting in `group`'s line, VMs becoming ready
 * one at a time; `rounds` times.
 */
async function benchContention(ctx: OwnedJobContext, client: VmPoolClient, group: string, rounds: number, singles: number): Promise<ContentionResult> {
  const setWaits: number[] = [];
  const singleWaits: number[] = [];
  let setsServedInTurn = 0;
  let singlesBeforeSets = 0;
  let unserved = 0;
  let ip = 0;
  for (let r = 0; r < rounds; r++) {
    const abort = new AbortController();
    // When each request was served, and at how many VMs.
    const served: { kind: 'set' | 'single'; at: number; t: bigint; vms: string[] }[] = [];
    let arrived = 0;
    const settle = <T>(kind: 'set' | 'single', p: Promise<T>, names: (x: T) => string[]) =>
      p.then(
        (x) => void served.push({ kind, at: arrived, t: process.hrtime.bigint(), vms: names(x) }),
        () => undefined,
      );
    const two = [{ groups: [group] }, { groups: [group] }];
    const waits: Promise<void>[] = [];
    const demand = async (n: number) => {
      const end = Date.now() + 10_000;
      while ((await ctx.vmm.countDemand(group)) < n) {
        if (Date.now() > end) throw new Error(`contention: ${n} requests did not wait in ${group}`);
        await delay(5);
      }
    };
    // The sets first, each in the line before the next request (the line is in order of arrival).
    for (const [k, owner] of ['set-a', 'set-b'].entries()) {
      waits.push(settle('set', client.acquireSet({ owner, sandbox: `${owner}/x`, vms: two, timeoutMs: 60_000 }, { signal: abort.signal }), (s) => s.vms.map((v) => v.vmName)));
      await demand(2 * (k + 1));
    }
    for (let s = 0; s < singles; s++) {
      const owner = `single-${s}`;
      waits.push(settle('single', client.acquire({ owner, sandbox: `${owner}/x`, groups: [group], timeoutMs: 60_000 }, { signal: abort.signal }), (a) => [a.vmName]));
      await demand(4 + s + 1);
    }
    // What each arrival should serve: nothing, the first set, nothing, the second set, then one single each.
    const expected = (i: number) => (i < 2 ? 0 : i < 4 ? 1 : i - 2);
    const readyAt: bigint[] = [];
    const names: string[] = [];
    for (let i = 1; i <= 4 + singles; i++) {
      const name = `line-${r}-${i}`;
      names.push(name);
      await ctx.vmm.addVmToPool(ipOf(++ip), name, group);
      await ctx.vmm.startVmCheck(name);
      arrived = i;
      readyAt[i] = process.hrtime.bigint();
      await ctx.vmm.recordHealthCheckResult(name, true);
      const end = Date.now() + 3_000;
      while (served.length < expected(i) && Date.now() < end) await delay(1);
      // A moment more, for a request served that should not have been.
      await delay(20);
    }
    const end = Date.now() + 3_000;
    while (served.length < 2 + singles && Date.now() < end) await delay(5);
    unserved += 2 + singles - served.length;
    abort.abort(new Error('round over'));
    await Promise.all(waits);
    for (const x of served) {
      const wait = Number(x.t - readyAt[x.at]!) / 1e6;
      if (x.kind === 'set') {
        setWaits.push(wait);
        if (x.at === 2 || x.at === 4) setsServedInTurn += 1;
      } else {
        singleWaits.push(wait);
        if (names.indexOf(x.vms[0]!) < 4) singlesBeforeSets += 1;
      }
    }
    // The round's VMs go: the next round starts with none ready.
    for (const vm of await ctx.vmm.getAllVmsInGroup(group)) {
      await ctx.vmm.startVmTermination(vm.vmName, null);
      await ctx.vmm.removeVmFromPool(vm.vmName);
    }
  }
  return {
    rounds,
    singles,
    setWait: { samples: setWaits.length, ...percentiles(setWaits) },
    singleWait: { samples: singleWaits.length, ...percentiles(singleWaits) },
    setsServedInTurn,
    singlesBeforeSets,
    unserved,
  };
}

export async function benchAcquireSet(): Promise<AcquireSetBenchResult> {
  const samples = positiveInt('BENCH_SETS_SAMPLES', 500);
  const directSamples = positiveInt('BENCH_SETS_DIRECT_SAMPLES', 1000);
  const rounds = positiveInt('BENCH_SETS_ROUNDS', 50);
  const redisServer = await startPrivateRedis();
  const producer = new Redis(redisServer.url, { maxRetriesPerRequest: 2 });
  const pool = 24;
  const concurrency = 8;
  try {
    // The safety sweep is a minute away: in part 3, every waiting request is served by the line's dispatch.
    const config = parseConfig(
      {
        redis: { url: redisServer.url, prefix: PREFIX },
        acquire_safety_retry: 60,
        groups: [
          { name: 'bench', max_vm_total: pool, max_vm_per_user: pool },
          { name: 'line', max_vm_total: 1000, max_vm_per_user: 1000 },
        ],
      },
      {},
    );
    // No machine is made or destroyed here: the provider is never asked.
    const provider = { type: 'none' } as unknown as Provider;
    const noCheck = () => {
      throw new Error('no health check in this bench');
    };
    const ctx = createJobContext(config, { logger, prefix: PREFIX, providerFactory: () => provider, healthCheckFactory: noCheck });
    await ctx.vmm.markServerStart();
    await addReadyVms(ctx.vmm, { count: pool, group: 'bench', ipOf: (i) => `10.250.${i >> 8}.${i & 255}` });
    const acquireWorker = runWorker(ctx, acquireProcessor, concurrency);
    await acquireWorker.worker.waitUntilReady();
    const client = new VmPoolClient({ redis: producer, prefix: PREFIX, logger });
    process.stderr.write('sets: acquire and acquireSet through BullMQ...\n');
    const queued = await benchQueued(ctx, client, 'bench', pool, samples);
    process.stderr.write('sets: two sets and single requests in one line...\n');
    const contention = await benchContention(ctx, client, 'line', rounds, 4);
    const closing = acquireWorker.close(10_000);
    await stopAcquireWaits(ctx);
    await closing;
    await client.close();
    await ctx.close();
    const pools = [64, 10_000];
    const direct = await benchDirect(redisServer.url, pools, directSamples);
    return { queued: { cases: queued, pool, concurrency }, direct: { ...direct, pools, samples: directSamples }, contention };
  } finally {
    producer.disconnect();
    await redisServer.stop();
  }
}

const label = (size: number) => (size === 0 ? 'single acquire' : `acquireSet of ${size}`);

/** The part's tables, as printed. */
export function acquireSetTables(r: AcquireSetBenchResult): string {
  const f = (x: number) => x.toFixed(3);
  const single = r.queued.cases.find((c) => c.size === 0);
  const queued = markdownTable(
    ['through BullMQ', 'p50 ms', 'p95 ms', 'p99 ms', 'p50 / single p50'],
    r.queued.cases.map((c) => [label(c.size), f(c.p50), f(c.p95), f(c.p99), single ? `${(c.p50 / single.p50).toFixed(2)}x` : '-']),
  );
  const [small, large] = r.direct.pools as [number, number];
  const at = (size: number, pool: number) => r.direct.cases.find((c) => c.size === size && c.pool === pool);
  const us = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(0));
  const direct = markdownTable(
    ['script alone (no waiter)', `clean µs, ${large.toLocaleString('en-US')} VMs`, `dirty µs, ${large.toLocaleString('en-US')} VMs`, `clean µs, ${small} VMs`, `dirty µs, ${small} VMs`],
    [0, ...SET_SIZES].map((size) => [
      size === 0 ? 'tryAcquireVm' : `tryAcquireVmSet of ${size}`,
      us(at(size, large)?.cleanP50),
      us(at(size, large)?.dirtyP50),
      us(at(size, small)?.cleanP50),
      us(at(size, small)?.dirtyP50),
    ]),
  );
  const c = r.contention;
  const contention = markdownTable(
    ['two sets of 2, then singles, in one line', 'p50 ms', 'p95 ms', 'p99 ms', 'samples'],
    [
      ['set: VM completing it ready -> served', f(c.setWait.p50), f(c.setWait.p95), f(c.setWait.p99), String(c.setWait.samples)],
      ['single: its VM ready -> served', f(c.singleWait.p50), f(c.singleWait.p95), f(c.singleWait.p99), String(c.singleWait.samples)],
    ],
  );
  return [
    queued,
    '',
    direct,
    '',
    `p50 of the call's wall time, ${r.direct.samples} samples per case and pool; an EVALSHA of a no-op script in the same rounds: ${us(r.direct.evalshaP50)} µs`,
    '',
    contention,
    '',
    `sets served at the VM that completes them (the 2nd, the 4th): ${c.setsServedInTurn} of ${2 * c.rounds}; singles given one of the first 4 VMs: ${c.singlesBeforeSets}; not served: ${c.unserved}`,
  ].join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const started = Date.now();
  const result = await benchAcquireSet();
  console.log(
    `bench:sets — private redis-server; acquire worker (concurrency ${result.queued.concurrency}) and producer in this process; ` +
      `serial samples after ${WARMUP} warm-up, alternating between the cases, each sample's VMs released before the next; ${result.queued.pool} ready VMs; ` +
      `contention: ${result.contention.rounds} rounds of two sets of 2 and ${result.contention.singles} singles\n`,
  );
  console.log(acquireSetTables(result));
  console.log(`\ntotal time ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify(result)}`);
}
