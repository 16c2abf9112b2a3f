import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VmAssignment } from '../../../queues/acquire.js';
import { ROOT } from '../../helpers/processes.js';
import { hookGroup, hookMachines, hookStateDir, removeHookMachines } from '../../helpers/hookMachines.js';
import { CHAOS_SCALE, checkAudit, compareWithProvider, readAudit, reportFigures, settled, startSystem, type ChaosSystem } from './harness.js';

// Chaos scenario 3: a builder process that dies (SIGKILL) while it holds a VM stops renewing; its VM
// is reclaimed within its lease time (plus a reconcile period), by each on_lease_expiry: terminate
// (replaced by a new VM) and release (health-checked, then served again). Measured from the kill.
const stateDir = hookStateDir('chaos-builder');
const LEASE_S = 3;
const PERIOD_S = 0.5;
const LIMITS = { max_vm_total: 2, max_vm_per_user: 2 };
const ROUNDS = 2 * CHAOS_SCALE;
const common = { min_ready: 1, ...LIMITS, lease_timeout: LEASE_S, ...hookGroup({ stateDir, port: 2312, list: true }), orphan_check_period: 2, orphan_grace_period: 5 };
const config = {
  vm_cycle_timeout: PERIOD_S,
  audit: { max_events: 100_000 },
  groups: [
    { name: 'terminate', on_lease_expiry: 'terminate', ...common },
    { name: 'release', on_lease_expiry: 'release', ...common },
  ],
};

let sys: ChaosSystem;

beforeAll(async () => {
  sys = await startSystem('builder', config, ['reconcile', 'spawn', 'health', 'terminate', 'acquire']);
}, 120_000);

afterAll(async () => {
  await sys?.close();
  removeHookMachines(stateDir);
}, 60_000);

/** Starts a builder process and resolves with it and its assignment once it holds a VM. */
function startBuilder(group: number, owner: string) {
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'builder.ts')], {
    cwd: ROOT,
    env: { ...process.env, REDIS_URL: sys.redis.url, PREFIX: sys.prefix, OWNER: owner, GROUP: String(group), RENEW_MS: String((LEASE_S * 1000) / 4) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise((r) => child.once('exit', r));
  const assignment = new Promise<VmAssignment>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!) as VmAssignment);
    });
    child.once('exit', (code) => reject(new Error(`builder exited with ${code}:\n${out}\n${err}`)));
  });
  return { child, assignment, exited };
}

describe('chaos 3: a builder that dies holding a VM', () => {
  it('its VM is reclaimed within the lease time, by either on_lease_expiry, and nothing leaks', { timeout: 600_000 }, async () => {
    const { vmm } = sys;
    const recoveries: number[] = [];
    let tried = 0;
    for (let round = 0; round < ROUNDS; round++) {
      for (const group of [0, 1]) {
        tried += 1;
        await sys.until(async () => (await vmm.getVmsByGroupAndStates(group, ['ready'])).length > 0, 60_000, `a ready VM in group ${group}`);
        const builder = startBuilder(group, `owner-${round}-${group}`);
        const a = await builder.assignment;
        // Held for more than one lease time: the renewals keep it.
        await new Promise((r) => setTimeout(r, LEASE_S * 1000 * 1.5));
        expect(await sys.client.holds(a)).toBe(true);
        builder.child.kill('SIGKILL');
        await builder.exited;
        const killedAt = Date.now();
        const lastRenewal = (await vmm.getVmRecord(a.vmName)).leaseExpiresAt! - LEASE_S * 1000;
        // Reclaimed: the lease lapsed and reconcile acted (lease_expired in the trail, the lease gone).
        await sys.until(async () => !(await sys.client.holds(a)), (LEASE_S + 10 * PERIOD_S) * 1000 + 10_000, `${a.vmName} reclaimed`);
        const reclaimedAt = Date.now();
        recoveries.push(reclaimedAt - killedAt);
        // Within the lease time after the last renewal, plus two reconcile periods (and a second for a busy machine).
        expect(reclaimedAt - lastRenewal).toBeLessThanOrEqual((LEASE_S + 2 * PERIOD_S + 1) * 1000);
        const expired = (await readAudit(vmm.reader)).filter((e) => e.event === 'lease_expired' && e.lease === a.leaseId);
        expect(expired.map((e) => [e.vm, e.details.action])).toEqual([[a.vmName, group === 0 ? 'terminate' : 'release']]);
      }
    }
    // Both groups are served again: the terminated VMs were replaced, the released ones checked.
    for (const group of [0, 1]) await sys.until(async () => (await vmm.getVmsByGroupAndStates(group, ['ready'])).length > 0, 60_000, `group ${group} served again`);
    await sys.until(() => settled(vmm), 60_000, 'the pool settled');
    const { leaked, missing } = await sys.until(async () => {
      const diff = await compareWithProvider(vmm, hookMachines(stateDir));
      return diff.leaked.length === 0 && diff.missing.length === 0 ? diff : null;
    }, 30_000, "the provider's machines equal the pool's VMs");
    const audit = checkAudit(await readAudit(vmm.reader), { terminate: LIMITS, release: LIMITS });
    reportFigures({
      scenario: '3 builder dies holding a VM',
      tried,
      lost: 0,
      doubled: audit.doubled,
      recoverMs: Math.max(...recoveries),
      notes: `lease ${LEASE_S} s, reconcile every ${PERIOD_S} s; reclaimed ${(Math.min(...recoveries) / 1000).toFixed(1)}-${(Math.max(...recoveries) / 1000).toFixed(1)} s after the kill; leaked ${leaked.length}`,
    });
    expect(audit.problems).toEqual([]);
    expect([leaked, missing]).toEqual([[], []]);
  });
});
