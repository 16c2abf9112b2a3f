import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { VmDescriptorNotFound, VmError, VmStates, type VmState } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

/**
 * The whole state machine in one table: for each state, what each operation does. `refused` means the
 * operation reported that it did nothing and the VM is unchanged; otherwise the state after it.
 */
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-transitions');
});
afterAll(async () => kit.close());
beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

const { GOT_IP, CHECK_HEALTH, CHECK_HEALTH_FAILED, READY, IN_USE, TERMINATING } = VmStates;
const STATES: VmState[] = [GOT_IP, CHECK_HEALTH, CHECK_HEALTH_FAILED, READY, IN_USE, TERMINATING];
type Outcome = VmState | 'refused' | 'removed';

/** Each operation returns whether it acted. */
const operations: Record<string, (name: string) => Promise<boolean>> = {
  startVmCheck: (n) => kit.vmm.startVmCheck(n),
  healthOk: async (n) => ['ok'].includes((await kit.vmm.recordHealthCheckResult(n, true)).outcome),
  healthFailed: async (n) => ['failed', 'terminating'].includes((await kit.vmm.recordHealthCheckResult(n, false)).outcome),
  markVmCheckFailed: (n) => kit.vmm.markVmCheckFailed(n),
  releaseVm: (n) => kit.vmm.releaseVm(n),
  startVmTermination: (n) => kit.vmm.startVmTermination(n),
  removeVmFromPool: async (n) => {
    try {
      await kit.vmm.removeVmFromPool(n);
      return true;
    } catch (err) {
      if (err instanceof VmError && !(err instanceof VmDescriptorNotFound)) return false;
      throw err;
    }
  },
  acquireVm: async (n) => {
    try {
      const vm = await kit.vmm.acquireVm({ groups: [0], owner: 'taker', sandbox: 's', workerId: 'w' });
      expect(vm.vmName).toBe(n);
      return true;
    } catch (err) {
      if ((err as Error).name === 'NoVmAvailable') return false;
      throw err;
    }
  },
};

//                      got_ip         check_health          check_health_failed   ready           in_use     terminating
const table: Record<string, Outcome[]> = {
  startVmCheck:       [CHECK_HEALTH,  'refused',            CHECK_HEALTH,         CHECK_HEALTH,   IN_USE,    'refused'],
  healthOk:           ['refused',     READY,                'refused',            'refused',      IN_USE,    'refused'],
  healthFailed:       ['refused',     CHECK_HEALTH_FAILED,  CHECK_HEALTH_FAILED,  'refused',      IN_USE,    'refused'],
  markVmCheckFailed:  ['refused',     CHECK_HEALTH_FAILED,  'refused',            'refused',      'refused', 'refused'],
  releaseVm:          ['refused',     'refused',            'refused',            'refused',      READY,     'refused'],
  startVmTermination: [TERMINATING,   TERMINATING,          TERMINATING,          TERMINATING,    TERMINATING, 'refused'],
  removeVmFromPool:   ['refused',     'refused',            'refused',            'refused',      'refused', 'removed'],
  acquireVm:          ['refused',     'refused',            'refused',            IN_USE,         'refused', 'refused'],
};

async function bringTo(state: VmState): Promise<void> {
  await kit.vmm.addVmToPool('10.2.0.1', 'v', 'base');
  if (state === GOT_IP) return;
  if (state === TERMINATING) {
    await kit.vmm.startVmTermination('v');
    return;
  }
  await kit.vmm.startVmCheck('v');
  if (state === CHECK_HEALTH) return;
  if (state === CHECK_HEALTH_FAILED) {
    await kit.vmm.markVmCheckFailed('v'); // checkFails stays 0, so a failure does not terminate
    return;
  }
  await kit.vmm.recordHealthCheckResult('v', true);
  if (state === READY) return;
  await kit.vmm.acquireVm({ groups: [0], owner: 'holder', sandbox: 's', workerId: 'w' });
}

const cases = Object.entries(table).flatMap(([op, row]) => row.map((outcome, i) => [op, STATES[i]!, outcome] as const));

describe('state transition table', () => {
  it('covers every state for every operation', () => {
    for (const row of Object.values(table)) expect(row).toHaveLength(STATES.length);
  });

  it.each(cases)('%s from %s -> %s', async (op, from, outcome) => {
    await bringTo(from);
    const before = await kit.vmm.getVmByName('v');
    expect(before.state).toBe(from);
    kit.clock.now += 1000;
    const acted = await operations[op]!('v');
    if (outcome === 'refused') {
      expect(acted).toBe(false);
      expect(await kit.vmm.getVmByName('v')).toEqual(before);
    } else if (outcome === 'removed') {
      expect(acted).toBe(true);
      await expect(kit.vmm.getVmByName('v')).rejects.toThrow(VmDescriptorNotFound);
    } else {
      expect(acted).toBe(true);
      expect((await kit.vmm.getVmByName('v')).state).toBe(outcome);
    }
  });

  it.each(Object.keys(operations).filter((op) => op !== 'acquireVm'))('%s on an unknown VM throws VmDescriptorNotFound', async (op) => {
    await expect(operations[op]!('ghost')).rejects.toThrow(VmDescriptorNotFound);
  });
});
