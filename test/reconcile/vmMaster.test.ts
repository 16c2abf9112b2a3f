import { Queue, type Job } from 'bullmq';
import { pino } from 'pino';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { CycleLock } from '../../src/pool/locks.js';
import { LAST_VM_SPAWN_START, VmMaster, cycleLockKey } from '../../src/reconcile/vmMaster.js';
import { healthJobDeduplicationId } from '../../queues/health.js';
import { QueueNames } from '../../queues/names.js';
import { spawnJobId } from '../../queues/spawn.js';
import { connect, deleteKeysWithPrefix, uniquePrefix, poolKeys } from '../helpers/redis.js';

const T0 = 1_750_000_000_000;
const S = 1000;

/** Group 0 has the warm pool off, so steps other than spawning can be tested without spawns. */
const config: ConfigInput = {
  groups: [
    {
      name: 'base',
      max_vm_total: 4,
      max_vm_per_user: 4,
      max_spawn_processes: 2,
      vm_spawn_min_interval: 30,
      vm_dirty_terminating_timeout: 120,
      vm_health_check_period: 120,
      vm_health_check_max_time: 300,
      vm_terminating_timeout: 600,
      vm_spawn_stale_timeout: 1800,
    },
    {
      name: 'warm',
      max_vm_total: 4,
      max_spawn_processes: 2,
      vm_spawn_min_interval: 30,
      min_ready: 2,
      reuse_max_count: 2,
    },
    { name: 'aged', vm_dirty_terminating_timeout: 120, reuse_max_time: 600 },
  ],
};

const prefix = uniquePrefix('reconcile');
const keys = poolKeys(prefix);
let redis: Redis;
let vmm: VmManager;
let master: VmMaster;
const clock = { now: T0 };
const queues: Record<string, Queue> = {};

beforeAll(() => {
  redis = connect();
  vmm = new VmManager(config, { redis, prefix, clock: () => clock.now });
  master = new VmMaster(vmm);
  for (const name of [QueueNames.SPAWN, QueueNames.HEALTH, QueueNames.TERMINATE]) {
    queues[name] = new Queue(name, { connection: redis, prefix });
  }
});

beforeEach(async () => {
  await deleteKeysWithPrefix(redis, prefix);
  // The server started before the tests' VMs were checked, so acquire may hand them out.
  clock.now = T0 - 60 * S;
  await vmm.markServerStart();
  clock.now = T0;
  // Group 1 keeps a warm pool; tests of other steps start with its last spawn "just now".
  await vmm.writeVmPoolInfo('warm', LAST_VM_SPAWN_START, T0);
});

afterAll(async () => {
  for (const q of Object.values(queues)) await q.close();
  await deleteKeysWithPrefix(redis, prefix);
  await vmm.close();
  await redis.quit();
});

async function jobs(queue: string): Promise<Job[]> {
  return queues[queue]!.getJobs(['waiting', 'delayed', 'active', 'completed', 'failed', 'prioritized']);
}

/** A VM brought to ready by a passing health check at the current clock. */
async function readyVm(name: string, ip: string, group = 0): Promise<void> {
  await vmm.addVmToPool(ip, name, group);
  expect(await vmm.startVmCheck(name)).toBe(true);
  expect((await vmm.recordHealthCheckResult(name, true)).outcome).toBe('ok');
}

/** A ready VM bound to alice/sb after one build released at the current clock. */
async function dirtyVm(name: string, ip: string, group = 0): Promise<void> {
  await readyVm(name, ip, group);
  const vm = await vmm.acquireVm({ groups: [group], owner: 'alice', sandbox: 'sb', workerId: 'w1' });
  expect(vm.vmName).toBe(name);
  expect(await vmm.releaseVm(name)).toBe(true);
}

describe('removeOldDirtyVms', () => {
  it('terminates a dirty VM 1 ms after the dirty timeout, not at it', async () => {
    await dirtyVm('dirty1', '10.1.0.1');
    clock.now = T0 + 120 * S;
    expect(await master.removeOldDirtyVms()).toEqual([]);
    expect((await vmm.getVmByName('dirty1')).state).toBe('ready');
    clock.now += 1;
    const applied = await master.removeOldDirtyVms();
    expect(applied).toEqual([{ type: 'terminate', vmName: 'dirty1', allowedPreState: 'ready', reason: 'dirty_timeout' }]);
    expect((await vmm.getVmByName('dirty1')).state).toBe('terminating');
    const terminateJobs = await jobs(QueueNames.TERMINATE);
    expect(terminateJobs.map((j) => j.data)).toEqual([{ vmName: 'dirty1', reason: 'dirty_timeout' }]);
  });

  it('leaves a clean VM and a VM in use alone however old', async () => {
    await readyVm('clean1', '10.1.0.2');
    await readyVm('busy1', '10.1.0.3');
    await vmm.acquireVm({ groups: [0], owner: 'bob', sandbox: 'sb', workerId: 'w' });
    clock.now = T0 + 10_000 * S;
    expect(await master.removeOldDirtyVms()).toEqual([]);
    expect(await jobs(QueueNames.TERMINATE)).toHaveLength(0);
  });

  it('retires a dirty VM at reuse_max_count builds, not one build before', async () => {
    await dirtyVm('reuse1', '10.1.0.4', 1);
    expect(await master.removeOldDirtyVms()).toEqual([]);
    await vmm.acquireVm({ groups: [1], owner: 'alice', sandbox: 'sb', workerId: 'w1' });
    await vmm.releaseVm('reuse1');
    const applied = await master.removeOldDirtyVms();
    expect(applied).toEqual([{ type: 'terminate', vmName: 'reuse1', allowedPreState: 'ready', reason: 'reuse_limit' }]);
    expect((await jobs(QueueNames.TERMINATE)).map((j) => j.data.reason)).toEqual(['reuse_limit']);
  });

  it('retires a dirty VM reuse_max_time after its owner first got it, not 1 ms before', async () => {
    await dirtyVm('reuse2', '10.1.0.5', 2);
    // Re-acquired within the dirty timeout each time, so only the reuse time can retire it.
    for (const t of [100, 200, 300, 400, 500]) {
      clock.now = T0 + t * S;
      await vmm.acquireVm({ groups: [2], owner: 'alice', sandbox: 'sb', workerId: 'w1' });
      await vmm.releaseVm('reuse2');
    }
    clock.now = T0 + 600 * S - 1;
    expect(await master.removeOldDirtyVms()).toEqual([]);
    clock.now = T0 + 600 * S;
    expect(await master.removeOldDirtyVms()).toEqual([
      { type: 'terminate', vmName: 'reuse2', allowedPreState: 'ready', reason: 'reuse_limit' },
    ]);
  });
});

describe('checkVmsHealth', () => {
  it('enqueues a check 1 ms after the period, not at it, at most one pending per VM', async () => {
    await readyVm('h1', '10.2.0.1');
    clock.now = T0 + 120 * S;
    expect(await master.checkVmsHealth()).toEqual([]);
    expect(await jobs(QueueNames.HEALTH)).toHaveLength(0);
    clock.now += 1;
    expect(await master.checkVmsHealth()).toEqual([{ type: 'enqueueHealth', vmName: 'h1' }]);
    await master.checkVmsHealth();
    const health = await jobs(QueueNames.HEALTH);
    expect(health.map((j) => j.data)).toEqual([{ vmName: 'h1' }]);
    expect(health[0]!.deduplicationId).toBe(healthJobDeduplicationId('h1'));
  });

  it('enqueues a check for a VM never checked (got_ip) and none for terminating or check_health', async () => {
    await vmm.addVmToPool('10.2.0.2', 'new1', 'base');
    await vmm.addVmToPool('10.2.0.3', 'checking1', 'base');
    await vmm.startVmCheck('checking1');
    await vmm.addVmToPool('10.2.0.4', 'dying1', 'base');
    await vmm.startVmTermination('dying1');
    clock.now = T0 + 10_000 * S;
    const applied = await master.checkVmsHealth();
    expect(applied).toEqual([{ type: 'enqueueHealth', vmName: 'new1' }]);
  });

  it('keeps Copr\'s period after a server start (re-checks are recheckAfterServerStart\'s)', async () => {
    await readyVm('h2', '10.2.0.5');
    clock.now = T0 + 10 * S;
    await vmm.markServerStart();
    expect(await master.checkVmsHealth()).toEqual([]);
  });
});

describe('recheckAfterServerStart', () => {
  it('checks again a ready VM last checked before the server start, within the period', async () => {
    await readyVm('h2', '10.2.0.5');
    clock.now = T0 + 10 * S;
    expect(await master.recheckAfterServerStart()).toEqual([]);
    await vmm.markServerStart();
    expect(await master.recheckAfterServerStart()).toEqual([{ type: 'enqueueHealth', vmName: 'h2' }]);
  });

  it('leaves a VM checked after a server start in the same millisecond alone', async () => {
    await vmm.markServerStart();
    await readyVm('h3', '10.2.0.6');
    expect(await master.recheckAfterServerStart()).toEqual([]);
    expect(await jobs(QueueNames.HEALTH)).toHaveLength(0);
  });
});

describe('finalizeLongHealthChecks', () => {
  it('marks a check_health VM failed 1 ms after the max time, not at it', async () => {
    await vmm.addVmToPool('10.3.0.1', 'slow1', 'base');
    expect(await vmm.startVmCheck('slow1')).toBe(true);
    clock.now = T0 + 300 * S;
    expect(await master.finalizeLongHealthChecks()).toEqual([]);
    expect((await vmm.getVmByName('slow1')).state).toBe('check_health');
    clock.now += 1;
    expect(await master.finalizeLongHealthChecks()).toEqual([{ type: 'markCheckFailed', vmName: 'slow1' }]);
    expect((await vmm.getVmByName('slow1')).state).toBe('check_health_failed');
  });
});

describe('terminateAgain', () => {
  it('requests termination again 1 ms after the terminating timeout, not at it', async () => {
    await readyVm('t1', '10.4.0.1');
    expect(await vmm.startVmTermination('t1')).toBe(true);
    expect(await jobs(QueueNames.TERMINATE)).toHaveLength(1);
    clock.now = T0 + 600 * S;
    expect(await master.terminateAgain()).toEqual([]);
    clock.now += 1;
    expect(await master.terminateAgain()).toEqual([
      { type: 'terminate', vmName: 't1', allowedPreState: 'terminating', reason: 'terminate_again' },
    ]);
    const vm = await vmm.getVmByName('t1');
    expect(vm.state).toBe('terminating');
    expect(vm.terminatingSince).toBe(clock.now);
    const terminateJobs = await jobs(QueueNames.TERMINATE);
    expect(terminateJobs.map((j) => j.data.reason).sort()).toEqual(['other', 'terminate_again']);
  });

  it('only removes the stale record when another VM has the same IP', async () => {
    await readyVm('old1', '10.4.0.2');
    await vmm.startVmTermination('old1');
    await readyVm('new2', '10.4.0.2');
    clock.now = T0 + 600 * S + 1;
    expect(await master.terminateAgain()).toEqual([{ type: 'removeStaleRecord', vmName: 'old1' }]);
    await expect(vmm.getVmByName('old1')).rejects.toThrow(/not in the pool/);
    expect((await vmm.lookupVmsByIp('10.4.0.2')).map((v) => v.vmName)).toEqual(['new2']);
    expect(await jobs(QueueNames.TERMINATE)).toHaveLength(1);
  });
});

describe('startSpawnIfRequired', () => {
  it('spawns for the warm pool, registers the spawn and records the spawn start', async () => {
    clock.now = T0 + 30 * S - 1;
    expect(await master.startSpawnIfRequired()).toEqual([]);
    clock.now = T0 + 30 * S;
    expect(await master.startSpawnIfRequired()).toEqual([{ type: 'spawn', group: 'warm', reason: 'warm_pool' }]);
    const inFlight = await vmm.getSpawnsInFlight('warm');
    expect(inFlight).toHaveLength(1);
    expect(inFlight[0]!.startedAt).toBe(clock.now);
    expect(await vmm.readVmPoolInfo('warm', LAST_VM_SPAWN_START)).toBe(String(clock.now));
    const spawnJobs = await jobs(QueueNames.SPAWN);
    expect(spawnJobs.map((j) => [j.id, j.data])).toEqual([[spawnJobId(inFlight[0]!.spawnId), { group: 'warm', spawnId: inFlight[0]!.spawnId, reason: 'warm_pool' }]]);
    // The interval holds the second spawn: not 1 ms before, yes at it.
    clock.now += 30 * S - 1;
    expect(await master.startSpawnIfRequired()).toEqual([]);
    clock.now += 1;
    expect(await master.startSpawnIfRequired()).toEqual([{ type: 'spawn', group: 'warm', reason: 'warm_pool' }]);
    // Two in flight fill min_ready (2): no more, however long we wait (until they go stale).
    clock.now += 1000 * S;
    expect(await master.startSpawnIfRequired()).toEqual([]);
    expect(await jobs(QueueNames.SPAWN)).toHaveLength(2);
  });

  it('drops a spawn in flight 1 ms after vm_spawn_stale_timeout, not at it', async () => {
    await vmm.registerSpawn('base', 'lost-spawn');
    clock.now = T0 + 1800 * S;
    await master.startSpawnIfRequired();
    expect((await vmm.getSpawnsInFlight('base')).map((s) => s.spawnId)).toEqual(['lost-spawn']);
    clock.now += 1;
    const applied = await master.startSpawnIfRequired();
    expect(applied).toContainEqual({ type: 'dropStaleSpawn', group: 'base', spawnId: 'lost-spawn' });
    expect(await vmm.getSpawnsInFlight('base')).toEqual([]);
  });

  /** Parks a request of `owner` in group 0's line, as the acquire processor does when no VM fits. */
  async function waitInLine(jobId: string, owner: string, deadline: number): Promise<void> {
    const attempt = await vmm.tryAcquireVm(
      { owner, sandbox: 'sb', groups: [0], workerId: 'w' },
      { member: acquireWaiterMember(clock.now, jobId), jobId, priority: 0, deadline },
    );
    expect(attempt.status).toBe('none');
  }

  it('spawns for waiting acquire requests of a group, and not for expired ones', async () => {
    await waitInLine('expired-request', 'alice', T0 + S);
    clock.now = T0 + 2 * S;
    expect(await master.startSpawnIfRequired()).toEqual([]);
    await waitInLine('waiting-request', 'bob', T0 + 60 * S);
    expect(await master.startSpawnIfRequired()).toEqual([{ type: 'spawn', group: 'base', reason: 'demand' }]);
    expect((await jobs(QueueNames.SPAWN)).map((j) => j.data.group)).toEqual(['base']);
  });

  it('stops at max_vm_total active VMs even with demand', async () => {
    for (let i = 1; i <= 4; i++) await readyVm(`full${i}`, `10.5.0.${i}`);
    for (let i = 1; i <= 4; i++) await vmm.acquireVm({ groups: [0], owner: `u${i}`, sandbox: 'sb', workerId: 'w' });
    await waitInLine('waiting-request', 'u5', T0 + 60 * S);
    expect(await master.startSpawnIfRequired()).toEqual([]);
    await vmm.startVmTermination('full1');
    expect(await master.startSpawnIfRequired()).toEqual([{ type: 'spawn', group: 'base', reason: 'demand' }]);
  });
});

describe('reclaimExpiredLeases', () => {
  it('returns what VmManager.expireLeases did (empty when no lease lapsed)', async () => {
    await readyVm('lease1', '10.6.0.1');
    await vmm.acquireVm({ groups: [0], owner: 'alice', sandbox: 'sb', workerId: 'w' });
    const leaseTimeoutMs = vmm.config.groups[0]!.lease_timeout * S;
    clock.now = T0 + leaseTimeoutMs - 1;
    expect(await master.reclaimExpiredLeases()).toEqual([]);
    clock.now = T0 + leaseTimeoutMs + 1;
    expect(await master.reclaimExpiredLeases()).toEqual([{ vmName: 'lease1', action: 'terminate' }]);
    expect((await vmm.getVmByName('lease1')).state).toBe('terminating');
  });
});

describe('doCycle', () => {
  it('runs every step in one cycle', async () => {
    await dirtyVm('c-dirty', '10.7.0.1');
    await vmm.addVmToPool('10.7.0.2', 'c-new', 'base');
    clock.now = T0 + 121 * S;
    const report = await master.doCycle();
    expect(report.ran).toBe(true);
    expect(report.counts.removeOldDirtyVms).toBe(1);
    expect(report.counts.checkVmsHealth).toBe(1);
    expect(report.counts.startSpawnIfRequired).toBe(1);
    expect((await vmm.getVmByName('c-dirty')).state).toBe('terminating');
    expect((await jobs(QueueNames.HEALTH)).map((j) => j.data.vmName)).toEqual(['c-new']);
    expect((await jobs(QueueNames.SPAWN)).map((j) => j.data.group)).toEqual(['warm']);
  });

  it('does nothing while another holder has the cycle lock, and runs once it expired (a dead replica)', async () => {
    clock.now = T0 + 30 * S;
    const other = new CycleLock(redis, vmm.prefix, 300);
    const token = await other.tryAcquire();
    expect(token).not.toBeNull();
    const blocked = await master.doCycle();
    expect(blocked.ran).toBe(false);
    expect(await jobs(QueueNames.SPAWN)).toHaveLength(0);
    // The holder "dies": it never releases, the lock expires.
    await new Promise((r) => setTimeout(r, 400));
    const report = await master.doCycle();
    expect(report.ran).toBe(true);
    expect(await jobs(QueueNames.SPAWN)).toHaveLength(1);
    expect(await redis.exists(cycleLockKey(vmm))).toBe(0);
    expect(await other.release(token!)).toBe(false);
  });
});

describe('the cycle log line', () => {
  it('is debug for a cycle that did nothing and info for one that acted', async () => {
    const lines: { level: number; msg: string; counts?: Record<string, number> }[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const logged = new VmManager(config, { redis, prefix, clock: () => clock.now, logger });
    const quiet = new VmMaster(logged);
    try {
      const cycleLines = () => lines.filter((l) => l.msg === 'reconcile cycle');
      expect((await quiet.doCycle()).ran).toBe(true);
      expect(cycleLines().map((l) => l.level)).toEqual([pino.levels.values.debug]);
      await vmm.addVmToPool('10.9.0.1', 'unchecked', 'base');
      await quiet.doCycle();
      const [, acted] = cycleLines();
      expect(acted).toMatchObject({ level: pino.levels.values.info, counts: { checkVmsHealth: 1 } });
    } finally {
      await logged.close();
    }
  });
});

describe('readSnapshot reads only what is due', () => {
  it('reads no VM record while nothing is due, and counts the groups from the indexes', async () => {
    await readyVm('fresh1', '10.9.0.1');
    await readyVm('fresh2', '10.9.0.2');
    await dirtyVm('dirty9', '10.9.0.3');
    clock.now = T0 + 60 * S;
    const snapshot = await master.readSnapshot();
    expect(snapshot.vms).toEqual([]);
    expect(snapshot.groups[0]!.counts).toEqual({ active: 3, all: 3, coming: 2 });
  });

  it('reads the VMs due for a check, the dirty VMs past their timeout and the stale checks and terminations', async () => {
    await dirtyVm('olddirty', '10.9.1.2');
    await readyVm('old1', '10.9.1.1');
    await vmm.addVmToPool('10.9.1.3', 'stuck', 'base');
    expect(await vmm.startVmCheck('stuck')).toBe(true);
    await readyVm('gone', '10.9.1.4');
    expect(await vmm.startVmTermination('gone', undefined, 'surplus')).toBe(true);
    clock.now = T0 + 120 * S + 1;
    await readyVm('new1', '10.9.1.5');
    expect((await master.readSnapshot()).vms.map((v) => v.vmName)).toEqual(['old1', 'olddirty']);
    clock.now = T0 + 600 * S + 1;
    // stuck: check_health past 300 s; gone: terminating past 600 s; new1 checked at T0 + 120 s is due too.
    expect((await master.readSnapshot()).vms.map((v) => v.vmName)).toEqual(['gone', 'new1', 'old1', 'olddirty', 'stuck']);
  });

  it('a VM recorded before the due-time sets existed is found after the backfill', async () => {
    await readyVm('legacy', '10.9.2.1');
    // As a pool written before this version: the VM is in no due-time set.
    await redis.del(keys.dueCheck('base'), keys.coming('base'));
    clock.now = T0 + 121 * S;
    expect((await master.readSnapshot()).vms).toEqual([]);
    expect(await vmm.backfillDueTimes(1)).toBe(1);
    expect((await master.readSnapshot()).vms.map((v) => v.vmName)).toEqual(['legacy']);
    expect((await master.checkVmsHealth()).map((a) => a.type)).toEqual(['enqueueHealth']);
  });
});
