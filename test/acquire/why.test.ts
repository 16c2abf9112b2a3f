import { describe, expect, it } from 'vitest';
import { describeWait, type GroupWait, type WaitStatus } from '../../src/acquire/why.js';

// describeWait's one line for people (the failure reason of a request that timed out).
const groupWait = (group: string, groupIndex: number, reason: GroupWait['reason'], position: number | null, waiting: number): GroupWait => ({
  group,
  groupName: group,
  groupIndex,
  reason,
  position,
  ownerPosition: position === null ? null : 1,
  waiting,
  ownerVms: 0,
  maxVmPerUser: 2,
});
const status = (extra: Partial<WaitStatus> = {}): WaitStatus => ({
  reason: 'no_ready_vm',
  groups: [groupWait('base', 0, 'no_ready_vm', 1, 1), groupWait('arm', 1, 'provider_failing', 2, 3)],
  updatedAt: 0,
  ...extra,
});

describe('describeWait', () => {
  it('a single request: each group, unchanged', () => {
    expect(describeWait(status())).toBe('no_ready_vm in base(0), about 1 in line of 1; provider_failing in arm(1), about 2 in line of 3');
  });

  it('a set: which of its VMs cannot be had now, VMs of the same groups together', () => {
    const line = 'no_ready_vm in base(0), about 1 in line of 1; provider_failing in arm(1), about 2 in line of 3';
    expect(describeWait(status({ set: 3, unavailableVms: [{ index: 3, groups: ['arm'] }] }))).toBe(`${line}; VM 3 of 3 (arm) cannot be had now`);
    expect(
      describeWait(
        status({
          set: 4,
          unavailableVms: [
            { index: 1, groups: ['base'] },
            { index: 2, groups: ['base'] },
            { index: 4, groups: ['arm', 'base'] },
          ],
        }),
      ),
    ).toBe(`${line}; VMs 1, 2 of 4 (base) cannot be had now; VM 4 of 4 (arm, base) cannot be had now`);
  });

  it('a set whose VMs could all be had: it waits for its turn; a set written without the field: as before', () => {
    expect(describeWait(status({ set: 3, unavailableVms: [] }))).toMatch(/; all 3 VMs could be had now: the set waits for its turn in the line$/);
    expect(describeWait(status({ set: 3 }))).toBe(describeWait(status()));
  });
});
