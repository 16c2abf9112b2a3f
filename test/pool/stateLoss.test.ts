import { describe, expect, it } from 'vitest';
import { decidePoolState, nextEpoch, provesNoLoss } from '../../src/pool/stateLoss.js';
import { decideLossSweep } from '../../src/reconcile/orphanDecisions.js';

const known = { generation: 'g1', epoch: 40 };
const fresh = { generation: '', epoch: 0 };

describe('decidePoolState', () => {
  it('accepts the same generation on the same run, and a marker it created', () => {
    expect(decidePoolState({ status: 'ok', generation: 'g1', epoch: 41 }, known)).toEqual({ action: 'accept', seen: { generation: 'g1', epoch: 41 } });
    expect(decidePoolState({ status: 'created', generation: 'g9', epoch: 1 }, fresh)).toEqual({ action: 'accept', seen: { generation: 'g9', epoch: 1 } });
  });

  it('adopts the generation of another process that recovered on this run', () => {
    expect(decidePoolState({ status: 'changed', generation: 'g2', epoch: 3 }, known)).toEqual({ action: 'adopt', seen: { generation: 'g2', epoch: 3 } });
  });

  it('recovers when the marker is gone, or its epoch went back', () => {
    expect(decidePoolState({ status: 'lost' }, known)).toEqual({ action: 'recover', reason: 'lost', seen: null });
    expect(decidePoolState({ status: 'regressed', generation: 'g1', epoch: 30 }, known)).toMatchObject({ action: 'recover', reason: 'regressed' });
  });

  it('after a restart: recovers when the epoch is below what it saw, else asks for the persistence proof', () => {
    expect(decidePoolState({ status: 'restarted', generation: 'g1', epoch: 39 }, known)).toMatchObject({ action: 'recover', reason: 'regressed', seen: { epoch: 39 } });
    expect(decidePoolState({ status: 'restarted', generation: 'g1', epoch: 40 }, known)).toEqual({ action: 'prove', seen: { generation: 'g1', epoch: 40 } });
    // A process that just started knows nothing to compare with.
    expect(decidePoolState({ status: 'restarted', generation: 'g1', epoch: 2 }, fresh)).toMatchObject({ action: 'prove' });
  });
});

describe('provesNoLoss', () => {
  it('only an AOF synced on every write, on a server that was no promoted replica, proves a restart lost nothing', () => {
    expect(provesNoLoss({ appendonly: 'yes', appendfsync: 'always', promoted: false })).toEqual({ proven: true });
    expect(provesNoLoss({ appendonly: 'yes', appendfsync: 'everysec', promoted: false })).toMatchObject({ proven: false, why: expect.stringMatching(/everysec/) });
    expect(provesNoLoss({ appendonly: 'no', appendfsync: 'always', promoted: false })).toMatchObject({ proven: false, why: expect.stringMatching(/AOF is off/) });
    expect(provesNoLoss({ appendonly: 'yes', appendfsync: 'always', promoted: true })).toMatchObject({ proven: false, why: expect.stringMatching(/replica/) });
    expect(provesNoLoss({ appendonly: null, appendfsync: null, promoted: false })).toMatchObject({ proven: false, why: expect.stringMatching(/CONFIG/) });
  });
});

describe('nextEpoch', () => {
  it('is above every epoch seen, by this process or in the marker found', () => {
    expect(nextEpoch(known, null)).toBe(41);
    expect(nextEpoch(known, { generation: 'g1', epoch: 70 })).toBe(71);
    expect(nextEpoch(fresh, null)).toBe(1);
  });
});

describe('decideLossSweep', () => {
  const recoveredAt = 1_800_000_000_000;

  it('terminates every machine the pool does not know at once, and spares those created after the recovery', () => {
    const d = decideLossSweep({
      poolVmNames: new Set(['known']),
      machines: [{ name: 'known' }, { name: 'lost-1' }, { name: 'lost-2', createdAt: recoveredAt - 1 }, { name: 'new', createdAt: recoveredAt + 5 }, { name: 'lost-1' }],
      recoveredAt,
    });
    expect(d.terminate.map((m) => m.name)).toEqual(['lost-1', 'lost-2']);
    expect(d.spared).toBe(1);
  });
});
