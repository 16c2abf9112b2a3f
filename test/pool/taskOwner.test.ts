import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PoolAccess } from '../../src/pool/context.js';
import { TaskConflict } from '../../src/pool/types.js';
import { createPoolKit, T0, type PoolKit } from './fixtures/kit.js';

// Issue 20: task ids are per owner. The same task id of two owners names two tasks; within an
// owner, a task belongs to one sandbox. Keys from before the change (task:<id>, task_claim:<id>)
// are honoured for their own owner only, so that a request in flight during an upgrade reattaches.
let kit: PoolKit;
let pool: PoolAccess;
beforeAll(async () => {
  kit = await createPoolKit('pool-task-owner');
  pool = new PoolAccess(kit.redis, kit.prefix);
});
afterAll(async () => kit.close());

beforeEach(async () => {
  await kit.reset();
  await kit.vmm.markServerStart();
  kit.clock.now = T0 + 1000;
});

const req = (owner: string, sandbox: string, taskId: string) => ({ groups: [0], owner, sandbox, workerId: `w-${owner}`, taskId });

describe('task ids per owner', () => {
  it('two owners with the same task id hold two VMs; each reattaches to its own; another sandbox of the owner conflicts', async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.addReady('b1', '10.0.0.2');
    await kit.addReady('c1', '10.0.0.3');
    const a = await kit.vmm.acquireVm(req('alice', 'alice/p', 't-1'));
    const b = await kit.vmm.acquireVm(req('bob', 'bob/p', 't-1'));
    expect(a.vmName).not.toBe(b.vmName);
    expect((await kit.vmm.acquireVm(req('alice', 'alice/p', 't-1'))).vmName).toBe(a.vmName);
    expect((await kit.vmm.acquireVm(req('bob', 'bob/p', 't-1'))).vmName).toBe(b.vmName);
    await expect(kit.vmm.acquireVm(req('alice', 'alice/other', 't-1'))).rejects.toThrow(TaskConflict);
    expect((await kit.vmm.getVmByTaskId('t-1', 'alice'))?.vmName).toBe(a.vmName);
    expect((await kit.vmm.getVmByTaskId('t-1', 'bob'))?.vmName).toBe(b.vmName);
    expect(await kit.vmm.getVmByTaskId('t-1', 'carol')).toBeNull();
    // Without an owner: the first in-use VM with that task id, by name.
    expect((await kit.vmm.getVmByTaskId('t-1'))?.vmName).toBe([a.vmName, b.vmName].sort()[0]);
    // Released: the owner's task index goes, the other owner's stays.
    await kit.vmm.releaseVm(a.vmName);
    expect(await kit.redis.exists(kit.keys.ownerTask('alice', 't-1'))).toBe(0);
    expect(await kit.redis.get(kit.keys.ownerTask('bob', 't-1'))).toBe(b.vmName);
  });

  it("a claim binds the task only within its owner: another owner's claim is no conflict", async () => {
    const deadline = kit.clock.now + 60_000;
    await pool.scripts.claimTask('t-2', 'alice', 'alice/p', deadline, kit.clock.now);
    await pool.scripts.claimTask('t-2', 'bob', 'bob/p', deadline, kit.clock.now);
    await expect(pool.scripts.claimTask('t-2', 'alice', 'alice/other', deadline, kit.clock.now)).rejects.toThrow(TaskConflict);
    await pool.scripts.claimTask('t-2', 'alice', 'alice/p', deadline, kit.clock.now);
    expect(await kit.redis.exists(kit.keys.legacyTaskClaim('t-2'))).toBe(0);
  });

  it('keys written before the upgrade: the same owner reattaches and conflicts as before, another owner is not blocked', async () => {
    await kit.addReady('a1', '10.0.0.1');
    await kit.addReady('b1', '10.0.0.2');
    const a = await kit.vmm.acquireVm(req('alice', 'alice/p', 't-old'));
    // The layout of the previous version: one task key for every owner.
    await kit.redis.rename(kit.keys.ownerTask('alice', 't-old'), kit.keys.legacyTask('t-old'));
    expect((await kit.vmm.getVmByTaskId('t-old', 'alice'))?.vmName).toBe(a.vmName);
    const b = await kit.vmm.acquireVm(req('bob', 'bob/p', 't-old'));
    expect(b.vmName).not.toBe(a.vmName);
    expect((await kit.vmm.acquireVm(req('alice', 'alice/p', 't-old'))).vmName).toBe(a.vmName);
    await expect(kit.vmm.acquireVm(req('alice', 'alice/other', 't-old'))).rejects.toThrow(TaskConflict);
    // Its release drops the old key too.
    await kit.vmm.releaseVm(a.vmName);
    expect(await kit.redis.exists(kit.keys.legacyTask('t-old'))).toBe(0);

    // An old claim binds only its own owner.
    await kit.redis.set(kit.keys.legacyTaskClaim('t-claimed'), JSON.stringify({ owner: 'alice', sandbox: 'alice/p', deadline: kit.clock.now + 60_000 }));
    await pool.scripts.claimTask('t-claimed', 'bob', 'bob/q', kit.clock.now + 60_000, kit.clock.now);
    await expect(pool.scripts.claimTask('t-claimed', 'alice', 'alice/other', kit.clock.now + 60_000, kit.clock.now)).rejects.toThrow(TaskConflict);
    await pool.scripts.claimTask('t-claimed', 'alice', 'alice/p', kit.clock.now + 60_000, kit.clock.now);
  });
});
