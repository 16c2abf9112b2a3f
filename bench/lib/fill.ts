import type { VmManager } from '../../src/pool/vmManager.js';

/**
 * Adds `count` VMs named `vm-<from>`... to a group and brings each to ready through the real API
 * (add, check started, check passed), `batch` at a time. `ipOf` gives each VM's address.
 */
export async function addReadyVms(vmm: VmManager, opts: { from?: number; count: number; group: string | number; ipOf: (i: number) => string; batch?: number }): Promise<void> {
  const { from = 0, count, group, ipOf, batch = 1000 } = opts;
  for (let start = from; start < from + count; start += batch) {
    const pending: Promise<unknown>[] = [];
    for (let i = start; i < Math.min(from + count, start + batch); i++) {
      const name = `vm-${i}`;
      pending.push(vmm.addVmToPool(ipOf(i), name, group).then(() => vmm.startVmCheck(name)).then(() => vmm.recordHealthCheckResult(name, true)));
    }
    await Promise.all(pending);
  }
}
