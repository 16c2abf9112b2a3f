import { spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../../src/config/index.js';
import { createLogger } from '../../../src/logger.js';
import { DATA_FORMAT_VERSION } from '../../../src/pool/dataFormat.js';
import { poolIdOf } from '../../../src/pool/poolId.js';
import { VmManager } from '../../../src/pool/vmManager.js';
import { createProvider } from '../../../src/providers/index.js';
import type { LocalProvider } from '../../../src/providers/local.js';
import { ACQUIRE_QUEUE } from '../../../queues/acquire.js';
import { QueueNames } from '../../../queues/names.js';
import { ROOT, freePort, nodeArgsFor, startWorkerProcess, waitFor, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { REDIS_URL, closePool, connect, poolKeys, uniquePrefix } from '../../helpers/redis.js';
import { describeWithPrerequisites } from '../../helpers/tools.js';
import { checkAudit, compareWithProvider, readAudit, settled } from '../chaos/harness.js';
import { preparePreviousRelease, previousReleaseCommit, previousReleaseMissing, type PreviousRelease } from './previousRelease.js';

// The rolling upgrade from the previous release (the commit in ./previous-release) to this
// checkout, as docs/operating.md "Upgrades" tells an operator to do it: every process type runs the
// previous release, builders (on the previous release's client, as builders are not upgraded with
// the pool) hold, renew and release VMs, new acquires keep arriving and some wait for a VM; then each
// process type in turn gets a process of this version, and its process of the previous one is
// stopped (SIGTERM). Nothing may be lost or doubled: no lease, no VM, no waiting request.
const commit = previousReleaseCommit();
const prefix = uniquePrefix('upgrade');
const stateDir = mkdtempSync(join(tmpdir(), 'vmpool-upgrade-'));
// Room for every builder and one more: an owner's released (dirty) VM goes back to that owner first, so
// with fewer VMs than builders one of them could wait for long.
const LIMITS = { max_vm_total: 5, max_vm_per_user: 3 };
const LEASE_S = 4;
/** How long a builder holds its VM, renewing every RENEW_MS: longer than the lease. */
const HOLD_MS = 6_000;
const RENEW_MS = 800;
const config = {
  redis: { url: REDIS_URL },
  vm_cycle_timeout: 0.5,
  audit: { max_events: 100_000 },
  groups: [
    {
      name: 'local',
      archs: ['x86_64'],
      ...LIMITS,
      min_ready: 1,
      // Each VM serves one build, then is retired (the builders pause past a reconcile cycle between
      // builds): every process type keeps working (spawns, checks, terminations) through the
      // upgrade, and acquires often wait for a VM.
      reuse_max_count: 1,
      // Builders hold a VM longer than this: only their renewals keep their leases.
      lease_timeout: LEASE_S,
      vm_spawn_min_interval: 0,
      provider: { type: 'local', state_dir: stateDir, ip_base: randomInt(100, 250), port: randomInt(20_000, 40_000), spawn_timeout: 20 },
    },
  ],
} satisfies ConfigInput;
/** The order of docs/operating.md "Upgrades": the job consumers first, then what enqueues jobs, web last. */
const ORDER = ['spawn', 'health', 'terminate', 'acquire', 'reconcile', 'web'] as const;
const REPLICAS: Record<(typeof ORDER)[number], number> = { spawn: 1, health: 1, terminate: 1, acquire: 2, reconcile: 1, web: 1 };
const BUILDERS = 4;

const parsed = parseConfig(config, {});
const localGroup = { id: 0, config: parsed.groups[0]!, poolId: poolIdOf(parsed, prefix) };
const provider = createProvider(localGroup, { logger: createLogger('test') }) as LocalProvider;
const keys = poolKeys(prefix);

let previous: PreviousRelease | undefined;
let redis: Redis;
let vmm: VmManager;
let acquireQueue: Queue;
const processes: WorkerProcess[] = [];
let builders: ChildProcess | undefined;

interface BuilderEvent {
  at: number;
  event: 'acquiring' | 'acquired' | 'acquire_failed' | 'renewed' | 'renew_failed' | 'released' | 'done';
  builder?: number;
  taskId?: string;
  vm?: string;
  lease?: string;
  released?: boolean | string;
  error?: string;
}

describeWithPrerequisites(previousReleaseMissing(commit), 'rolling upgrade from the previous release', () => {
  beforeAll(() => {
    if (nodeArgsFor('workers/web.ts')[0] !== join(ROOT, 'dist', 'workers', 'web.js')) throw new Error('the new version runs from dist/: build first (npm run build; npm test does)');
    previous = preparePreviousRelease(commit);
    redis = connect();
    vmm = new VmManager(parsed, { redis, prefix, logger: createLogger('upgrade-test', { LOG_LEVEL: 'silent' }) });
    acquireQueue = new Queue(ACQUIRE_QUEUE, { connection: redis, prefix });
  }, 600_000);

  afterAll(async () => {
    builders?.kill('SIGKILL');
    await Promise.all(processes.map((p) => p.kill()));
    for (const m of await provider.list(localGroup)) await provider.terminate({ group: localGroup, vmName: m.name, vmIp: m.ip ?? null });
    await acquireQueue?.close();
    await vmm?.close();
    await closePool(prefix, redis, [], redis ? new Queue(QueueNames.RECONCILE, { connection: redis, prefix }) : undefined);
    previous?.remove();
    rmSync(stateDir, { recursive: true, force: true });
  }, 60_000);

  it('replaces each process type, one at a time, while builders hold, renew and release VMs: nothing lost or doubled', { timeout: 240_000 }, async () => {
    const release = previous!;
    const configFile = writeConfigFile(config);
    const env = { VMPOOL_CONFIG: configFile, VMPOOL_PREFIX: prefix, REDIS_URL };
    const start = async (type: (typeof ORDER)[number], version: 'previous' | 'new') => {
      const port = type === 'web' ? await freePort() : null;
      const p = await startWorkerProcess(type, port === null ? env : { ...env, PORT: String(port) }, 60_000, {
        root: version === 'previous' ? release.root : undefined,
        ready: type === 'web' ? '"web listening"' : undefined,
      });
      processes.push(p);
      return { type, version, process: p, url: port === null ? null : `http://127.0.0.1:${port}/` };
    };
    const logs = () =>
      processes
        .map((p) => `--- ${p.type} (pid ${p.child.pid}, exit ${p.child.exitCode ?? p.child.signalCode ?? 'running'})\n${p.lines.slice(-15).join('\n')}`)
        .join('\n');

    // The previous release, every type.
    let running = (await Promise.all(ORDER.flatMap((type) => Array.from({ length: REPLICAS[type] }, () => start(type, 'previous'))))).flat();
    const formatBefore = Number(await redis.hget(keys.dataFormat, 'version'));
    await waitFor(async () => (await vmm.getAllVmRecords()).some((v) => v.state === 'ready'), 90_000, `a ready VM\n${logs()}`);

    // Builders on the previous release's client.
    const events: BuilderEvent[] = [];
    let builderOutput = '';
    builders = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'builders.ts')], {
      cwd: ROOT,
      env: { ...process.env, CLIENT_ROOT: release.root, REDIS_URL, PREFIX: prefix, BUILDERS: String(BUILDERS), HOLD_MS: String(HOLD_MS), RENEW_MS: String(RENEW_MS), PAUSE_MS: '1200' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let pending = '';
    builders.stdout!.on('data', (c: Buffer) => {
      pending += c.toString();
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) events.push(JSON.parse(line) as BuilderEvent);
    });
    builders.stderr!.on('data', (c: Buffer) => (builderOutput += c.toString()));
    const buildersExited = new Promise<number | null>((resolve) => builders!.once('exit', (code) => resolve(code)));
    const acquired = () => events.filter((e) => e.event === 'acquired').length;
    const moreAcquired = async (n: number, what: string) => {
      const target = acquired() + n;
      await waitFor(() => acquired() >= target, 60_000, `${n} more acquisitions ${what}\n${logs()}\n--- builders\n${builderOutput}`);
    };

    // One more builder on the HTTP API (which any release speaks), through the newest web process.
    // A call that no web process takes (one stopping, one refusing changes, none listening) is
    // asked again, as a builder behind a load balancer would.
    let webUrl = running.find((r) => r.type === 'web')!.url!;
    let httpStopping = false;
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const NOT_TAKEN = ['shutting_down', 'data_format_too_new', 'data_format_unchecked'];
    let httpRetries = 0;
    const untilTaken = async (path: string, body: unknown): Promise<{ status: number; body: Record<string, any> }> => {
      for (;;) {
        const answer = await fetch(new URL(path, webUrl), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).then(
          async (res) => ({ status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, any> }),
          () => null,
        );
        if (answer && !(answer.status === 503 && NOT_TAKEN.includes(answer.body.details?.reason))) return answer;
        httpRetries += 1;
        await sleep(200);
      }
    };
    const httpBuilder = (async () => {
      const builder = BUILDERS;
      for (let n = 0; !httpStopping; n++) {
        const taskId = `h-${n}`;
        events.push({ at: Date.now(), event: 'acquiring', builder, taskId });
        const got = await untilTaken('api/v1/acquire', { owner: 'http-0', sandbox: 'http-0/p', arch: 'x86_64', taskId, timeoutMs: 60_000 });
        if (got.status !== 200) {
          events.push({ at: Date.now(), event: 'acquire_failed', builder, taskId, error: JSON.stringify(got.body) });
          await sleep(500);
          continue;
        }
        const vm = got.body.vmName as string;
        const lease = got.body.leaseId as string;
        events.push({ at: Date.now(), event: 'acquired', builder, taskId, vm, lease });
        const until = Date.now() + HOLD_MS;
        while (Date.now() < until) {
          await sleep(Math.min(RENEW_MS, until - Date.now()));
          const renewed = await untilTaken(`api/v1/vms/${vm}/renew`, { leaseId: lease });
          events.push({ at: Date.now(), event: renewed.status === 200 ? 'renewed' : 'renew_failed', builder, taskId, vm, lease, error: renewed.status === 200 ? undefined : JSON.stringify(renewed.body) });
        }
        const released = await untilTaken(`api/v1/vms/${vm}/release`, { leaseId: lease });
        events.push({ at: Date.now(), event: 'released', builder, taskId, vm, lease, released: released.status === 200 || JSON.stringify(released.body) });
        if (!httpStopping) await sleep(1_200);
      }
    })();
    await moreAcquired(BUILDERS + 1, 'on the previous release');

    // Each type in turn: its processes of this version start (a surge), then those of the previous
    // one stop. Builders keep going throughout. When this version has a newer data format, its first
    // process migrates the pool, and every process of the previous release stops by itself (exit 1,
    // naming the version it needs): then the pool serves again once each type runs this version.
    const stopped: { type: string; code: number | null; output: string }[] = [];
    let migratedAfter: string | null = null;
    const isRunning = (p: WorkerProcess) => p.child.exitCode === null && p.child.signalCode === null;
    for (const type of ORDER) {
      const fresh = await Promise.all(Array.from({ length: REPLICAS[type] }, () => start(type, 'new')));
      if (migratedAfter === null && Number(await redis.hget(keys.dataFormat, 'version')) > formatBefore) {
        migratedAfter = type;
        const previousOnes = running.filter((r) => r.version === 'previous' && r.type !== 'web');
        await waitFor(() => previousOnes.every((r) => !isRunning(r.process)), 20_000, `the previous release's workers to stop on the new data format\n${logs()}`);
      }
      for (const old of running.filter((r) => r.type === type)) {
        const code = await old.process.stop(10_000);
        stopped.push({ type, code, output: old.process.lines.slice(-8).join('\n') });
      }
      // The HTTP builder stays with the old web process until it is gone (its calls meanwhile are
      // refused or find nobody, and are asked again), as behind a load balancer that drains it.
      if (type === 'web') webUrl = fresh[0]!.url!;
      running = [...running.filter((r) => r.type !== type), ...fresh];
      if (ORDER.every((t) => running.some((r) => r.type === t && isRunning(r.process)))) await moreAcquired(2, `after ${type} was replaced`);
    }
    await moreAcquired(BUILDERS, 'on the new version');
    const formatAfter = Number(await redis.hget(keys.dataFormat, 'version'));

    // The builders finish what they hold or wait for, and stop.
    builders.kill('SIGTERM');
    httpStopping = true;
    await httpBuilder;
    expect(await buildersExited, builderOutput).toBe(0);

    // Every previous process stopped cleanly on SIGTERM; once the data format moved past it, a
    // worker stopped by itself instead, with exit code 1 and the version it needs.
    for (const s of stopped) {
      if (s.code === 1 && migratedAfter !== null && s.type !== 'web') expect(s.output).toContain(`the pool's data format is version ${DATA_FORMAT_VERSION}, and this vmpool knows versions up to ${formatBefore}`);
      else expect(s.code, `${s.type}: ${s.output}`).toBe(0);
    }
    // Every process of this version still runs.
    for (const r of running) expect(r.process.child.exitCode, `${r.type}:\n${r.process.lines.slice(-20).join('\n')}`).toBeNull();
    expect(formatAfter).toBe(DATA_FORMAT_VERSION);

    // Builders: every acquire served (none failed), every renew and release held.
    const failures = events.filter((e) => e.event === 'acquire_failed' || e.event === 'renew_failed' || (e.event === 'released' && e.released !== true));
    expect(failures, `${JSON.stringify(failures)}\n${builderOutput}`).toEqual([]);
    const requested = events.filter((e) => e.event === 'acquiring').map((e) => e.taskId);
    const served = events.filter((e) => e.event === 'acquired');
    expect(served.map((e) => e.taskId).sort()).toEqual([...requested].sort());
    expect(events.filter((e) => e.event === 'released').length).toBe(served.length);
    const leases = new Set(served.map((e) => e.lease));
    expect(leases.size).toBe(served.length);

    // The pool's side: each acquisition once in the audit trail (no other acquisition, none twice),
    // no VM with two holders, no VM in use terminated, no lease that lapsed.
    const trail = await readAudit(vmm.reader);
    // (A VM assigned to an HTTP request just as its web process stopped was released at once, as withdrawn.)
    const withdrawn = new Set(trail.filter((e) => e.event === 'released' && e.reason === 'withdrawn').map((e) => e.lease));
    const acquiredEvents = trail.filter((e) => e.event === 'acquired' && !withdrawn.has(e.lease));
    expect(acquiredEvents.map((e) => e.lease).sort()).toEqual([...leases].sort());
    // The trail is not rewritten by a migration: events recorded before data format 2 name the
    // group by its index in the config's list. Counted under its name.
    const byName = trail.map((e) => ({ ...e, group: e.group !== null && /^\d+$/.test(e.group) ? (config.groups[Number(e.group)]?.name ?? e.group) : e.group }));
    const audit = checkAudit(byName, { local: LIMITS });
    expect(audit.problems, audit.problems.join('\n')).toEqual([]);
    expect(audit.doubled).toBe(0);
    const lapsed = trail.filter((e) => e.event === 'lease_expired');
    expect(lapsed, JSON.stringify(lapsed)).toEqual([]);
    const inUseTerminated = trail.filter((e) => e.event === 'terminate_requested' && e.lease !== null);
    expect(inUseTerminated, JSON.stringify(inUseTerminated)).toEqual([]);
    const counts = await acquireQueue.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed', 'prioritized', 'waiting-children');
    // Each acquire job completed once, but those of HTTP requests withdrawn by a stopping web process
    // (failed as cancelled, or completed and their VM released as withdrawn); none left waiting.
    const failedJobs = await acquireQueue.getJobs(['failed']);
    for (const job of failedJobs) expect(`${job.data.owner}: ${job.failedReason}`).toMatch(/^http-0: cancelled: the web process is shutting down/);
    expect(counts).toMatchObject({ completed: served.length + withdrawn.size, failed: failedJobs.length, waiting: 0, active: 0, delayed: 0, prioritized: 0 });
    const stillInUse = await vmm.getVmsByGroupAndStates(null, ['in_use']);
    expect(stillInUse, JSON.stringify(stillInUse)).toEqual([]);
    // No VM stranded by a write of the previous release: the pool settles, serves again, and its
    // VMs are the provider's machines.
    await waitFor(() => settled(vmm), 60_000, `the pool settled\n${logs()}`);
    await waitFor(async () => (await vmm.getVmsByGroupAndStates(null, ['ready'])).length > 0, 60_000, `a ready VM\n${logs()}`);
    const { leaked, missing } = await waitFor(async () => {
      const diff = await compareWithProvider(vmm, new Map((await provider.list(localGroup)).map((m) => [m.name, m])));
      return diff.leaked.length === 0 && diff.missing.length === 0 ? diff : null;
    }, 30_000, "the provider's machines equal the pool's VMs");
    expect([leaked, missing]).toEqual([[], []]);

    const waited = served.filter((e) => {
      const asked = events.find((x) => x.event === 'acquiring' && x.taskId === e.taskId)!;
      return e.at - asked.at > 1_000;
    }).length;
    process.stdout.write(
      `[upgrade] ${commit.slice(0, 12)} -> this checkout: previous release ${release.installed}, prepared in ${release.preparedIn.toFixed(1)} s; ` +
        `data format ${formatBefore} -> ${formatAfter}${migratedAfter ? ` (migrated when ${migratedAfter} was replaced)` : ''}; ${served.length} acquisitions (${waited} waited over 1 s), ${events.filter((e) => e.event === 'renewed').length} renewals, ` +
        `${trail.filter((e) => e.event === 'spawned').length} VMs spawned, ${trail.filter((e) => e.event === 'terminate_requested').length} retired; ` +
        `HTTP calls asked again ${httpRetries}, withdrawn ${withdrawn.size}; lost 0, doubled ${audit.doubled}; previous processes' exit codes ${stopped.map((s) => `${s.type}=${s.code}`).join(' ')}\n`,
    );
  });
});
