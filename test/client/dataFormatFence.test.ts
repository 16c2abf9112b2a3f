import { afterEach, describe, expect, it } from 'vitest';
import { LineRequests } from '../../src/pool/acquireLine.js';
import { PoolAccess } from '../../src/pool/context.js';
import { DATA_FORMAT_VERSION, DataFormatTooNew } from '../../src/pool/dataFormat.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import type { VmAssignment } from '../../queues/acquire.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from '../acquire/fixtures.js';

// A builder (VmPoolClient, LineRequests) has no heartbeat that stops it when a newer release
// migrates the pool: its writes (release, renew, a task's claim, a withdrawal) are refused by the
// scripts themselves once the pool's data format is past its release's, and change nothing.
let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

const known = DATA_FORMAT_VERSION;
const config = acquireConfig();
const request = { owner: 'alice', sandbox: 's', arch: 'x86_64', taskId: 'fence-1' };

/** The two ways the pool is ahead: migrated past this release, or being migrated past it. */
const ahead = [
  { what: 'a newer version', fields: { version: String(known + 1) } },
  { what: 'a migration to a newer version in progress', fields: { version: String(known), migrating: String(known + 1), migration: 'next' } },
] as const;

async function stamp(k: AcquireKit, fields: Record<string, string>): Promise<void> {
  await k.redis.del(k.keys.dataFormat);
  await k.redis.hset(k.keys.dataFormat, fields);
}

/** The pool at this release's version again. */
const current = (k: AcquireKit) => stamp(k, { version: String(known) });

/** The in_use record of a VM: what a refused write must leave as it was. */
async function leaseOf(k: AcquireKit, vmName: string) {
  const [state, leaseId, expiresAt] = await k.redis.hmget(k.keys.vm(vmName), 'state', 'lease_id', 'lease_expires_at');
  return { state, leaseId, expiresAt, score: await k.redis.zscore(k.keys.leases, vmName) };
}

function expectRefused(err: unknown): void {
  expect(err).toBeInstanceOf(DataFormatTooNew);
  const refused = err as DataFormatTooNew;
  expect(refused.needed).toBe(known + 1);
  expect(refused.known).toBe(known);
  expect(refused.message).toContain('changed nothing');
  expect(refused.message).toContain(`upgrade this program's vmpool package to a release that knows data format ${known + 1}`);
}

async function acquired(k: AcquireKit): Promise<VmAssignment> {
  await k.addReady('f1', '10.8.0.1');
  const assignment = await k.client.acquire(request);
  expect(assignment.vmName).toBe('f1');
  return assignment;
}

describe.each(ahead)('a builder on a pool with $what', ({ fields }) => {
  it('release throws DataFormatTooNew and leaves the VM in use under its lease; on the current version it releases', async () => {
    kit = await createAcquireKit('fence-release', config);
    const a = await acquired(kit);
    const before = await leaseOf(kit, 'f1');
    expect(before).toMatchObject({ state: 'in_use', leaseId: a.leaseId });
    await stamp(kit, fields);
    expectRefused(await kit.client.release(a, { outcome: 'failed' }).catch((e: unknown) => e));
    expect(await leaseOf(kit, 'f1')).toEqual(before);
    expect((await kit.ctx.vmm.reader.auditEvents({ limit: 100 })).events.filter((e) => e.event === 'released')).toEqual([]);

    await current(kit);
    expect(await kit.client.release(a)).toBe(true);
    expect((await leaseOf(kit, 'f1')).state).toBe('ready');
  });

  it('renew throws DataFormatTooNew and leaves the lease as it was; on the current version it renews', async () => {
    kit = await createAcquireKit('fence-renew', config);
    const a = await acquired(kit);
    const before = await leaseOf(kit, 'f1');
    await stamp(kit, fields);
    expectRefused(await kit.client.renew(a).catch((e: unknown) => e));
    expectRefused(await kit.client.renewAll([a]).catch((e: unknown) => e));
    expect(await leaseOf(kit, 'f1')).toEqual(before);

    await current(kit);
    await new Promise((r) => setTimeout(r, 5));
    const renewed = await kit.client.renew(a);
    expect(renewed.leaseExpiresAt).toBeGreaterThan(Number(before.expiresAt));
  });

  it('acquire and acquireSet throw DataFormatTooNew before anything is enqueued; on the current version they are served', async () => {
    kit = await createAcquireKit('fence-acquire', config);
    await kit.addReady('f1', '10.8.0.1');
    await kit.addReady('f2', '10.8.0.2');
    await stamp(kit, fields);
    expectRefused(await kit.client.acquire(request).catch((e: unknown) => e));
    expectRefused(await kit.client.acquireSet({ owner: 'alice', sandbox: 's', vms: [{ arch: 'x86_64' }], requestId: 'fence-set' }).catch((e: unknown) => e));
    const queue = kit.ctx.vmm.queue('vm-acquire');
    expect(await queue.getJobCounts('waiting', 'prioritized', 'active', 'delayed', 'completed', 'failed')).toEqual({ waiting: 0, prioritized: 0, active: 0, delayed: 0, completed: 0, failed: 0 });
    expect((await leaseOf(kit, 'f1')).state).toBe('ready');

    await current(kit);
    expect((await kit.client.acquire(request)).vmName).toMatch(/^f[12]$/);
    expect((await kit.client.acquireSet({ owner: 'alice', sandbox: 's', vms: [{ arch: 'x86_64' }], requestId: 'fence-set' })).vms).toHaveLength(1);
  });

  it("a task's claim throws DataFormatTooNew and records nothing; on the current version it claims", async () => {
    kit = await createAcquireKit('fence-claim', config);
    const line = new LineRequests(new PoolAccess(kit.client.redis, kit.prefix), Date.now);
    await stamp(kit, fields);
    expectRefused(await line.claimTask('fence-claim', 'alice', 's', Date.now() + 60_000).catch((e: unknown) => e));
    expect(await kit.redis.exists(kit.keys.ownerTaskClaim('alice', 'fence-claim'))).toBe(0);

    await current(kit);
    await line.claimTask('fence-claim', 'alice', 's', Date.now() + 60_000);
    expect(await kit.redis.exists(kit.keys.ownerTaskClaim('alice', 'fence-claim'))).toBe(1);
  });

  it('an aborted acquire whose withdrawal is refused rejects with DataFormatTooNew and leaves the request waiting; on the current version it is withdrawn', async () => {
    kit = await createAcquireKit('fence-cancel', config);
    const k = kit;
    const controller = new AbortController();
    // No VM: the request waits in the group's line.
    const pending = k.client.acquire({ ...request, timeoutMs: 30_000 }, { signal: controller.signal }).catch((e: unknown) => e);
    await k.untilWaiting('base', 1);
    const [member] = await k.redis.zrange(k.keys.waiters('base'), '0', '-1');
    // An x86_64 request waits in the line of each group that has the arch.
    const lines = async () => ({
      base: await k.redis.zrange(k.keys.waiters('base'), '0', '-1'),
      big: await k.redis.zrange(k.keys.waiters('big'), '0', '-1'),
      info: await k.redis.hget(k.keys.waiterInfo, member!),
    });
    const before = await lines();
    expect(before.big).toEqual([member]);
    await stamp(k, fields);
    const abortedAt = Date.now();
    controller.abort();
    expectRefused(await pending);
    // At once: no wait for a withdrawal that did not happen.
    expect(Date.now() - abortedAt).toBeLessThan(2_000);
    // Nothing changed: still in the line, no withdrawal recorded, its job still waits (not failed as cancelled).
    expect(await lines()).toEqual(before);
    expect(await k.redis.exists(k.keys.acquireCancel(member!))).toBe(0);
    const jobId = member!.slice(member!.indexOf('|') + 1);
    expect(['active', 'delayed']).toContain(await k.queue.getJobState(jobId));

    // The same withdrawal on the current version: out of the line, recorded.
    await current(k);
    const job = (await k.queue.getJob(jobId))!;
    const line = new LineRequests(new PoolAccess(k.client.redis, k.prefix), Date.now);
    expect(await line.cancel({ member: acquireWaiterMember(job.timestamp, jobId), jobId }, 'test', 60_000)).toBe(2);
    expect(await lines()).toEqual({ base: [], big: [], info: null });
    expect(await k.redis.get(k.keys.acquireCancel(member!))).toBe('test');
  }, 20_000);

  it("withVm: a refused renewal aborts fn's signal with DataFormatTooNew, and the refused release is thrown; the VM stays in use", async () => {
    kit = await createAcquireKit('fence-withvm', config);
    await kit.addReady('f1', '10.8.0.1');
    const k = kit;
    let leaseId: string | undefined;
    const err = await k.client
      .withVm(
        request,
        async (a, signal) => {
          leaseId = a.leaseId;
          await stamp(k, fields);
          await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
          expectRefused(signal.reason);
          return 'done';
        },
        { renewEveryMs: 50 },
      )
      .catch((e: unknown) => e);
    expectRefused(err);
    expect(await leaseOf(k, 'f1')).toMatchObject({ state: 'in_use', leaseId });
  }, 20_000);
});

describe('a builder on a pool this release migrates to its own version', () => {
  it('release and renew work while the migration to this version runs (migrating is not past it)', async () => {
    kit = await createAcquireKit('fence-own-migration', config);
    const a = await acquired(kit);
    await stamp(kit, { version: String(known - 1), migrating: String(known), migration: 'this' });
    await kit.client.renew(a);
    expect(await kit.client.release(a)).toBe(true);
    expect((await leaseOf(kit, 'f1')).state).toBe('ready');
  });
});

