import { Job } from 'bullmq';
import { afterEach, describe, expect, it } from 'vitest';
import { AcquireAborted } from '../../src/client/vmPoolClient.js';
import { AcquireFailures, acquireFailureOf, acquireSetRequestId } from '../../queues/acquire.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from '../acquire/fixtures.js';

// VmPoolClient.acquireSet against the real acquire processor (processAcquireJob in a BullMQ worker)
// and the real Redis: the set waits in the acquire line as one request.
let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

const config = acquireConfig({
  groups: [
    { name: 'base', archs: ['x86_64'], max_vm_per_user: 3 },
    { name: 'arm', archs: ['aarch64'], max_vm_per_user: 3 },
  ],
});
const jobState = async (k: AcquireKit, id: string) => (await Job.fromId(k.queue, id))?.getState();

describe('VmPoolClient.acquireSet with the acquire worker', () => {
  it('waits parked holding nothing and is served whole once its last VM is ready; the same requestId meanwhile joins it', async () => {
    kit = await createAcquireKit('client-set-wait', config);
    const k = kit;
    await k.addReady('b1', '10.30.0.1', 'base');
    const request = { owner: 'alice', sandbox: 's', vms: [{ arch: 'x86_64' }, { arch: 'aarch64' }], requestId: 'wait-1', timeoutMs: 20_000 };
    const first = k.client.acquireSet(request);
    const jobId = acquireSetRequestId('alice', 'wait-1');
    await until(async () => (await jobState(k, jobId)) === 'delayed', 'the set parked');
    expect((await k.ctx.vmm.getVmByName('b1')).state).toBe('ready');
    // A restarted builder asks again with the same request id: it joins the waiting job.
    const second = k.client.acquireSet(request);
    await k.addReady('a1', '10.30.1.1', 'arm');
    const [a, b] = await Promise.all([first, second]);
    expect(a.vms.map((v) => v.vmName)).toEqual(['b1', 'a1']);
    expect(b).toEqual(a);
    for (const v of a.vms) expect(await k.client.holds(v)).toBe(true);
    expect(await k.client.renewAll(a.vms)).toHaveLength(2);
    for (const v of a.vms) expect(await k.client.release(v)).toBe(true);
  }, 30_000);

  it('aborting a parked set withdraws it: its job fails as cancelled, and a single request gets the VM it could have used', async () => {
    kit = await createAcquireKit('client-set-abort', config);
    const k = kit;
    await k.addReady('b1', '10.30.0.1', 'base');
    const controller = new AbortController();
    const pending = k.client.acquireSet({ owner: 'bob', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['arm'] }], requestId: 'abort-1', timeoutMs: 20_000 }, { signal: controller.signal }).catch((e: unknown) => e);
    const jobId = acquireSetRequestId('bob', 'abort-1');
    await until(async () => (await jobState(k, jobId)) === 'delayed', 'the set parked');
    controller.abort();
    expect(await pending).toBeInstanceOf(AcquireAborted);
    const job = (await Job.fromId(k.queue, jobId))!;
    expect(await job.getState()).toBe('failed');
    expect(acquireFailureOf(job)).toBe(AcquireFailures.CANCELLED);
    expect((await k.ctx.vmm.getVmByName('b1')).state).toBe('ready');
    const single = await k.client.acquire({ owner: 'carol', sandbox: 's', groups: ['base'], timeoutMs: 5_000 });
    expect(single.vmName).toBe('b1');
  }, 30_000);

  it('a set no owner could have under the config is refused at once (InvalidVmRequest)', async () => {
    kit = await createAcquireKit('client-set-impossible', config);
    const err = await kit.client.acquireSet({ owner: 'dave', sandbox: 's', vms: [{ groups: ['base'] }, { groups: ['base'] }, { groups: ['base'] }, { groups: ['base'] }], timeoutMs: 20_000 }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('InvalidVmRequest');
  });
});
