import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SpawnSlotLost, VmError } from '../../src/pool/types.js';
import { poolKeys } from '../helpers/redis.js';
import { createPoolKit, type PoolKit } from './fixtures/kit.js';

// The spawn's record (startSpawnAttempt, recordSpawnMachine, addVm with a spawn id): what lets a
// re-run of a spawn job find what an earlier run did, and keeps a spawn from counting twice.
let kit: PoolKit;
beforeAll(async () => {
  kit = await createPoolKit('pool-spawn-record');
});
afterAll(async () => {
  await kit.close();
});
beforeEach(async () => {
  await kit.reset();
});

const inFlight = async (group = 'base') => (await kit.vmm.getSpawnsInFlight(group)).map((s) => s.spawnId);

describe('a spawn across its runs', () => {
  it('a first run starts attempt 1, a re-run that found nothing attempt 2; the record expires', async () => {
    await kit.vmm.registerSpawn('base', 's1');
    expect(await kit.vmm.startSpawnAttempt('base', 's1')).toEqual({ status: 'new', attempt: 1 });
    expect(await kit.vmm.startSpawnAttempt('base', 's1')).toEqual({ status: 'new', attempt: 2 });
    const ttl = await kit.redis.pttl(poolKeys(kit.prefix).spawnRecord('s1'));
    expect(ttl).toBeGreaterThan(23 * 3600 * 1000);
  });

  it('a spawn that holds no slot (finished, or dropped as stale) and left nothing may not spawn', async () => {
    expect(await kit.vmm.startSpawnAttempt('base', 'gone')).toEqual({ status: 'no_slot' });
    expect(await kit.redis.exists(poolKeys(kit.prefix).spawnRecord('gone'))).toBe(0);
  });

  it('a machine the hook printed is reported to the next run, with whether the hook succeeded and the slot is held', async () => {
    await kit.vmm.registerSpawn('base', 's2');
    await kit.vmm.startSpawnAttempt('base', 's2');
    await kit.vmm.recordSpawnMachine('s2', { name: 'm-1', ip: null }, false);
    expect(await kit.vmm.startSpawnAttempt('base', 's2')).toEqual({ status: 'machine', vmName: 'm-1', vmIp: null, hookDone: false, slotHeld: true });
    await kit.vmm.recordSpawnMachine('s2', { name: 'm-1', ip: '10.0.0.7' }, true);
    expect(await kit.vmm.startSpawnAttempt('base', 's2')).toEqual({ status: 'machine', vmName: 'm-1', vmIp: '10.0.0.7', hookDone: true, slotHeld: true });
    await kit.vmm.finishSpawn('base', 's2');
    expect(await kit.vmm.startSpawnAttempt('base', 's2')).toMatchObject({ status: 'machine', slotHeld: false });
    // Once terminated, forgotten: only that machine.
    await kit.vmm.forgetSpawnMachine('s2', 'other');
    expect(await kit.vmm.reader.spawnMachine('s2')).toMatchObject({ vmName: 'm-1' });
    await kit.vmm.forgetSpawnMachine('s2', 'm-1');
    expect(await kit.vmm.reader.spawnMachine('s2')).toBeNull();
    expect(await kit.vmm.startSpawnAttempt('base', 's2')).toEqual({ status: 'no_slot' });
  });

  it('addVm with the spawn id takes its slot in the same step, and the next run finds the VM', async () => {
    await kit.vmm.registerSpawn('base', 's3');
    await kit.vmm.startSpawnAttempt('base', 's3');
    await kit.vmm.recordSpawnMachine('s3', { name: 'm-3', ip: '10.0.0.3' }, true);
    await kit.vmm.addVmToPool('10.0.0.3', 'm-3', 'base', { spawnId: 's3' });
    expect(await inFlight()).toEqual([]);
    expect(await kit.vmm.startSpawnAttempt('base', 's3')).toEqual({ status: 'added', vmName: 'm-3', vmIp: '10.0.0.3' });
    // A late line of the hook does not undo it.
    await kit.vmm.recordSpawnMachine('s3', { name: 'm-4', ip: null }, false);
    expect(await kit.vmm.reader.spawnMachine('s3')).toEqual({ vmName: 'm-3', vmIp: '10.0.0.3', hookDone: true, added: true });
  });

  it('addVm refuses a spawn that lost its slot, and a duplicate name, changing nothing', async () => {
    await expect(kit.vmm.addVmToPool('10.0.0.5', 'm-5', 'base', { spawnId: 'dropped' })).rejects.toBeInstanceOf(SpawnSlotLost);
    expect(await kit.vmm.getAllVms()).toEqual([]);
    await kit.vmm.addVmToPool('10.0.0.6', 'm-6', 'base');
    await kit.vmm.registerSpawn('base', 's6');
    await expect(kit.vmm.addVmToPool('10.0.0.7', 'm-6', 'base', { spawnId: 's6' })).rejects.toBeInstanceOf(VmError);
    expect(await inFlight()).toEqual(['s6']);
    expect((await kit.vmm.getVmByName('m-6')).vmIp).toBe('10.0.0.6');
  });
});
