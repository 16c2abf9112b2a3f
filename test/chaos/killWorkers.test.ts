import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmAssignment } from '../../queues/acquire.js';
import { hookGroup, hookMachines, hookStateDir, removeHookMachines } from '../helpers/hookMachines.js';
import { CHAOS_SCALE, checkAudit, compareWithProvider, readAudit, reportFigures, settled, startSystem, type ChaosSystem } from './harness.js';

// Chaos scenario 2: kill -9 of each worker type under load, one at a time (a replacement starts
// at once), then of every process together, then a restart; the system must converge with nothing
// lost, doubled or leaked. Builders acquire (with and without task ids) and release all along; VMs
// retire after two builds, so spawns, health checks and terminations keep running too.
const stateDir = hookStateDir('chaos-kill');
const LIMITS = { max_vm_total: 4, max_vm_per_user: 2 };
const MIN_READY = 2;
const TYPES = ['acquire', 'spawn', 'health', 'terminate', 'reconcile'] as const;
const ROUNDS = CHAOS_SCALE;
const BUILDERS = 4;
const config = {
  vm_cycle_timeout: 0.5,
  audit: { max_events: 1_000_000 },
  jobs: { lock_duration: 3, stalled_interval: 1, max_stalled_count: 2 },
  groups: [
    {
      name: 'kill',
      min_ready: MIN_READY,
      ...LIMITS,
      max_spawn_processes: 2,
      reuse_max_count: 2,
      vm_dirty_terminating_timeout: 3,
      vm_terminating_timeout: 5,
      lease_timeout: 10,
      ...hookGroup({ stateDir, port: 2314, spawnDelay: 0.5, newMachineEachRun: true, list: true }),
      orphan_check_period: 2,
      orphan_grace_period: 4,
    },
  ],
};

let sys: ChaosSystem;

beforeAll(async () => {
  sys = await startSystem('kill', config, ['reconcile', 'reconcile', 'spawn', 'spawn', 'health', 'health', 'terminate', 'terminate', 'acquire', 'acquire']);
}, 120_000);

afterAll(async () => {
  await sys?.close();
  removeHookMachines(stateDir);
}, 60_000);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('chaos 2: kill -9 of worker processes under load', () => {
  it('each type one at a time, then all together and a restart: nothing lost, doubled or leaked', { timeout: 600_000 }, async () => {
    const { vmm, client } = sys;
    const stats = { tried: 0, assigned: 0, failed: [] as string[], lost: 0 };
    let stop = false;
    const builder = async (i: number) => {
      const owner = `k${i}`;
      let n = 0;
      while (!stop) {
        stats.tried += 1;
        n += 1;
        let deadline: NodeJS.Timeout | undefined;
        const request = { owner, sandbox: `${owner}/sb`, groups: [0], timeoutMs: 30_000, ...(i % 2 === 0 ? { taskId: `${owner}-${n}` } : {}) };
        const outcome = await Promise.race([
          client.acquire(request).then(
            (a): VmAssignment | Error => a,
            (err: Error) => err,
          ),
          new Promise<'lost'>((r) => (deadline = setTimeout(() => r('lost'), 120_000))),
        ]);
        clearTimeout(deadline);
        if (outcome === 'lost') stats.lost += 1;
        else if (outcome instanceof Error) stats.failed.push(outcome.message);
        else {
          stats.assigned += 1;
          await sleep(100 + Math.random() * 400);
          await client.release(outcome).catch(() => false);
        }
      }
    };
    await sys.until(async () => (await vmm.getVmsByGroupAndStates(0, ['ready'])).length >= MIN_READY, 60_000, 'the warm pool');
    const builders = Promise.all(Array.from({ length: BUILDERS }, (_, i) => builder(i)));
    const kills: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      for (const type of TYPES) {
        await sleep(3_000);
        const victim = sys.running(type)[0]!;
        await victim.kill();
        kills.push(type);
        await sys.start(type);
      }
    }
    await sleep(3_000);
    // Every process at once, then all of them again.
    const all = sys.running();
    await Promise.all(all.map((w) => w.kill()));
    kills.push(`all ${all.length}`);
    const killedAt = Date.now();
    await sleep(1_000);
    await Promise.all(all.map((w) => sys.start(w.type)));
    await sys.until(async () => (await vmm.getVmsByGroupAndStates(0, ['ready'])).length > 0, 60_000, 'a ready VM after the restart');
    const servingAgainMs = Date.now() - killedAt;
    await sleep(5_000);
    stop = true;
    await builders;

    await sys.until(async () => (await vmm.getVmsByGroupAndStates(0, ['ready'])).filter((v) => v.boundToUser === null).length >= MIN_READY, 90_000, 'min_ready clean VMs');
    const diff = await sys.until(async () => {
      if (!(await settled(vmm))) return null;
      const d = await compareWithProvider(vmm, hookMachines(stateDir));
      return d.leaked.length === 0 && d.missing.length === 0 ? d : null;
    }, 90_000, "the provider's machines equal the pool's VMs");
    const convergedMs = Date.now() - killedAt;
    const audit = checkAudit(await readAudit(vmm.reader), [LIMITS]);
    reportFigures({
      scenario: '2 kill -9 of worker processes',
      tried: stats.tried,
      lost: stats.lost,
      doubled: audit.doubled,
      recoverMs: convergedMs,
      notes: `kills: ${kills.join(', ')}; serving again ${(servingAgainMs / 1000).toFixed(1)} s after killing all; ${stats.assigned} assigned, ${stats.failed.length} failed with a reason; leaked ${diff.leaked.length}`,
    });
    expect(stats.lost, 'acquire requests lost').toBe(0);
    for (const reason of stats.failed) expect(reason).toMatch(/\S/);
    expect(audit.problems).toEqual([]);
    expect(audit.doubled).toBe(0);
    expect([diff.leaked, diff.missing]).toEqual([[], []]);
  });
});
