import { afterEach, describe, expect, it } from 'vitest';
import { LeaseLost } from '../../src/pool/types.js';
import { acquireConfig, createAcquireKit, until, type AcquireKit } from '../acquire/fixtures.js';

let kit: AcquireKit | undefined;
afterEach(async () => {
  await kit?.close();
  kit = undefined;
});

// A short lease, so that withVm renews several times while fn runs.
const config = acquireConfig({ groups: [{ name: 'short', archs: ['x86_64'], lease_timeout: 0.6 }] });
const request = { owner: 'alice', sandbox: 's', arch: 'x86_64', taskId: 'wv-1' };

describe('VmPoolClient.withVm', () => {
  it('renews the lease while fn runs and releases afterwards', async () => {
    kit = await createAcquireKit('withvm-renew', config);
    await kit.addReady('w1', '10.7.0.1', 0);
    const k = kit;
    const result = await k.client.withVm(request, async (a) => {
      const first = a.leaseExpiresAt;
      // Two renewals observed in Redis: the lease moved forward twice while we held the VM.
      let seen = first;
      let renewals = 0;
      await until(async () => {
        const now = Number(await k.redis.hget(k.keys.vm('w1'), 'lease_expires_at'));
        if (now > seen) {
          seen = now;
          renewals += 1;
        }
        return renewals >= 2;
      }, 'two lease renewals');
      expect((await k.ctx.vmm.getVmByName('w1')).state).toBe('in_use');
      return a.vmName;
    });
    expect(result).toBe('w1');
    expect(await k.ctx.vmm.getVmByName('w1')).toMatchObject({ state: 'ready', taskId: null });
    expect(await k.redis.zscore(k.keys.leases, 'w1')).toBeNull();
  }, 20_000);

  it('releases the VM when fn throws, and rethrows', async () => {
    kit = await createAcquireKit('withvm-throw', config);
    await kit.addReady('w1', '10.7.0.1', 0);
    const err = await kit.client
      .withVm(request, () => {
        throw new Error('build failed');
      })
      .catch((e: unknown) => e);
    expect((err as Error).message).toBe('build failed');
    expect((await kit.ctx.vmm.getVmByName('w1')).state).toBe('ready');
    // Released as a failed build (an autohold rule could keep it); a build that returns has no outcome.
    await kit.client.withVm({ ...request, taskId: 'wv-2' }, () => 'ok');
    const released = (await kit.ctx.vmm.reader.auditEvents({ limit: 100 })).events.filter((e) => e.event === 'released');
    expect(released.map((e) => e.details.outcome ?? null)).toEqual(['failed', null]);
  });

  it('aborts fn signal when the lease is lost', async () => {
    kit = await createAcquireKit('withvm-lost', config);
    await kit.addReady('w1', '10.7.0.1', 0);
    const k = kit;
    const reason = await k.client.withVm(request, async (a, signal) => {
      // The lease is taken away (an operator, or reclaim after a stall).
      await k.ctx.vmm.releaseVm(a.vmName);
      await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
      return signal.reason as unknown;
    });
    expect(reason).toBeInstanceOf(LeaseLost);
  }, 20_000);
});
