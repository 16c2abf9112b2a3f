import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

// dispatchAcquireLine (issue 21): a ready message for a clean VM gives one VM to the request next in
// line and stops; a sweep (no VM named) gives every ready clean VM that the line can take.
const T0 = 1_750_000_000_000;
const input: ConfigInput = { redis: { url: REDIS_URL }, groups: [{ name: 'g', max_vm_per_user: 5, lease_timeout: 60 }] };

describe('dispatchAcquireLine (real Redis, injected clock)', () => {
  const prefix = uniquePrefix('dispatch');
  const keys = poolKeys(prefix);
  const clock = { now: T0 };
  let redis: Redis;
  let vmm: VmManager;

  const addReady = async (name: string, ip: string) => {
    await vmm.addVmToPool(ip, name, 'g');
    await vmm.startVmCheck(name);
    await vmm.recordHealthCheckResult(name, true);
  };
  // A request that parks (nothing fits when it arrives), as the acquire job's first attempt does.
  const park = async (owner: string, n: number) => {
    const jobId = `acquire-${owner}-${n}`;
    const waiter = { member: `${String(T0 + n).padStart(15, '0')}|${jobId}`, jobId, priority: 0, deadline: T0 + 600_000 };
    expect((await vmm.tryAcquireVm({ groups: [0], owner, sandbox: `${owner}/s`, workerId: 'w' }, waiter)).status).toBe('none');
    return jobId;
  };

  beforeAll(async () => {
    redis = connect();
    vmm = new VmManager(input, { redis, prefix, clock: () => clock.now });
  });
  beforeEach(async () => {
    await deleteKeysWithPrefix(redis, prefix);
    clock.now = T0;
    await vmm.markServerStart();
    clock.now += 1;
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
  });

  it("a clean VM's ready message serves one request; the next message, or a sweep, serves the next", async () => {
    const alice = await park('alice', 1);
    const bob = await park('bob', 2);
    const carol = await park('carol', 3);
    // Three VMs become ready (their messages would go to the acquire processes).
    await addReady('c1', '10.7.0.1');
    await addReady('c2', '10.7.0.2');
    await addReady('c3', '10.7.0.3');
    // One message: one request served, in line order; the other VMs stay ready for their own messages.
    expect(await vmm.dispatchAcquireLine('g', 'c1')).toEqual([alice]);
    expect(await redis.zcard(keys.readyClean('g'))).toBe(2);
    expect(await redis.zcard(keys.waiters('g'))).toBe(2);
    // Another VM's message serves the next owner in the round-robin.
    expect(await vmm.dispatchAcquireLine('g', 'c2')).toEqual([bob]);
    // A lost message: the sweep (no VM named) serves what is left.
    expect(await vmm.dispatchAcquireLine('g', '')).toEqual([carol]);
    expect(await redis.zcard(keys.readyClean('g'))).toBe(0);
    expect(await redis.zcard(keys.waiters('g'))).toBe(0);
    const owners = await Promise.all(['c1', 'c2', 'c3'].map((vm) => redis.hmget(keys.vm(vm), 'state', 'owner')));
    expect(owners.map((o) => o[0])).toEqual(['in_use', 'in_use', 'in_use']);
    expect(owners.map((o) => o[1]).sort()).toEqual(['alice', 'bob', 'carol']);
  });

  it('a message for a VM no longer ready serves nobody', async () => {
    await park('alice', 1);
    await addReady('c1', '10.7.0.1');
    await vmm.startVmCheck('c1');
    expect(await vmm.dispatchAcquireLine('g', 'c1')).toEqual([]);
    expect(await redis.zcard(keys.waiters('g'))).toBe(1);
  });
});
