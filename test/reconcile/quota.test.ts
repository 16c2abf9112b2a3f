import { describe, expect, it } from 'vitest';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { decideStartSpawnIfRequired, type GroupSnapshot, type PoolSnapshot, type ReconcileAction } from '../../src/reconcile/decisions.js';
import { groupWaitReason } from '../../src/acquire/why.js';
import { accountLimitsForPool, exceededUnits, foreignUsage, ownerLimitIsResources, ownerVmLimit, parseQuotaReport, vmResources } from '../../src/reconcile/quota.js';

const NOW = 1_750_000_000_000;

function config(input: Partial<ConfigInput>) {
  return parseConfig(input as ConfigInput, {});
}

/** A group that wants `demand` VMs and may spawn freely (no interval), with `active` VMs. */
function group(name: string, demand: number, active = 0, inFlight = 0): GroupSnapshot {
  return {
    group: name,
    spawnsInFlight: Array.from({ length: inFlight }, (_, i) => ({ spawnId: `${name}-s${i}`, startedAt: NOW })),
    demand,
    lastSpawnStart: null,
    counts: { active, all: active, coming: 0 },
  };
}

const spawnsOf = (actions: ReconcileAction[], g: string) => actions.filter((a) => a.type === 'spawn' && a.group === g).length;
const fullOf = (actions: ReconcileAction[], g: string) => actions.find((a) => a.type === 'quotaFull' && a.group === g);

const free = { max_spawn_processes: 10, vm_spawn_min_interval: 0, max_vm_total: 10 };

describe('resource units', () => {
  it('a VM uses 1 instance beside its resources', () => {
    expect(vmResources({ resources: { cores: 4 } })).toEqual({ instances: 1, cores: 4 });
  });

  it('exceededUnits: a unit passes its limit only by what the new VM adds; units it does not use never block', () => {
    expect(exceededUnits({ cores: 60 }, { cores: 4 }, { cores: 64 })).toEqual([]);
    expect(exceededUnits({ cores: 61 }, { cores: 4 }, { cores: 64 })).toEqual(['cores']);
    expect(exceededUnits({ gpus: 9 }, { cores: 4 }, { gpus: 1 })).toEqual([]);
  });
});

describe('max_resources_per_owner', () => {
  const base = { name: 'g', max_vm_per_user: 5, resources: { cores: 4, ram_mb: 8192 } };

  it('holds an owner to as many VMs as its tightest unit allows, never above max_vm_per_user', () => {
    expect(ownerVmLimit({ ...base, max_resources_per_owner: { cores: 10 } })).toBe(2);
    expect(ownerVmLimit({ ...base, max_resources_per_owner: { cores: 100, ram_mb: 16384 } })).toBe(2);
    expect(ownerVmLimit({ ...base, max_resources_per_owner: { instances: 3 } })).toBe(3);
    expect(ownerVmLimit({ ...base, max_resources_per_owner: { cores: 100 } })).toBe(5);
    expect(ownerVmLimit(base)).toBe(5);
    expect(ownerLimitIsResources({ ...base, max_resources_per_owner: { cores: 10 } })).toBe(true);
    expect(ownerLimitIsResources({ ...base, max_resources_per_owner: { cores: 20 } })).toBe(false);
  });

  it('a config whose owner limit names a unit the VMs do not use, or holds no VM, is refused', () => {
    const cfg = (g: object) => () => config({ groups: [{ ...base, ...g }] } as Partial<ConfigInput>);
    expect(cfg({ max_resources_per_owner: { core: 8 } })).toThrow(/max_resources_per_owner\.core.*a unit of the group's resources \(instances, cores, ram_mb\)/);
    expect(cfg({ max_resources_per_owner: { cores: 3 } })).toThrow(/at least what one VM uses \(4 cores\)/);
    expect(cfg({ max_resources_per_owner: { cores: 8 } })().groups[0]!.max_resources_per_owner).toEqual({ cores: 8 });
  });

  it('an owner at a limit set by its resources waits as owner_resources, at max_vm_per_user as owner_limit', () => {
    const standing = { ownerRank: null, ownersAhead: null, blocked: true, owners: 1, waiting: 1, bestPriority: null, ownerVms: 2, readyDirty: 0, readyClean: 1 };
    const supply = { vms: 2, spawning: 0, providerFailing: false };
    expect(groupWaitReason(standing, { priority: 0 }, { maxVmPerUser: 2, maxVmTotal: 10, ownerLimitIsResources: true }, supply)).toBe('owner_resources');
    expect(groupWaitReason(standing, { priority: 0 }, { maxVmPerUser: 2, maxVmTotal: 10 }, supply)).toBe('owner_limit');
    expect(groupWaitReason({ ...standing, ownerVms: 1 }, { priority: 0 }, { maxVmPerUser: 2, maxVmTotal: 10, ownerLimitIsResources: true }, supply)).toBe('no_ready_vm');
  });
});

describe('quota_cmd report', () => {
  it('subtracts only foreign usage: usage less pool_usage, never below 0', () => {
    const r = parseQuotaReport('{"limits": {"cores": 64}, "usage": {"cores": 40, "instances": 3}, "pool_usage": {"cores": 30, "instances": 5}}');
    expect(foreignUsage(r)).toEqual({ cores: 10, instances: 0 });
    expect(accountLimitsForPool({ cores: 100, instances: 4 }, r)).toEqual({ cores: 54, instances: 4 });
  });

  it('takes the tighter of the configured and the cloud limits; no report: the configured ones', () => {
    const r = parseQuotaReport('{"limits": {"cores": 16, "ram_mb": 1000}}');
    expect(accountLimitsForPool({ cores: 32 }, r)).toEqual({ cores: 16, ram_mb: 1000 });
    expect(accountLimitsForPool({ cores: 32 }, null)).toEqual({ cores: 32 });
  });

  it('refuses output that is not a report, saying what is wrong', () => {
    expect(() => parseQuotaReport('not json')).toThrow(/printed no JSON object/);
    expect(() => parseQuotaReport('{"limits": {"cores": -1}}')).toThrow(/limits\.cores/);
    expect(() => parseQuotaReport('{"usage": {}}')).toThrow(/limits/);
    expect(() => parseQuotaReport('{"limits": {}, "extra": 1}')).toThrow(/not a quota report/);
  });
});

describe('config', () => {
  it('refuses a group naming an account that is not configured', () => {
    expect(() => config({ groups: [{ name: 'a', account: 'cloud' }] })).toThrow(/account/);
    expect(config({ accounts: { cloud: { max_resources: { cores: 8 } } }, groups: [{ name: 'a', account: 'cloud' }] }).groups[0]!.account).toBe('cloud');
  });

  it('refuses negative resources', () => {
    expect(() => config({ groups: [{ name: 'a', resources: { cores: -1 } }] })).toThrow();
  });
});

describe('decideStartSpawnIfRequired with resource limits', () => {
  it("stops at the group's max_resources and says quota_full, not a failure", () => {
    const cfg = config({ groups: [{ name: 'a', ...free, resources: { cores: 4 }, max_resources: { cores: 10 } }] });
    const snapshot: PoolSnapshot = { vms: [], groups: [group('a', 5, 1)], serverStart: null };
    const actions = decideStartSpawnIfRequired(snapshot, cfg, NOW);
    // 1 VM (4 cores) + 1 spawn (4) = 8; a third would be 12 > 10.
    expect(spawnsOf(actions, 'a')).toBe(1);
    expect(fullOf(actions, 'a')).toEqual({ type: 'quotaFull', group: 'a', units: ['cores'], limit: 'group' });
  });

  it("shares an account's cores between two groups, in one cycle too", () => {
    const cfg = config({
      accounts: { cloud: { max_resources: { cores: 16 } } },
      groups: [
        { name: 'big', ...free, account: 'cloud', resources: { cores: 8 } },
        { name: 'small', ...free, account: 'cloud', resources: { cores: 2 } },
      ],
    });
    // big has 1 VM (8 cores): big may add one (16), then small cannot add any.
    const actions = decideStartSpawnIfRequired({ vms: [], groups: [group('big', 3, 1), group('small', 3)], serverStart: null }, cfg, NOW);
    expect(spawnsOf(actions, 'big')).toBe(1);
    expect(spawnsOf(actions, 'small')).toBe(0);
    expect(fullOf(actions, 'small')).toMatchObject({ limit: 'account', units: ['cores'] });
  });

  it("uses the snapshot's account limits (the cloud's quota less foreign usage) over the configured ones", () => {
    const cfg = config({ accounts: { cloud: {} }, groups: [{ name: 'a', ...free, account: 'cloud' }] });
    const groups = [group('a', 4, 0, 1)];
    expect(spawnsOf(decideStartSpawnIfRequired({ vms: [], groups, serverStart: null }, cfg, NOW), 'a')).toBe(3);
    const limited = decideStartSpawnIfRequired({ vms: [], groups, serverStart: null, accountLimits: new Map([['cloud', { instances: 2 }]]) }, cfg, NOW);
    expect(spawnsOf(limited, 'a')).toBe(1);
    expect(fullOf(limited, 'a')).toMatchObject({ limit: 'account', units: ['instances'] });
  });

  it("counts the VMs of a group removed from the config (its published config) in its account's usage", () => {
    // decisionConfig() lists the removed groups' published configs after the config's groups.
    const cfg = config({
      accounts: { cloud: { max_resources: { cores: 12 } } },
      groups: [
        { name: 'new', ...free, account: 'cloud', resources: { cores: 4 } },
        { name: 'old', ...free, account: 'cloud', resources: { cores: 4 } },
      ],
    });
    // old drains with 2 VMs (8 cores): new may add 1 VM of 4 cores, not the 3 it wants.
    const actions = decideStartSpawnIfRequired({ vms: [], groups: [group('new', 3), { ...group('old', 5, 2), removed: true }], serverStart: null }, cfg, NOW);
    expect(spawnsOf(actions, 'new')).toBe(1);
    expect(spawnsOf(actions, 'old')).toBe(0);
    expect(fullOf(actions, 'new')).toMatchObject({ limit: 'account', units: ['cores'] });
  });

  it('says nothing when no spawn was wanted anyway', () => {
    const cfg = config({ groups: [{ name: 'a', ...free, max_resources: { instances: 1 } }] });
    expect(decideStartSpawnIfRequired({ vms: [], groups: [group('a', 0, 1)], serverStart: null }, cfg, NOW)).toEqual([]);
  });
});
