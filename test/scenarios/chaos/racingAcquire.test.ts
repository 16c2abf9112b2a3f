import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmAssignment } from '../../../queues/acquire.js';
import { hookGroup, hookMachines, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';
import { CHAOS_SCALE, checkAudit, compareWithProvider, readAudit, reportFigures, runScript, settled, startSystem, type ChaosSystem } from './harness.js';

// Chaos scenario 1, racing acquisitions: a small pool, four acquire worker processes serving
// builders that acquire and release through VmPoolClient (the job path), and four racing builder
// processes (test/scenarios/chaos/fixtures/cycler.ts) hammering the acquire script straight, with reconcile,
// health checks and spawns running under them. Afterwards the audit trail must show no VM with two
// holders at once and no limit exceeded, and the provider's machines must be the pool's VMs.
const stateDir = hookStateDir('chaos-race');
const LIMITS = { max_vm_total: 12, max_vm_per_user: 2 };
const CYCLER_OWNERS = ['o1', 'o2', 'o3', 'o4'];
const CLIENT_OWNERS = ['c1', 'c2'];
const CYCLERS = 4;
const LOOPS = 4;
/** Acquisitions per racing process: 4 x 5,000 = 20,000 in CI. */
const CYCLES = 5_000 * CHAOS_SCALE;
const CLIENT_BUILDERS = 6;
const CLIENT_CYCLES = 40 * CHAOS_SCALE;
const config = {
  vm_cycle_timeout: 0.5,
  audit: { max_events: 2_000_000 * CHAOS_SCALE },
  groups: [
    {
      name: 'race',
      min_ready: 12,
      ...LIMITS,
      max_spawn_processes: 3,
      lease_timeout: 120,
      ...hookGroup({ stateDir, port: 2311, list: true }),
      orphan_check_period: 2,
      orphan_grace_period: 5,
    },
  ],
};

let sys: ChaosSystem;

beforeAll(async () => {
  sys = await startSystem('race', config, ['reconcile', 'spawn', 'health', 'terminate', 'acquire', 'acquire', 'acquire', 'acquire']);
}, 120_000);

afterAll(async () => {
  await sys?.close();
  removeHookMachines(stateDir);
}, 60_000);

interface CyclerStats {
  acquired: number;
  released: number;
  refused: number;
  tries: number;
  errors: string[];
}

describe('chaos 1: racing acquisitions', () => {
  it('tens of thousands of acquire/release cycles: no VM doubled, no request lost, no limit exceeded, nothing leaked', { timeout: 600_000 }, async () => {
    const { vmm, client } = sys;
    await sys.until(async () => (await vmm.getAllVms()).filter((v) => v.state === 'ready').length >= LIMITS.max_vm_total, 90_000, 'the pool filled');
    const started = Date.now();

    const cyclers = Array.from({ length: CYCLERS }, (_, id) =>
      runScript<CyclerStats>(
        join(import.meta.dirname, 'fixtures', 'cycler.ts'),
        { REDIS_URL: sys.redis.url, PREFIX: sys.prefix, CONFIG: JSON.stringify(config), LOOPS: String(LOOPS), CYCLES: String(CYCLES), OWNERS: CYCLER_OWNERS.join(','), ID: String(id) },
        540_000,
      ),
    );

    const clientStats = { tried: 0, assigned: 0, failed: [] as string[], lost: 0, released: 0 };
    const builder = async (i: number) => {
      const owner = CLIENT_OWNERS[i % CLIENT_OWNERS.length]!;
      for (let n = 0; n < CLIENT_CYCLES; n++) {
        clientStats.tried += 1;
        let deadline: NodeJS.Timeout | undefined;
        const outcome = await Promise.race([
          client.acquire({ owner, sandbox: `${owner}/sb`, groups: [0], timeoutMs: 60_000 }).then(
            (a): VmAssignment | Error => a,
            (err: Error) => err,
          ),
          new Promise<'lost'>((r) => (deadline = setTimeout(() => r('lost'), 150_000))),
        ]);
        clearTimeout(deadline);
        if (outcome === 'lost') clientStats.lost += 1;
        else if (outcome instanceof Error) clientStats.failed.push(outcome.message);
        else {
          clientStats.assigned += 1;
          if (await client.release(outcome).catch(() => false)) clientStats.released += 1;
        }
      }
    };
    await Promise.all(Array.from({ length: CLIENT_BUILDERS }, (_, i) => builder(i)));
    const stats = await Promise.all(cyclers);
    const elapsed = Date.now() - started;

    await sys.until(() => settled(vmm), 60_000, 'the pool settled');
    // The orphan pass has had its grace period: the provider's list and the pool agree.
    const { leaked, missing } = await sys.until(async () => {
      const diff = await compareWithProvider(vmm, hookMachines(stateDir));
      return diff.leaked.length === 0 && diff.missing.length === 0 ? diff : null;
    }, 30_000, "the provider's machines equal the pool's VMs");

    const events = await readAudit(vmm.reader);
    const audit = checkAudit(events, { race: LIMITS });
    const cycled = stats.reduce((n, s) => n + s.acquired, 0);
    const tries = stats.reduce((n, s) => n + s.tries, 0);
    const errors = stats.flatMap((s) => s.errors);
    reportFigures({
      scenario: '1 racing acquisitions',
      tried: cycled + clientStats.tried,
      lost: clientStats.lost,
      doubled: audit.doubled,
      recoverMs: null,
      notes: `${cycled} direct + ${clientStats.assigned} job cycles in ${(elapsed / 1000).toFixed(0)} s (${Math.round((cycled + clientStats.assigned) / (elapsed / 1000))}/s), ${tries} script tries; ${CYCLERS} racing processes x ${LOOPS} + ${CLIENT_BUILDERS} builders on ${LIMITS.max_vm_total} VMs; leaked ${leaked.length}`,
    });

    expect(errors, 'racing builders saw errors').toEqual([]);
    expect(clientStats.lost, 'acquire requests lost').toBe(0);
    expect(clientStats.failed, 'acquire requests failed').toEqual([]);
    expect(cycled).toBeGreaterThanOrEqual(CYCLERS * CYCLES);
    expect(audit.problems).toEqual([]);
    expect(audit.doubled).toBe(0);
    expect(audit.overTotal + audit.overPerOwner).toBe(0);
    // Every acquisition any builder saw is in the trail, and the trail has no other.
    expect(audit.acquired).toBe(cycled + clientStats.assigned);
    expect([leaked, missing]).toEqual([[], []]);
  });
});
