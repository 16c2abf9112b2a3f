/**
 * What check_on_acquire adds to an acquire, on a private redis-server that this script starts and
 * stops: VmPoolClient.acquire through the acquire process type's own worker (runWorker), on three
 * groups of ready VMs at 127.0.0.1:
 * - `none`: no check_on_acquire;
 * - `tcp`: `check: { type: tcp }` and `check_on_acquire: tcp`, against a TCP listener of this process;
 * - `ssh`: `check: { type: ssh }` (ssh2, accept-new host keys kept in the VM record) and
 *   `check_on_acquire: ssh`, against a private OpenSSH sshd on loopback (bench/lib/sshd.ts); left
 *   out, and said so, when sshd cannot start.
 * The checks are the real ones (createHealthCheck, as the workers build them). Serial samples
 * alternate between the groups, so background load hits each alike; each acquire is released
 * before the next.
 *   npm run bench:check-on-acquire          (BENCH_JSON=1: also one line `BENCH_RESULT <json>`)
 *   BENCH_CHECK_SAMPLES=200 ...              (samples per group; default 400)
 */
import { createServer } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { parseConfig, type ConfigInput } from '../src/config/index.js';
import { createHealthCheck } from '../src/health/index.js';
import type { Provider } from '../src/providers/types.js';
import { acquireProcessor, stopAcquireWaits } from '../src/processors/acquire.js';
import { VmPoolClient } from '../src/client/vmPoolClient.js';
import { createJobContext, runWorker } from '../src/runtime/worker.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { freePort, startPrivateRedis } from './lib/redisServer.js';
import { startBenchSshd, type BenchSshd } from './lib/sshd.js';

const WARMUP = 30;
const SAMPLES = Number(process.env.BENCH_CHECK_SAMPLES ?? 400);
const POOL = 20;
const PREFIX = 'bench-check';
const logger = discardingLogger();

/** The cases, in the order they are measured and reported. */
export const CHECK_CASES = ['none', 'tcp', 'ssh'] as const;
export type CheckCase = (typeof CHECK_CASES)[number];

export interface CheckCaseResult {
  case: CheckCase;
  samples: number;
  p50: number;
  p95: number;
  p99: number;
  /** VMs that failed the check at hand-over (terminated, the next one tried): 0 on a quiet machine. */
  failedChecks: number;
}

export interface CheckOnAcquireResult {
  cases: CheckCaseResult[];
  /** Why a case was left out (sshd could not start), by case. */
  skipped: Partial<Record<CheckCase, string>>;
  /** Ready VMs per group, acquire worker concurrency. */
  pool: number;
  concurrency: number;
}

export async function benchCheckOnAcquire(): Promise<CheckOnAcquireResult> {
  if (!Number.isInteger(SAMPLES) || SAMPLES < 1) throw new Error(`BENCH_CHECK_SAMPLES must be a positive integer, not ${process.env.BENCH_CHECK_SAMPLES}`);
  const redisServer = await startPrivateRedis();
  const listener = createServer((socket) => socket.destroy());
  const port = await freePort();
  await new Promise<void>((resolve) => listener.listen(port, '127.0.0.1', resolve));
  const producer = new Redis(redisServer.url, { maxRetriesPerRequest: 2 });
  const skipped: CheckOnAcquireResult['skipped'] = {};
  let sshd: BenchSshd | undefined;
  try {
    sshd = await startBenchSshd('check-on-acquire');
  } catch (err) {
    skipped.ssh = `no sshd: ${(err as Error).message.split('\n')[0]}`;
  }
  const concurrency = 4;
  try {
    // A loaded machine delays handshakes: a generous timeout, so that the figures are the check's
    // time, not failures (a failed check would terminate a VM of the bench's fixed pool).
    const common = { max_vm_total: POOL, max_vm_per_user: POOL, allowed_networks: ['127.0.0.0/8'], check_on_acquire_timeout: 30, vm_ssh_check_timeout: 30 };
    const tcpCheck = { type: 'tcp' as const, port };
    const groups: ConfigInput['groups'] = [
      { name: 'none', ...common, check: tcpCheck },
      { name: 'tcp', ...common, check: tcpCheck, check_on_acquire: 'tcp' },
    ];
    if (sshd) {
      groups.push({
        name: 'ssh',
        ...common,
        check: { type: 'ssh', user: sshd.user, port: sshd.port, private_key: sshd.clientKeyPath, known_hosts: join(sshd.dir, 'known_vms') },
        check_on_acquire: 'ssh',
      });
    }
    const config = parseConfig({ redis: { url: redisServer.url, prefix: PREFIX }, groups }, {});
    const cases = CHECK_CASES.filter((c) => c !== 'ssh' || sshd);
    // No machine is made or destroyed here: the provider is never asked.
    const provider = { type: 'none' } as unknown as Provider;
    const ctx = createJobContext(config, { logger, prefix: PREFIX, providerFactory: () => provider, healthCheckFactory: createHealthCheck });
    await ctx.vmm.markServerStart();
    for (const group of cases) {
      for (let i = 0; i < POOL; i++) {
        const name = `${group}-${i}`;
        await ctx.vmm.addVmToPool('127.0.0.1', name, group);
        await ctx.vmm.startVmCheck(name);
        await ctx.vmm.recordHealthCheckResult(name, true);
      }
    }
    const acquireWorker = runWorker(ctx, acquireProcessor, concurrency);
    await acquireWorker.worker.waitUntilReady();
    const client = new VmPoolClient({ redis: producer, prefix: PREFIX, logger });
    const samples = Object.fromEntries(cases.map((c) => [c, [] as number[]])) as Record<CheckCase, number[]>;
    let n = 0;
    for (let i = 0; i < WARMUP + SAMPLES; i++) {
      for (const group of cases) {
        n += 1;
        const t = process.hrtime.bigint();
        const a = await client.acquire({ owner: `owner-${n % 4}`, sandbox: 'bench/x', groups: [group], taskId: `task-${n}`, timeoutMs: 60_000 });
        if (i >= WARMUP) samples[group].push(Number(process.hrtime.bigint() - t) / 1e6);
        if (a.group !== group) throw new Error(`asked ${group}, got ${a.group}`);
        if (!(await client.release(a))) throw new Error(`release of ${a.vmName} refused`);
      }
    }
    const left = await Promise.all(cases.map(async (c) => (await ctx.vmm.getAllVmsInGroup(c)).filter((v) => v.state !== 'terminating').length));
    const closing = acquireWorker.close(10_000);
    await stopAcquireWaits(ctx);
    await closing;
    await client.close();
    await ctx.close();
    return {
      cases: cases.map((c, k) => {
        const sorted = samples[c].sort((x, y) => x - y);
        return { case: c, samples: sorted.length, p50: percentile(sorted, 50), p95: percentile(sorted, 95), p99: percentile(sorted, 99), failedChecks: POOL - left[k]! };
      }),
      skipped,
      pool: POOL,
      concurrency,
    };
  } finally {
    producer.disconnect();
    listener.close();
    await sshd?.stop();
    await redisServer.stop();
  }
}

export function checkOnAcquireTable(r: CheckOnAcquireResult): string {
  const f = (x: number) => x.toFixed(3);
  const none = r.cases.find((c) => c.case === 'none');
  const rows = r.cases.map((c) => [
    c.case === 'none' ? 'no check_on_acquire' : `check_on_acquire ${c.case}`,
    f(c.p50),
    f(c.p95),
    f(c.p99),
    none && c.case !== 'none' ? `+${f(c.p50 - none.p50)}` : '-',
    String(c.failedChecks),
  ]);
  const lines = [markdownTable(['acquire through BullMQ', 'p50 ms', 'p95 ms', 'p99 ms', 'added p50 ms', 'failed checks'], rows)];
  for (const [c, why] of Object.entries(r.skipped)) lines.push('', `${c}: not measured (${why})`);
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = await benchCheckOnAcquire();
  console.log(
    `bench:check-on-acquire — private redis-server; acquire worker (concurrency ${result.concurrency}) and producer in this process; ` +
      `${SAMPLES} serial acquires per group after ${WARMUP} warm-up, alternating, each released before the next; ${result.pool} ready VMs per group\n`,
  );
  console.log(checkOnAcquireTable(result));
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify(result)}`);
}
