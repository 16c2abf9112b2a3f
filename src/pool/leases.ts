import type { Logger } from '../logger.js';
import { waitForReplicas, type ReplicaWait } from '../redis.js';
import type { Clock, PoolAccess } from './context.js';
import { LeaseLost, VmDescriptorNotFound, type ExpiredLease, type LeasedVm } from './types.js';
import type { ReleaseOutcome } from './poolScripts.js';

/** A lease as its holder knows it: a LeasedVm and, for an acquire's, when it was requested. */
export type HeldLease = Pick<LeasedVm, 'vmName' | 'leaseId' | 'leaseExpiresAt'> & { requestedAt?: number };

/**
 * Leases of in_use VMs: release, renewal, expiry, and the wait for replicas after a release. The
 * one lease module of the pool: VmManager (the pool's side) and VmPoolClient (the builder's side)
 * both use it. Needs no config: the lease timeout is in the VM's record.
 */
export class Leases {
  constructor(
    private readonly pool: PoolAccess,
    private readonly clock: Clock,
    /** redis.wait_replicas and wait_timeout: a release is answered once that many replicas have it. */
    private readonly waitReplicas?: ReplicaWait,
  ) {}

  /**
   * Releases an in_use VM (`released` false for any other state). With a lease id, only that
   * lease's holder may release: a VM in_use under another lease throws LeaseLost and is left alone.
   * A failed build's VM (`outcome: 'failed'`) that an autohold rule matches is held for the rule
   * (`autohold`: its id). DataFormatTooNew, changing nothing, when the pool's data format is past
   * this release's (as renew).
   */
  async release(vmName: string, leaseId?: string, outcome?: ReleaseOutcome): Promise<{ released: boolean; autohold: number | null }> {
    const result = await this.pool.scripts.releaseWithOutcome(vmName, this.clock(), leaseId ?? '', outcome ?? '');
    if (result.released) await this.replicated();
    return result;
  }

  /**
   * With redis.wait_replicas, waits until that many replicas have this connection's writes
   * (WriteNotReplicated after redis.wait_timeout); without it, returns at once.
   */
  async replicated(): Promise<void> {
    if (this.waitReplicas) await waitForReplicas(this.pool.redis, this.pool.prefix, this.waitReplicas);
  }

  /**
   * Extends the lease of an in_use VM by its lease timeout and returns the new expiry (epoch ms).
   * Throws LeaseLost when the VM is not in_use or holds another lease, VmDescriptorNotFound when gone.
   */
  async renew(vmName: string, leaseId: string): Promise<number> {
    return this.pool.scripts.renewLease(vmName, leaseId, this.clock());
  }

  /** Whether the lease is still held (the VM is in_use under that lease). */
  async holds(lease: Pick<HeldLease, 'vmName' | 'leaseId'>): Promise<boolean> {
    return this.pool.reader.holdsLease(lease.vmName, lease.leaseId);
  }

  /**
   * Renews a held lease and returns it with its new expiry. A lease that went with a loss of the
   * pool's state throws LeaseLost (state_lost); see renew for the other errors.
   */
  async renewHeld<T extends HeldLease>(lease: T): Promise<T> {
    try {
      return { ...lease, leaseExpiresAt: await this.renew(lease.vmName, lease.leaseId) };
    } catch (err) {
      if (err instanceof LeaseLost || err instanceof VmDescriptorNotFound) throw (await this.lostWithState(lease)) ?? err;
      throw err;
    }
  }

  /**
   * Gives a held lease's VM back. Returns false, changing nothing, when the lease is no longer held
   * (the VM was reclaimed, released already, or is in use under another lease), and logs why.
   */
  async releaseHeld(lease: HeldLease & { outcome?: ReleaseOutcome | undefined }, logger: Logger): Promise<boolean> {
    let refusal: string;
    try {
      if ((await this.release(lease.vmName, lease.leaseId, lease.outcome)).released) return true;
      refusal = 'not_in_use';
    } catch (err) {
      if (!(err instanceof LeaseLost || err instanceof VmDescriptorNotFound)) throw err;
      refusal = err instanceof LeaseLost ? err.reason : 'not_found';
    }
    const lost = await this.lostWithState(lease);
    if (lost) {
      logger.warn({ vmName: lease.vmName, leaseId: lease.leaseId, refusal: lost.reason }, `release refused: ${lost.message}`);
      return false;
    }
    logger.warn({ vmName: lease.vmName, leaseId: lease.leaseId, refusal }, 'release refused: the lease is no longer held');
    return false;
  }

  /**
   * LeaseLost (state_lost) when the pool recovered from a loss of its state in Redis while the
   * lease was held (after the request, before its expiry): the lease went with it, and the error
   * says so. Null otherwise.
   */
  async lostWithState(lease: HeldLease): Promise<LeaseLost | null> {
    const marker = await this.pool.reader.poolState().catch(() => null);
    const at = marker?.recoveredAt;
    if (at == null || at < (lease.requestedAt ?? 0) || at > lease.leaseExpiresAt) return null;
    return new LeaseLost(lease.vmName, lease.leaseId, 'state_lost', at);
  }

  /**
   * Ends the leases that lapsed, at most `batch`, by each group's on_lease_expiry (by group name).
   * The caller enqueues the terminate or health job of each.
   */
  async expire(now: number, batch: number, onLeaseExpiry: ReadonlyMap<string, 'terminate' | 'release'>): Promise<ExpiredLease[]> {
    return this.pool.scripts.expireLeases(now, batch, onLeaseExpiry);
  }
}
