import type { PoolKeys } from './keys.js';
import type { loadScripts } from './scripts.js';
import { LeaseLost, VmDescriptorNotFound } from './types.js';

/**
 * Extends a lease through commands/renewLease-1.lua: the new expiry (epoch ms), or
 * VmDescriptorNotFound when the VM is gone, or LeaseLost when the lease is no longer held.
 * VmManager and VmPoolClient both renew through this.
 */
export async function runRenewLease(
  runScript: ReturnType<typeof loadScripts>,
  keys: PoolKeys,
  vmName: string,
  leaseId: string,
  now: number,
): Promise<number> {
  const [status, expiresAt] = (await runScript('renewLease', [keys.base], [vmName, leaseId, now])) as [string, string?];
  if (status === 'missing') throw new VmDescriptorNotFound(vmName);
  if (status !== 'renewed') throw new LeaseLost(vmName, leaseId, status === 'lease_mismatch' ? 'lease_mismatch' : 'not_in_use');
  return Number(expiresAt);
}
