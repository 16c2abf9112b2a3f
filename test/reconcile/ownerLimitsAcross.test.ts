import { describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { groupWaitReason } from '../../src/acquire/why.js';
import { ownerOverLimit, ownerRoomAcross, ownerUsageSpec, type Resources } from '../../src/reconcile/quota.js';

// An owner's limits across groups: the top-level and the accounts' max_resources_per_owner.
function config(input: Partial<ConfigInput>) {
  return parseConfig(input as ConfigInput, {});
}
const small = { name: 'small', resources: { cores: 2 } };
const large = { name: 'large', resources: { cores: 8, gpus: 1 } };

describe('max_resources_per_owner across groups: the config', () => {
  it('takes limits that hold one VM of every group using the unit, at the top level and per account', () => {
    const c = config({ max_resources_per_owner: { cores: 16, instances: 4 }, accounts: { gpu: { max_resources_per_owner: { gpus: 2 } } }, groups: [small, { ...large, account: 'gpu' }] });
    expect(c.max_resources_per_owner).toEqual({ cores: 16, instances: 4 });
    expect(c.accounts.gpu!.max_resources_per_owner).toEqual({ gpus: 2 });
    expect(config({ groups: [small] }).max_resources_per_owner).toBeUndefined();
  });

  it('refuses a limit below one VM of a group that uses the unit, naming the group and the unit', () => {
    expect(() => config({ max_resources_per_owner: { cores: 4 }, groups: [small, large] })).toThrow(
      /max_resources_per_owner\.cores.*at least what one VM of group "large" uses \(8 cores\), or no owner could ever have a VM of that group/,
    );
    expect(() => config({ accounts: { gpu: { max_resources_per_owner: { cores: 6 } } }, groups: [small, { ...large, account: 'gpu' }] })).toThrow(
      /accounts\.gpu\.max_resources_per_owner\.cores.*group "large" uses \(8 cores\)/,
    );
    expect(() => config({ max_resources_per_owner: { instances: 0 }, groups: [small] })).toThrow(/max_resources_per_owner\.instances.*group "small" uses \(1 instances\)/);
  });

  it('refuses a unit no group uses (a typo limits nothing), listing the units in use', () => {
    expect(() => config({ max_resources_per_owner: { core: 16 }, groups: [small, large] })).toThrow(
      /max_resources_per_owner\.core.*a unit that a group uses \(instances, cores, gpus\): no VM uses core/,
    );
    // An account's limit counts only its own groups' units: gpus is used by a group of another account.
    expect(() => config({ accounts: { cpu: { max_resources_per_owner: { gpus: 1 } }, gpu: {} }, groups: [{ ...small, account: 'cpu' }, { ...large, account: 'gpu' }] })).toThrow(
      /accounts\.cpu\.max_resources_per_owner\.gpus.*a unit that a group of account cpu uses \(instances, cores\)/,
    );
    // An account no group names yet limits nothing and is not checked.
    expect(config({ accounts: { later: { max_resources_per_owner: { gpus: 1 } } }, groups: [small] }).accounts.later!.max_resources_per_owner).toEqual({ gpus: 1 });
  });
});

describe('max_resources_per_owner across groups: the pure side', () => {
  const c = config({ max_resources_per_owner: { cores: 16 }, accounts: { gpu: { max_resources_per_owner: { gpus: 2 } } }, groups: [small, { ...large, account: 'gpu' }] });

  it("a group's spec: what one VM uses and every scope it counts in, limited or not", () => {
    expect(ownerUsageSpec(c, c.groups[0]!)).toEqual({ r: { instances: 1, cores: 2 }, s: [{ n: 'all', m: { cores: 16 } }] });
    expect(ownerUsageSpec(c, c.groups[1]!)).toEqual({ r: { instances: 1, cores: 8, gpus: 1 }, s: [{ n: 'all', m: { cores: 16 } }, { n: 'account:gpu', m: { gpus: 2 } }] });
    const unlimited = config({ accounts: { a: {} }, groups: [{ ...small, account: 'a' }] });
    expect(ownerUsageSpec(unlimited, unlimited.groups[0]!)).toEqual({ r: { instances: 1, cores: 2 }, s: [{ n: 'all' }, { n: 'account:a' }] });
  });

  it('says which scope and units one more VM would pass, and how many more fit', () => {
    const spec = ownerUsageSpec(c, c.groups[1]!);
    expect(ownerOverLimit(spec, new Map([['all', { cores: 8 }]]))).toBeNull();
    expect(ownerOverLimit(spec, new Map([['all', { cores: 10 }]]))).toEqual({ scope: 'all', units: ['cores'] });
    expect(ownerOverLimit(spec, new Map([['account:gpu', { gpus: 2 }]]))).toEqual({ scope: 'account:gpu', units: ['gpus'] });
    expect(ownerRoomAcross(spec, new Map())).toBe(2);
    expect(ownerRoomAcross(spec, new Map<string, Resources>([['all', { cores: 6 }], ['account:gpu', { gpus: 1 }]]))).toBe(1);
    expect(ownerRoomAcross(ownerUsageSpec(config({ groups: [small] }), small as never), new Map())).toBe(Infinity);
  });

  it('an owner over a limit across groups waits as owner_resources unless a VM of its sandbox is ready', () => {
    const standing = { ownerRank: null, ownersAhead: null, blocked: true, owners: 1, waiting: 1, bestPriority: null, ownerVms: 1, readyDirty: 0, readyClean: 1 };
    const supply = { vms: 2, spawning: 0, providerFailing: false };
    expect(groupWaitReason(standing, { priority: 0 }, { maxVmPerUser: 5, maxVmTotal: 10, ownerOverLimitAcross: true }, supply)).toBe('owner_resources');
    expect(groupWaitReason({ ...standing, readyDirty: 1 }, { priority: 0 }, { maxVmPerUser: 5, maxVmTotal: 10, ownerOverLimitAcross: true }, supply)).toBe('no_ready_vm');
  });
});
