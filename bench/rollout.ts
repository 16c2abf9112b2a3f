/**
 * Rollout benchmark: rolls a group of min_ready 10 over to a new image with the real scripts and the
 * real reconcile cycle (VmMaster.doCycle) on a private redis-server, in simulated time: a cycle every
 * 10 s, a spawn takes 60 s from its job to ready, a termination 5 s. Spawn and terminate jobs are
 * worked by this script (each spawn with the config of the spawn workers, v2 after the change).
 * Prints, per scenario (surge room in max_vm_total, or none):
 *   - the time from the config change to the last old VM gone;
 *   - the minimum number of clean ready VMs during the roll (min_ready 10);
 *   - the extra VM-minutes the surge cost: machines alive (booting, or in the pool in any state
 *     until removed) above the 10 before the change, integrated over the roll.
 *   npm run bench:rollout            (BENCH_JSON=1: one BENCH_RESULT line for npm run bench)
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type { ConfigInput } from '../src/config/index.js';
import { VmManager } from '../src/pool/vmManager.js';
import { VmMaster } from '../src/reconcile/vmMaster.js';
import { QueueNames } from '../queues/names.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
import { startPrivateRedis } from './lib/redisServer.js';

const MIN_READY = 10;
const CYCLE_S = 10;
const BOOT_S = 60;
const TERMINATE_S = 5;
const T0 = 1_750_000_000_000;
const logger = discardingLogger();

interface Scenario {
  name: string;
  maxVmTotal: number;
  maxSpawnProcesses: number;
}
const SCENARIOS: Scenario[] = [
  { name: 'surge room (max_vm_total 20, max_spawn_processes 4)', maxVmTotal: 20, maxSpawnProcesses: 4 },
  { name: 'surge room (max_vm_total 20, max_spawn_processes 10)', maxVmTotal: 20, maxSpawnProcesses: 10 },
  { name: 'no room (max_vm_total 10, max_spawn_processes 4)', maxVmTotal: 10, maxSpawnProcesses: 4 },
];

interface Result {
  scenario: string;
  rollSeconds: number;
  minReady: number;
  extraVmMinutes: number;
  peakVms: number;
  cycles: number;
}

const configOf = (s: Scenario, image: string): ConfigInput => ({
  vm_cycle_timeout: CYCLE_S,
  groups: [{ name: 'roll', image, min_ready: MIN_READY, max_vm_total: s.maxVmTotal, max_spawn_processes: s.maxSpawnProcesses, vm_spawn_min_interval: 0, vm_health_check_period: 3600 }],
});

async function roll(url: string, s: Scenario, index: number): Promise<Result> {
  const prefix = `bench-rollout-${index}`;
  const redis = new Redis(url, { maxRetriesPerRequest: null });
  const clock = { now: T0 };
  const v1 = new VmManager(configOf(s, 'fedora-41'), { redis, prefix, clock: () => clock.now, logger });
  const v2 = new VmManager(configOf(s, 'fedora-42'), { redis, prefix, clock: () => clock.now, logger });
  const spawnQueue = new Queue(QueueNames.SPAWN, { connection: redis, prefix });
  const terminateQueue = new Queue(QueueNames.TERMINATE, { connection: redis, prefix });
  await v1.markServerStart();
  clock.now += 1000;

  // Jobs in flight in simulated time: a spawn's VM is ready BOOT_S after its job, a VM is removed TERMINATE_S after its job.
  const booting: { at: number; spawnId: string; group: number; by: VmManager }[] = [];
  const removing: { at: number; vmName: string }[] = [];
  let seq = 0;
  async function work(spawner: VmManager): Promise<void> {
    for (const job of await spawnQueue.getJobs(['waiting', 'prioritized'])) {
      booting.push({ at: clock.now + BOOT_S * 1000, spawnId: job.data.spawnId, group: job.data.group, by: spawner });
      await job.remove();
    }
    for (const job of await terminateQueue.getJobs(['waiting', 'prioritized'])) {
      removing.push({ at: clock.now + TERMINATE_S * 1000, vmName: job.data.vmName });
      await job.remove();
    }
    for (const b of booting.filter((x) => x.at <= clock.now)) {
      booting.splice(booting.indexOf(b), 1);
      const name = `vm-${++seq}`;
      await b.by.addVmToPool(`10.${index}.${seq >> 8}.${seq & 255}`, name, b.group, { spawnId: b.spawnId });
      await b.by.startVmCheck(name);
      await b.by.recordHealthCheckResult(name, true);
    }
    for (const r of removing.filter((x) => x.at <= clock.now)) {
      removing.splice(removing.indexOf(r), 1);
      await v2.removeVmFromPool(r.vmName).catch(() => undefined);
    }
  }
  // Machines that cost: booting (a spawn's job ran), in the pool (any state), until removed.
  const alive = async () => booting.length + (await v2.getAllVms()).length;
  const cleanReady = async () => (await v2.getVmsByGroupAndStates('roll', ['ready'])).filter((v) => v.owner === null).length;

  // Fill the warm pool with v1, in steps of one second.
  const master1 = new VmMaster(v1, { startedAt: clock.now });
  for (let t = 0; (await cleanReady()) < MIN_READY; t++) {
    if (t % CYCLE_S === 0) await master1.doCycle();
    await work(v1);
    clock.now += 1000;
    if (t > 3600) throw new Error('the v1 warm pool never filled');
  }
  const before = await alive();

  // The change: spawn workers and reconcile run v2 from now on.
  const changedAt = clock.now;
  const master2 = new VmMaster(v2, { startedAt: clock.now });
  let minReady = Infinity;
  let peak = before;
  let extraVmMs = 0;
  let cycles = 0;
  for (let t = 0; ; t++) {
    if (t % CYCLE_S === 0) {
      await master2.doCycle();
      cycles++;
    }
    await work(v2);
    const n = await alive();
    peak = Math.max(peak, n);
    extraVmMs += Math.max(0, n - before) * 1000;
    minReady = Math.min(minReady, await cleanReady());
    const [state] = await v2.launchStates();
    if (state!.outdated === 0 && (await v2.getAllVmRecords()).every((v) => v.launchFingerprint === v2.launchFingerprint('roll'))) break;
    clock.now += 1000;
    if (t > 7200) throw new Error('the roll never ended');
  }
  const result = { scenario: s.name, rollSeconds: (clock.now - changedAt) / 1000, minReady, extraVmMinutes: extraVmMs / 60_000, peakVms: peak, cycles };
  await spawnQueue.obliterate({ force: true });
  await terminateQueue.obliterate({ force: true });
  await spawnQueue.close();
  await terminateQueue.close();
  await v1.close();
  await v2.close();
  await redis.quit();
  return result;
}

async function main(): Promise<void> {
  const startedAt = Date.now();
  const server = await startPrivateRedis();
  const results: Result[] = [];
  try {
    for (const [i, s] of SCENARIOS.entries()) results.push(await roll(server.url, s, i));
  } finally {
    await server.stop();
  }
  console.log(`vmpool rollout benchmark: private redis-server, min_ready ${MIN_READY}, a reconcile cycle every ${CYCLE_S} s, spawn to ready ${BOOT_S} s, terminate ${TERMINATE_S} s (simulated time, real scripts and cycles)\n`);
  console.log(
    markdownTable(
      ['scenario', 'change to last old VM gone', 'min clean ready', 'extra VM-minutes', 'peak VMs', 'cycles'],
      results.map((r) => [r.scenario, `${r.rollSeconds} s`, String(r.minReady), r.extraVmMinutes.toFixed(1), String(r.peakVms), String(r.cycles)]),
    ),
  );
  console.log(`\nfinished in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
  if (process.env.BENCH_JSON === '1') {
    const out = results.flatMap((r) => [
      { part: `rollout, ${r.scenario}`, figure: 'config change to last old VM gone', target: '-', measured: `${r.rollSeconds} s`, result: 'info' },
      { part: `rollout, ${r.scenario}`, figure: `min clean ready VMs during the roll (min_ready ${MIN_READY})`, target: r.scenario.startsWith('no room') ? `>= ${MIN_READY - 1}` : `>= ${MIN_READY}`, measured: String(r.minReady), pass: r.minReady >= (r.scenario.startsWith('no room') ? MIN_READY - 1 : MIN_READY) },
      { part: `rollout, ${r.scenario}`, figure: 'extra VM-minutes of the surge', target: '-', measured: r.extraVmMinutes.toFixed(1), result: 'info' },
    ]);
    console.log(`BENCH_RESULT ${JSON.stringify({ rows: out })}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
