import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { createProvider } from '../../src/providers/index.js';
import type { Provider } from '../../src/providers/types.js';
import { LAST_ORPHAN_CHECK } from '../../src/reconcile/orphanPass.js';
import { leakTerminateJobId } from '../../queues/terminate.js';
import { LAST_VM_SPAWN_START, VmMaster } from '../../src/reconcile/vmMaster.js';
import { QueueNames } from '../../queues/names.js';
import { connect, deleteKeysWithPrefix, uniquePrefix, poolKeys } from '../helpers/redis.js';

// VmMaster.cleanupOrphans against the real Redis, with the command provider running real hook
// processes: list_cmd prints one JSON line per file in a machines dir the test fills, and counts
// its runs. The clock is injected; no terminate worker runs, so the terminate jobs stay queued.
const T0 = 1_750_000_000_000;
const S = 1000;
const PERIOD = 60;
const GRACE = 300;

const dir = mkdtempSync(join(tmpdir(), 'vmpool-orphans-'));
const machinesDir = join(dir, 'machines');
const calls = join(dir, 'list-calls');
const listHook = join(dir, 'list.sh');
writeFileSync(
  listHook,
  `#!/usr/bin/env bash
set -euo pipefail
echo run >> "$HOOK_DIR/list-calls"
if [ -e "$HOOK_DIR/fail-list" ]; then echo "cloud API unreachable" >&2; exit 3; fi
for f in "$HOOK_DIR"/machines/*; do [ -e "$f" ] && cat "$f"; done
exit 0
`,
  { mode: 0o755 },
);

const provider = (list: boolean) => ({
  type: 'command' as const,
  spawn_cmd: ['/bin/false'],
  terminate_cmd: ['/bin/true'],
  ...(list ? { list_cmd: [listHook] } : {}),
  env: { HOOK_DIR: dir },
});
const config: ConfigInput = {
  groups: [
    { name: 'listed', provider: provider(true), check: { type: 'tcp', port: 22 }, orphan_check_period: PERIOD, orphan_grace_period: GRACE },
    { name: 'unlisted', provider: provider(false), check: { type: 'tcp', port: 22 }, orphan_check_period: PERIOD, orphan_grace_period: GRACE },
  ],
};

const prefix = uniquePrefix('orphans');
const keys = poolKeys(prefix);
const clock = { now: T0 };
let redis: Redis;
let vmm: VmManager;
let master: VmMaster;
let terminateQueue: Queue;
const providers = new Map<string, Provider>();

beforeAll(() => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix, clock: () => clock.now });
  const logger = vmm.logger;
  const providerOf = (group: string) => {
    let p = providers.get(group);
    if (!p) providers.set(group, (p = createProvider({ index: vmm.groupIndex(group), config: vmm.groupConfig(group) }, { logger })));
    return p;
  };
  master = new VmMaster(vmm, { provider: providerOf });
  terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
});

beforeEach(async () => {
  await deleteKeysWithPrefix(redis, prefix);
  rmSync(machinesDir, { recursive: true, force: true });
  rmSync(calls, { force: true });
  rmSync(join(dir, 'fail-list'), { force: true });
  mkdirSync(machinesDir);
  clock.now = T0;
  // No warm pool is configured; keep spawn decisions quiet anyway.
  await vmm.writeVmPoolInfo('listed', LAST_VM_SPAWN_START, T0);
});

afterAll(async () => {
  await terminateQueue.close();
  await deleteKeysWithPrefix(redis, prefix);
  await vmm.close();
  await redis.quit();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * A machine the provider lists; createdAt in epoch ms (listed as epoch seconds), tagged with this
 * pool's id unless another (or null: none) is given.
 */
function providerHas(name: string, ip: string, createdAt?: number, pool: string | null = vmm.poolId): void {
  const line: Record<string, unknown> = { name, ip };
  if (pool !== null) line.pool = pool;
  if (createdAt !== undefined) line.created_at = createdAt / 1000;
  writeFileSync(join(machinesDir, name), `${JSON.stringify(line)}\n`);
}

function providerLost(name: string): void {
  rmSync(join(machinesDir, name), { force: true });
}

function listRuns(): number {
  return existsSync(calls) ? readFileSync(calls, 'utf8').split('\n').filter(Boolean).length : 0;
}

async function terminateJobs(): Promise<Job[]> {
  return terminateQueue.getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
}

async function readyVm(name: string, ip: string, group = 0): Promise<void> {
  await vmm.addVmToPool(ip, name, group);
  expect(await vmm.startVmCheck(name)).toBe(true);
  expect((await vmm.recordHealthCheckResult(name, true)).outcome).toBe('ok');
}

describe('cleanupOrphans: scheduling', () => {
  it('runs the list once per orphan_check_period, not 1 ms earlier, and only for groups with list_cmd', async () => {
    const first = await master.cleanupOrphans();
    expect(first.map((p) => p.group)).toEqual(['listed']);
    expect(listRuns()).toBe(1);
    expect(await vmm.readVmPoolInfo('listed', LAST_ORPHAN_CHECK)).toBe(String(T0));
    expect(await vmm.readVmPoolInfo('unlisted', LAST_ORPHAN_CHECK)).toBeNull();

    clock.now = T0 + PERIOD * S - 1;
    expect(await master.cleanupOrphans()).toEqual([]);
    expect(listRuns()).toBe(1);

    clock.now = T0 + PERIOD * S;
    expect((await master.cleanupOrphans()).map((p) => p.group)).toEqual(['listed']);
    expect(listRuns()).toBe(2);
  });

  it('does nothing without providers', async () => {
    providerHas('leak-1', '192.0.2.10', T0 - 10 * GRACE * S);
    const bare = new VmMaster(vmm);
    expect(await bare.cleanupOrphans()).toEqual([]);
    clock.now += PERIOD * S;
    expect(await bare.cleanupOrphans()).toEqual([]);
    expect(listRuns()).toBe(0);
    expect(await vmm.readVmPoolInfo('listed', LAST_ORPHAN_CHECK)).toBeNull();
    expect(await terminateJobs()).toEqual([]);
  });

  it('a failing list fails the pass, changes nothing and is not run again before the period', async () => {
    providerHas('leak-1', '192.0.2.10', T0 - 10 * GRACE * S);
    await master.cleanupOrphans();
    writeFileSync(join(dir, 'fail-list'), '');
    clock.now = T0 + PERIOD * S;
    const err = await master.cleanupOrphans().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AggregateError);
    expect(String((err as AggregateError).errors[0])).toMatch(/list_cmd exited with code 3.*cloud API unreachable/);
    expect(listRuns()).toBe(2);
    // The remembered sighting survives the failed pass.
    expect(await redis.hgetall(keys.orphanUnknown('listed'))).toEqual({ 'leak-1': String(T0) });
    clock.now += PERIOD * S - 1;
    expect(await master.cleanupOrphans()).toEqual([]);
    expect(listRuns()).toBe(2);
    expect(await terminateJobs()).toEqual([]);
  });
});

describe('cleanupOrphans: machines the pool does not know', () => {
  it('leaves alone machines without this pool id: untagged ones are reported once, another pool\'s are not its business', async () => {
    providerHas('untagged-1', '192.0.2.40', T0 - 10 * GRACE * S, null);
    providerHas('staging-1', '192.0.2.41', T0 - 10 * GRACE * S, 'staging');
    for (let pass = 0; pass < 3; pass++) {
      clock.now = T0 + pass * PERIOD * S;
      const [p] = await master.cleanupOrphans();
      expect(p).toMatchObject({ leaksTerminated: 0, counts: { machines: 2, unknown: 0, untagged: 1, otherPools: 1 } });
    }
    expect(await terminateJobs()).toEqual([]);
    // Remembered as reported, so the warning is logged once per machine, not once per pass.
    expect(await redis.smembers(keys.orphanUntagged('listed'))).toEqual(['untagged-1']);
    providerLost('untagged-1');
    clock.now += PERIOD * S;
    await master.cleanupOrphans();
    expect(await redis.smembers(keys.orphanUntagged('listed'))).toEqual([]);
  });

  it('terminates an old unknown machine on its second pass, not its first', async () => {
    providerHas('leak-1', '192.0.2.10', T0 - 10 * GRACE * S);
    const [first] = await master.cleanupOrphans();
    expect(first).toMatchObject({ group: 'listed', leaksTerminated: 0, lostVmsTerminated: 0, counts: { machines: 1, unknown: 1, unknownWaiting: 1 } });
    expect(await terminateJobs()).toEqual([]);
    expect(await redis.hgetall(keys.orphanUnknown('listed'))).toEqual({ 'leak-1': String(T0) });

    clock.now = T0 + PERIOD * S;
    const [second] = await master.cleanupOrphans();
    expect(second).toMatchObject({ leaksTerminated: 1, counts: { unknownTerminated: 1 } });
    const jobs = await terminateJobs();
    expect(jobs.map((j) => [j.id, j.data])).toEqual([
      [leakTerminateJobId('listed', 'leak-1', T0), { vmName: 'leak-1', reason: 'orphan', orphan: { group: 'listed', vmIp: '192.0.2.10' } }],
    ]);

    // Still listed on the next pass while its job is pending: no second job.
    clock.now = T0 + 2 * PERIOD * S;
    const [third] = await master.cleanupOrphans();
    expect(third!.leaksTerminated).toBe(0);
    expect(await terminateJobs()).toHaveLength(1);
  });

  it('respects the grace: a young machine seen twice waits until it is orphan_grace_period old', async () => {
    providerHas('young-1', '192.0.2.11', T0);
    await master.cleanupOrphans();
    for (let t = T0 + PERIOD * S; t < T0 + GRACE * S; t += PERIOD * S) {
      clock.now = t;
      const [pass] = await master.cleanupOrphans();
      expect(pass).toMatchObject({ leaksTerminated: 0, counts: { unknownWaiting: 1 } });
    }
    // The pass at exactly the grace (age >= grace) terminates it.
    clock.now = T0 + GRACE * S;
    const [pass] = await master.cleanupOrphans();
    expect(pass!.leaksTerminated).toBe(1);
    expect((await terminateJobs()).map((j) => j.data.vmName)).toEqual(['young-1']);
  });

  it('measures age from the first sighting when the list gives no creation time: 1 ms short of the grace', async () => {
    providerHas('nodate-1', '192.0.2.12');
    await master.cleanupOrphans();
    clock.now = T0 + GRACE * S - 1;
    expect((await master.cleanupOrphans())[0]!.leaksTerminated).toBe(0);
    expect(await terminateJobs()).toEqual([]);
  });

  it('measures age from the first sighting when the list gives no creation time: at the grace', async () => {
    providerHas('nodate-1', '192.0.2.12');
    await master.cleanupOrphans();
    clock.now = T0 + GRACE * S;
    expect((await master.cleanupOrphans())[0]!.leaksTerminated).toBe(1);
    expect((await terminateJobs()).map((j) => j.id)).toEqual([leakTerminateJobId('listed', 'nodate-1', T0)]);
  });

  it('needs two passes in a row: a machine missing from one pass starts over', async () => {
    providerHas('flaky-1', '192.0.2.13', T0 - 10 * GRACE * S);
    await master.cleanupOrphans();
    providerLost('flaky-1');
    clock.now = T0 + PERIOD * S;
    await master.cleanupOrphans();
    expect(await redis.hgetall(keys.orphanUnknown('listed'))).toEqual({});
    providerHas('flaky-1', '192.0.2.13', T0 - 10 * GRACE * S);
    clock.now = T0 + 2 * PERIOD * S;
    expect((await master.cleanupOrphans())[0]!.leaksTerminated).toBe(0);
    expect(await terminateJobs()).toEqual([]);
    clock.now = T0 + 3 * PERIOD * S;
    expect((await master.cleanupOrphans())[0]!.leaksTerminated).toBe(1);
    expect((await terminateJobs()).map((j) => j.id)).toEqual([leakTerminateJobId('listed', 'flaky-1', T0 + 2 * PERIOD * S)]);
  });

  it('leaves machines the pool knows alone, in any group', async () => {
    await readyVm('mine-1', '192.0.2.20', 0);
    await readyVm('theirs-1', '192.0.2.21', 1);
    providerHas('mine-1', '192.0.2.20', T0 - 10 * GRACE * S);
    providerHas('theirs-1', '192.0.2.21', T0 - 10 * GRACE * S);
    await master.cleanupOrphans();
    clock.now = T0 + PERIOD * S;
    const [pass] = await master.cleanupOrphans();
    expect(pass).toMatchObject({ leaksTerminated: 0, lostVmsTerminated: 0, counts: { machines: 2, unknown: 0, missing: 0 } });
    expect(await terminateJobs()).toEqual([]);
    expect((await vmm.getVmByName('mine-1')).state).toBe('ready');
  });

  it('retries the termination of a leak still listed after its job finished', async () => {
    providerHas('stubborn-1', '192.0.2.14', T0 - 10 * GRACE * S);
    await master.cleanupOrphans();
    clock.now = T0 + PERIOD * S;
    await master.cleanupOrphans();
    // A terminate that reports success but leaves the machine (as a broken hook would).
    const worker = new Worker(QueueNames.TERMINATE, async () => ({ removed: false }), { connection: connect({ maxRetriesPerRequest: null }), prefix });
    try {
      const id = leakTerminateJobId('listed', 'stubborn-1', T0);
      const deadline = Date.now() + 10_000;
      while ((await terminateQueue.getJobState(id)) !== 'completed') {
        if (Date.now() > deadline) throw new Error('the terminate job did not complete');
        await new Promise((r) => setTimeout(r, 50));
      }
      await worker.pause();
      clock.now = T0 + 2 * PERIOD * S;
      const [pass] = await master.cleanupOrphans();
      expect(pass!.leaksTerminated).toBe(1);
      expect(await terminateQueue.getJobState(id)).toMatch(/waiting|active|completed/);
      expect((await terminateQueue.getJob(id))!.attemptsStarted).toBeGreaterThanOrEqual(1);
      expect(await terminateJobs()).toHaveLength(1);
    } finally {
      await worker.close();
    }
  });
});

describe('cleanupOrphans: pool VMs the provider no longer has', () => {
  it('moves a lost ready VM to terminating (reason provider_lost) on its second pass, not its first', async () => {
    await readyVm('gone-1', '192.0.2.30');
    await readyVm('here-1', '192.0.2.31');
    providerHas('here-1', '192.0.2.31');
    const [first] = await master.cleanupOrphans();
    expect(first).toMatchObject({ lostVmsTerminated: 0, leaksTerminated: 0, counts: { missing: 1, missingSkipped: 0, missingWaiting: 1 } });
    expect((await vmm.getVmByName('gone-1')).state).toBe('ready');
    expect(await redis.hgetall(keys.orphanMissing('listed'))).toEqual({ 'gone-1': String(T0) });
    expect(await terminateJobs()).toEqual([]);

    clock.now = T0 + PERIOD * S;
    const [pass] = await master.cleanupOrphans();
    expect(pass).toMatchObject({ lostVmsTerminated: 1, leaksTerminated: 0, counts: { missing: 1, missingSkipped: 0 } });
    expect((await vmm.getVmByName('gone-1')).state).toBe('terminating');
    expect((await vmm.getVmByName('here-1')).state).toBe('ready');
    expect((await terminateJobs()).map((j) => j.data)).toEqual([{ vmName: 'gone-1', reason: 'provider_lost' }]);
  });

  it('leaves a lost got_ip VM alone within the grace after it entered the pool, then needs two passes', async () => {
    await vmm.addVmToPool('192.0.2.32', 'new-1', 'listed');
    clock.now = T0 + GRACE * S - 1;
    const [early] = await master.cleanupOrphans();
    expect(early).toMatchObject({ lostVmsTerminated: 0, counts: { missing: 1, missingSkipped: 1 } });
    expect((await vmm.getVmByName('new-1')).state).toBe('got_ip');
    // A pass within the grace does not count as a miss.
    expect(await redis.hgetall(keys.orphanMissing('listed'))).toEqual({});
    clock.now = T0 + GRACE * S - 1 + PERIOD * S;
    const [late] = await master.cleanupOrphans();
    expect(late).toMatchObject({ lostVmsTerminated: 0, counts: { missingWaiting: 1 } });
    expect((await vmm.getVmByName('new-1')).state).toBe('got_ip');
    clock.now = T0 + GRACE * S - 1 + 2 * PERIOD * S;
    const [later] = await master.cleanupOrphans();
    expect(later!.lostVmsTerminated).toBe(1);
    expect((await vmm.getVmByName('new-1')).state).toBe('terminating');
  });

  it('an in_use VM missing from one list only keeps its build; listed again, the next miss starts over', async () => {
    await vmm.markServerStart();
    await readyVm('busy-1', '192.0.2.36');
    await vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 's', workerId: 'w', taskId: 'build-1' });
    expect((await vmm.getVmByName('busy-1')).state).toBe('in_use');
    await master.cleanupOrphans();
    expect((await vmm.getVmByName('busy-1')).state).toBe('in_use');
    providerHas('busy-1', '192.0.2.36');
    clock.now = T0 + PERIOD * S;
    expect((await master.cleanupOrphans())[0]!.lostVmsTerminated).toBe(0);
    expect(await redis.hgetall(keys.orphanMissing('listed'))).toEqual({});
    providerLost('busy-1');
    clock.now = T0 + 2 * PERIOD * S;
    expect((await master.cleanupOrphans())[0]!.lostVmsTerminated).toBe(0);
    expect((await vmm.getVmByName('busy-1')).state).toBe('in_use');
    clock.now = T0 + 3 * PERIOD * S;
    expect((await master.cleanupOrphans())[0]!.lostVmsTerminated).toBe(1);
    expect((await vmm.getVmByName('busy-1')).state).toBe('terminating');
    expect((await terminateJobs()).map((j) => j.data)).toEqual([{ vmName: 'busy-1', reason: 'provider_lost' }]);
  });

  it('does not touch VMs of groups without list, nor VMs already terminating', async () => {
    await readyVm('other-1', '192.0.2.33', 1);
    await readyVm('ending-1', '192.0.2.34', 0);
    expect(await vmm.startVmTermination('ending-1', 'ready', 'operator')).toBe(true);
    const [pass] = await master.cleanupOrphans();
    expect(pass).toMatchObject({ lostVmsTerminated: 0, counts: { poolVms: 1, missingSkipped: 1 } });
    expect((await vmm.getVmByName('other-1')).state).toBe('ready');
    expect((await terminateJobs()).map((j) => j.data.reason)).toEqual(['operator']);
  });

  it('runs as the last step of doCycle and counts what it did', async () => {
    await readyVm('gone-2', '192.0.2.35');
    const first = await master.doCycle();
    expect(first.ran).toBe(true);
    expect(first.counts.cleanupOrphans).toBe(0);
    expect((await vmm.getVmByName('gone-2')).state).toBe('ready');
    clock.now += PERIOD * S;
    const report = await master.doCycle();
    expect(report.ran).toBe(true);
    expect(report.counts.cleanupOrphans).toBe(1);
    expect((await vmm.getVmByName('gone-2')).state).toBe('terminating');
    // Within the period, the next cycle does not list again.
    clock.now += 1;
    expect((await master.doCycle()).counts.cleanupOrphans).toBe(0);
    expect(listRuns()).toBe(2);
  });
});

describe("cleanupOrphans: leaks of groups whose names and machines' names share '-'", () => {
  it("terminates both leaks of group 'twin' (machine 'b-vm') and group 'twin-b' (machine 'vm'), seen in the same passes", async () => {
    // Each group's list hook reads its own machines dir (HOOK_DIR differs); both passes run at the
    // same clock, so both leaks have the same first sighting.
    const twinDirs = ['twin', 'twin-b'].map((g) => join(dir, `group-${g}`));
    for (const d of twinDirs) mkdirSync(join(d, 'machines'), { recursive: true });
    const twinProvider = (hookDir: string) => ({ type: 'command' as const, spawn_cmd: ['/bin/false'], terminate_cmd: ['/bin/true'], list_cmd: [listHook], env: { HOOK_DIR: hookDir } });
    const twinConfig: ConfigInput = {
      groups: ['twin', 'twin-b'].map((name, i) => ({ name, provider: twinProvider(twinDirs[i]!), check: { type: 'tcp', port: 22 }, orphan_check_period: PERIOD, orphan_grace_period: GRACE })),
    };
    const twinPrefix = uniquePrefix('orphans-twin');
    const twinRedis = connect();
    const twinClock = { now: T0 };
    const twinVmm = new VmManager(twinConfig, { redis: twinRedis, prefix: twinPrefix, clock: () => twinClock.now });
    const twinProviders = new Map<string, Provider>();
    const twinMaster = new VmMaster(twinVmm, {
      provider: (group) => {
        let p = twinProviders.get(group);
        if (!p) twinProviders.set(group, (p = createProvider({ index: twinVmm.groupIndex(group), config: twinVmm.groupConfig(group) }, { logger: twinVmm.logger })));
        return p;
      },
    });
    const twinTerminate = new Queue(QueueNames.TERMINATE, { connection: twinRedis, prefix: twinPrefix });
    try {
      for (const g of ['twin', 'twin-b']) await twinVmm.writeVmPoolInfo(g, LAST_VM_SPAWN_START, T0);
      const machines: [string, string, string][] = [
        [twinDirs[0]!, 'b-vm', '192.0.2.31'],
        [twinDirs[1]!, 'vm', '192.0.2.32'],
      ];
      for (const [d, name, ip] of machines) {
        writeFileSync(join(d, 'machines', name), `${JSON.stringify({ name, ip, pool: twinVmm.poolId, created_at: (T0 - 10 * GRACE * S) / 1000 })}\n`);
      }
      await twinMaster.cleanupOrphans();
      twinClock.now = T0 + PERIOD * S;
      const passes = await twinMaster.cleanupOrphans();
      expect(passes.map((p) => [p.group, p.leaksTerminated])).toEqual([
        ['twin', 1],
        ['twin-b', 1],
      ]);
      const jobs = await twinTerminate.getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
      expect(jobs.map((j) => `${(j.data as { orphan: { group: string } }).orphan.group} ${(j.data as { vmName: string }).vmName}`).sort()).toEqual(['twin b-vm', 'twin-b vm']);
    } finally {
      await twinTerminate.close();
      await deleteKeysWithPrefix(twinRedis, twinPrefix);
      await twinVmm.close();
      await twinRedis.quit();
    }
  });
});
