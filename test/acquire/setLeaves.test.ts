import { Job } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { acquireSetRequestId, addAcquireSetJob, type AcquireSetRequestData } from '../../queues/acquire.js';
import { acquireWaiterMember } from '../../src/pool/types.js';
import { acquireConfig, createAcquireKit, type AcquireKit } from './fixtures.js';

// A set waiting in the line keeps back the ready VMs it can use. When it leaves unserved, those VMs
// go to the requests behind it at once: the safety sweep is 60 s here (fixtures), and the requests
// behind wait 20 s, so each VM served below was given by a dispatch the set's leaving caused.
let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

function config() {
  return acquireConfig({ groups: [{ name: 'base', archs: ['x86_64'], max_vm_per_user: 3 }, { name: 'arm', archs: ['aarch64'], max_vm_per_user: 3 }] });
}

async function enqueueSet(k: AcquireKit, data: AcquireSetRequestData): Promise<Job> {
  return addAcquireSetJob(k.queue, data, { jobId: acquireSetRequestId(data.owner, data.requestId), timestamp: Date.now() });
}

describe('a waiting set that leaves the line (acquire-set jobs, real Redis)', () => {
  it('withdrawn: the clean VM it kept back goes to the request behind it at once', async () => {
    kit = await createAcquireKit('set-leaves-cancel', config());
    const set = await enqueueSet(kit, { owner: 'alice', sandbox: 'a/mn', requestId: 'leaves', vms: [{ groups: ['base'] }, { groups: ['base'] }], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 1);
    const startedAt = Date.now();
    const bob = kit.client.acquire({ owner: 'bob', sandbox: 'b', groups: ['base'], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 2);
    await kit.addReady('k1', '10.80.0.1');
    await new Promise((r) => setTimeout(r, 300));
    // The set, first in line, keeps k1 (it needs two).
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(2);
    await kit.ctx.vmm.cancelAcquire({ member: acquireWaiterMember(set.timestamp, String(set.id)), jobId: String(set.id) }, 'builder gone', 60_000);
    expect((await bob).vmName).toBe('k1');
    expect(Date.now() - startedAt).toBeLessThan(15_000);
  }, 30_000);

  it('withdrawn: a VM of its owner and sandbox it kept back goes to the request of that sandbox behind it at once', async () => {
    kit = await createAcquireKit('set-leaves-dirty', config());
    // k1 is bound to alice's sandbox a/mn (a build of hers ran on it).
    await kit.addReady('k1', '10.81.0.1');
    const first = await kit.client.acquire({ owner: 'alice', sandbox: 'a/mn', groups: ['base'] });
    expect(await kit.ctx.vmm.releaseVm(first.vmName, first.leaseId)).toBe(true);
    // A set of hers (one base VM, one arm VM: none is ready) waits first in that sandbox's line,
    // keeping k1; a single request of the same sandbox waits behind it.
    const set = await enqueueSet(kit, { owner: 'alice', sandbox: 'a/mn', requestId: 'mn', vms: [{ groups: ['base'] }, { groups: ['arm'] }], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 1);
    const single = kit.client.acquire({ owner: 'alice', sandbox: 'a/mn', groups: ['base'], timeoutMs: 20_000 });
    await kit.untilWaiting('base', 2);
    await new Promise((r) => setTimeout(r, 300));
    expect(await kit.redis.zcard(kit.keys.waiters('base'))).toBe(2);
    const cancelledAt = Date.now();
    await kit.ctx.vmm.cancelAcquire({ member: acquireWaiterMember(set.timestamp, String(set.id)), jobId: String(set.id) }, 'builder gone', 60_000);
    expect((await single).vmName).toBe('k1');
    expect(Date.now() - cancelledAt).toBeLessThan(10_000);
  }, 40_000);
});
