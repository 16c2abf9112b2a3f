import { describe, expect, it } from 'vitest';
import { VmStates } from '../../src/pool/types.js';
import { decideOrphans, type OrphanInput, type OrphanPoolVm } from '../../src/reconcile/orphanDecisions.js';

const MIN = 60_000;
const now = 1_800_000_000_000;
const graceMs = 15 * MIN;
const POOL = 'ci';

function vm(name: string, state: OrphanPoolVm['state'], extra: Partial<OrphanPoolVm> = {}): OrphanPoolVm {
  return { name, ip: '192.0.2.1', state, group: 'g0', ...extra };
}

function input(extra: Partial<OrphanInput>): OrphanInput {
  return { group: 'g0', poolId: POOL, poolVms: [], machines: [], previousUnknown: new Map(), previousMissing: new Map(), now, graceMs, ...extra };
}

describe('decideOrphans', () => {
  it('leaves known machines alone', () => {
    const d = decideOrphans(input({ poolVms: [vm('a', VmStates.READY)], machines: [{ name: 'a' }] }));
    expect(d.terminateMachines).toEqual([]);
    expect(d.terminateVms).toEqual([]);
    expect(d.unknown.size).toBe(0);
    expect(d.counts).toMatchObject({ machines: 1, poolVms: 1, unknown: 0, missing: 0 });
  });

  it('only remembers an unknown machine on its first pass, even an old one', () => {
    const old = { name: 'leak-1', createdAt: now - 10 * graceMs, pool: POOL };
    const d = decideOrphans(input({ machines: [old] }));
    expect(d.terminateMachines).toEqual([]);
    expect([...d.unknown]).toEqual([['leak-1', now]]);
    expect(d.counts).toMatchObject({ unknown: 1, unknownWaiting: 1, unknownTerminated: 0 });
  });

  it('terminates an unknown machine seen on two passes in a row and older than the grace', () => {
    const machine = { name: 'leak-1', createdAt: now - graceMs, pool: POOL };
    const d = decideOrphans(input({ machines: [machine], previousUnknown: new Map([['leak-1', now - 10 * MIN]]) }));
    expect(d.terminateMachines).toEqual([machine]);
    // Still remembered until it is gone from the list, with its first sighting.
    expect(d.unknown.get('leak-1')).toBe(now - 10 * MIN);
    expect(d.counts.unknownTerminated).toBe(1);
  });

  it('waits for the grace on a second pass of a young machine (a spawn still in flight)', () => {
    const d = decideOrphans(
      input({ machines: [{ name: 'new-1', createdAt: now - MIN, pool: POOL }], previousUnknown: new Map([['new-1', now - MIN]]) }),
    );
    expect(d.terminateMachines).toEqual([]);
    expect(d.counts.unknownWaiting).toBe(1);
  });

  it('measures age from the first sighting when the provider gives no creation time', () => {
    const young = decideOrphans(input({ machines: [{ name: 'x-1', pool: POOL }], previousUnknown: new Map([['x-1', now - MIN]]) }));
    expect(young.terminateMachines).toEqual([]);
    const old = decideOrphans(input({ machines: [{ name: 'x-1', pool: POOL }], previousUnknown: new Map([['x-1', now - graceMs]]) }));
    expect(old.terminateMachines).toEqual([{ name: 'x-1', pool: POOL }]);
  });

  it('forgets unknown machines that disappeared', () => {
    const d = decideOrphans(input({ machines: [], previousUnknown: new Map([['gone-1', now - graceMs]]) }));
    expect(d.unknown.size).toBe(0);
  });

  it('never takes a machine without this pool id for a leak: untagged ones are reported once, other pools\' ignored', () => {
    const old = now - 10 * graceMs;
    const machines = [
      { name: 'untagged-1', createdAt: old },
      { name: 'theirs-1', createdAt: old, pool: 'staging' },
      { name: 'ours-1', createdAt: old, pool: POOL },
    ];
    const previousUnknown = new Map(machines.map((m) => [m.name, old]));
    const first = decideOrphans(input({ machines, previousUnknown }));
    expect(first.terminateMachines.map((m) => m.name)).toEqual(['ours-1']);
    expect([...first.unknown.keys()]).toEqual(['ours-1']);
    expect([...first.untagged]).toEqual(['untagged-1']);
    expect(first.newlyUntagged.map((m) => m.name)).toEqual(['untagged-1']);
    expect(first.counts).toMatchObject({ machines: 3, unknown: 1, untagged: 1, otherPools: 1, unknownTerminated: 1 });
    // The next pass remembers it was reported: not reported again, still left alone.
    const second = decideOrphans(input({ machines, previousUnknown, previousUntagged: first.untagged }));
    expect(second.newlyUntagged).toEqual([]);
    expect([...second.untagged]).toEqual(['untagged-1']);
    expect(second.terminateMachines.map((m) => m.name)).toEqual(['ours-1']);
  });

  it('counts a pool VM listed without a pool id (or with another one) as listed, not missing', () => {
    const d = decideOrphans(
      input({ poolVms: [vm('a-1', VmStates.IN_USE), vm('b-1', VmStates.READY)], machines: [{ name: 'a-1' }, { name: 'b-1', pool: 'other' }], previousMissing: new Map([['a-1', now - MIN], ['b-1', now - MIN]]) }),
    );
    expect(d.terminateVms).toEqual([]);
    expect(d.missing.size).toBe(0);
    expect(d.untagged.size).toBe(0);
  });

  it('treats a machine known to another group as known', () => {
    const d = decideOrphans(
      input({ poolVms: [vm('other-1', VmStates.READY, { group: 'g1' })], machines: [{ name: 'other-1' }], previousUnknown: new Map([['other-1', 0]]) }),
    );
    expect(d.terminateMachines).toEqual([]);
  });

  const lostPool = () => [
      vm('ready-1', VmStates.READY),
      vm('in-use-1', VmStates.IN_USE),
      vm('failed-1', VmStates.CHECK_HEALTH_FAILED),
      vm('terminating-1', VmStates.TERMINATING),
      vm('young-1', VmStates.GOT_IP, { addedAt: now - MIN }),
      vm('unknown-age-1', VmStates.GOT_IP),
      vm('old-got-ip-1', VmStates.GOT_IP, { addedAt: now - graceMs }),
      vm('listed-1', VmStates.READY),
      vm('other-group-1', VmStates.READY, { group: 'g1' }),
  ];

  it('only remembers a pool VM missing from one list, even an in_use one', () => {
    const d = decideOrphans(input({ poolVms: lostPool(), machines: [{ name: 'listed-1' }] }));
    expect(d.terminateVms).toEqual([]);
    expect([...d.missing]).toEqual([
      ['ready-1', now],
      ['in-use-1', now],
      ['failed-1', now],
      ['old-got-ip-1', now],
    ]);
    expect(d.counts).toMatchObject({ poolVms: 8, missing: 7, missingSkipped: 3, missingWaiting: 4 });
  });

  it('terminates pool VMs missing from two lists in a row, but not terminating or young got_ip ones', () => {
    const missedBefore = ['ready-1', 'in-use-1', 'failed-1', 'old-got-ip-1', 'terminating-1', 'young-1', 'unknown-age-1'];
    const previousMissing = new Map(missedBefore.map((n) => [n, now - MIN]));
    const d = decideOrphans(input({ poolVms: lostPool(), machines: [{ name: 'listed-1' }], previousMissing }));
    expect(d.terminateVms.map((v) => v.name)).toEqual(['ready-1', 'in-use-1', 'failed-1', 'old-got-ip-1']);
    // Still remembered with the first miss, until listed again or gone from the pool.
    expect(d.missing.get('in-use-1')).toBe(now - MIN);
    expect(d.missing.has('young-1')).toBe(false);
    expect(d.counts).toMatchObject({ poolVms: 8, missing: 7, missingSkipped: 3, missingWaiting: 0 });
  });

  it('a pool VM listed again is forgotten: the next miss starts over', () => {
    const d = decideOrphans(
      input({ poolVms: [vm('back-1', VmStates.IN_USE)], machines: [{ name: 'back-1' }], previousMissing: new Map([['back-1', now - MIN]]) }),
    );
    expect(d.terminateVms).toEqual([]);
    expect(d.missing.size).toBe(0);
  });

  it('does not mutate its inputs', () => {
    const previous = new Map([['leak-1', now - graceMs]]);
    decideOrphans(input({ machines: [{ name: 'leak-2' }], previousUnknown: previous }));
    expect([...previous]).toEqual([['leak-1', now - graceMs]]);
  });
});
