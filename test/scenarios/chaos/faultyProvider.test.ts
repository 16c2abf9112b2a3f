import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmAssignment } from '../../../queues/acquire.js';
import { HOOK_NETWORKS, hookMachines, hookProvider, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';
import { CHAOS_SCALE, checkAudit, compareWithProvider, readAudit, reportFigures, settled, startSystem, type ChaosSystem } from './harness.js';

// Chaos scenario 5: a command provider whose hooks misbehave (test/scenarios/chaos/fixtures/faulty): spawns
// that fail, hang past spawn_timeout, succeed late, print garbage, or make a machine and then hang;
// terminates that fail twice per machine before they work; a health check that fails one time in
// four. Builders acquire and release all along. Then the faults stop (`healed`), and the pool must
// converge: min_ready served, the provider's machines equal to the pool's VMs, nothing doubled.
const stateDir = hookStateDir('chaos-faulty');
const faulty = join(import.meta.dirname, 'fixtures', 'faulty');
const LIMITS = { max_vm_total: 4, max_vm_per_user: 2 };
const MIN_READY = 2;
const CHAOS_MS = 40_000 * CHAOS_SCALE;
const BUILDERS = 3;
const base = hookProvider({ stateDir, port: 2313, newMachineEachRun: true, list: true });
const config = {
  vm_cycle_timeout: 0.5,
  audit: { max_events: 1_000_000 },
  groups: [
    {
      name: 'faulty',
      min_ready: MIN_READY,
      ...LIMITS,
      max_spawn_processes: 2,
      vm_spawn_min_interval: 0,
      vm_health_check_period: 1,
      vm_ssh_check_timeout: 2,
      vm_max_check_fails: 1,
      vm_terminating_timeout: 5,
      // Builders leave their VMs bound (dirty) when they stop; retired soon, they make room for clean ones.
      vm_dirty_terminating_timeout: 3,
      // Each VM retires after three builds: many spawns meet the faults.
      reuse_max_count: 3,
      lease_timeout: 30,
      orphan_check_period: 2,
      orphan_grace_period: 3,
      allowed_networks: HOOK_NETWORKS,
      provider: { ...base, spawn_cmd: [join(faulty, 'spawn.sh')], terminate_cmd: [join(faulty, 'terminate.sh')], spawn_timeout: 5, terminate_timeout: 5 },
      check: { type: 'command', cmd: [join(faulty, 'check.sh')], env: { HOOK_STATE_DIR: stateDir } },
    },
  ],
};

let sys: ChaosSystem;

beforeAll(async () => {
  sys = await startSystem('faulty', config, ['reconcile', 'spawn', 'spawn', 'health', 'terminate', 'acquire', 'acquire']);
}, 120_000);

afterAll(async () => {
  await sys?.close();
  removeHookMachines(stateDir);
}, 60_000);

describe('chaos 5: a fault-injecting provider', () => {
  it('spawns that hang, fail, come late or print garbage, terminates that fail, flapping checks: the pool converges, nothing leaks', { timeout: 600_000 }, async () => {
    const { vmm, client } = sys;
    const stats = { tried: 0, assigned: 0, failed: [] as string[], lost: 0 };
    const stopAt = Date.now() + CHAOS_MS;
    const builder = async (i: number) => {
      const owner = `b${i}`;
      while (Date.now() < stopAt) {
        stats.tried += 1;
        let deadline: NodeJS.Timeout | undefined;
        const outcome = await Promise.race([
          client.acquire({ owner, sandbox: `${owner}/sb`, groups: [0], timeoutMs: 30_000 }).then(
            (a): VmAssignment | Error => a,
            (err: Error) => err,
          ),
          new Promise<'lost'>((r) => (deadline = setTimeout(() => r('lost'), 90_000))),
        ]);
        clearTimeout(deadline);
        if (outcome === 'lost') stats.lost += 1;
        else if (outcome instanceof Error) stats.failed.push(outcome.message);
        else {
          stats.assigned += 1;
          await new Promise((r) => setTimeout(r, 200 + Math.random() * 800));
          await client.release(outcome).catch(() => false);
        }
      }
    };
    await Promise.all(Array.from({ length: BUILDERS }, (_, i) => builder(i)));

    writeFileSync(join(stateDir, 'healed'), '');
    const healedAt = Date.now();
    await sys.until(async () => (await vmm.getVmsByGroupAndStates('faulty', ['ready'])).filter((v) => v.owner === null).length >= MIN_READY, 90_000, 'min_ready clean VMs again');
    const diff = await sys.until(async () => {
      if (!(await settled(vmm))) return null;
      const d = await compareWithProvider(vmm, hookMachines(stateDir));
      return d.leaked.length === 0 && d.missing.length === 0 ? d : null;
    }, 90_000, "the provider's machines equal the pool's VMs");
    const recoverMs = Date.now() - healedAt;

    const faults = readFileSync(join(stateDir, 'faults'), 'utf8').trim().split('\n');
    const count = (f: string) => faults.filter((x) => x === f).length;
    const events = await readAudit(vmm.reader);
    const audit = checkAudit(events, { faulty: LIMITS });
    const terminations = events.filter((e) => e.event === 'removed').length;
    const terminateRuns = readdirSync(stateDir)
      .filter((f) => f.startsWith('tries-'))
      .map((f) => readFileSync(join(stateDir, f), 'utf8').trim().split('\n').length);
    reportFigures({
      scenario: '5 fault-injecting provider',
      tried: stats.tried,
      lost: stats.lost,
      doubled: audit.doubled,
      recoverMs,
      notes: `${stats.assigned} assigned, ${stats.failed.length} failed with a reason; spawns: ${count('ok')} ok, ${count('fail')} failed, ${count('hang')} hung, ${count('late')} late, ${count('garbage')} garbage, ${count('made-then-hang')} made then hung; ${terminations} VMs removed after ${terminateRuns.reduce((a, b) => a + b, 0)} terminate runs on ${terminateRuns.length} machines; checks failed ${events.filter((e) => e.event === 'check_failed').length}; leaked ${diff.leaked.length}`,
    });
    expect(stats.lost, 'acquire requests lost').toBe(0);
    for (const reason of stats.failed) expect(reason).toMatch(/\S/);
    expect(stats.assigned).toBeGreaterThan(0);
    expect(audit.problems).toEqual([]);
    expect([diff.leaked, diff.missing]).toEqual([[], []]);
    // The faults did happen.
    expect(count('fail') + count('hang') + count('garbage') + count('made-then-hang')).toBeGreaterThan(0);
  });
});
