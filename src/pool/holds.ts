import type { PoolContext } from './context.js';
import { InvalidVmRequest } from './types.js';

export interface HoldOptions {
  /** When the hold ends by itself (epoch ms); null or absent: when unheld (or max_hold_age). */
  until?: number | null;
  /** How long the hold lasts (ms), counted from the hold's own start (instead of until). */
  forMs?: number | null;
  /** Why the VM is held, shown beside the holder. */
  reason?: string | null;
}

/** Holds: an operator keeps a VM out of acquisition while debugging it. */
export class Holds {
  constructor(private readonly ctx: PoolContext) {}

  /** See VmManager.holdVm. */
  async hold(vmName: string, by: string, options: HoldOptions = {}): Promise<boolean> {
    if (typeof by !== 'string' || by === '') throw new InvalidVmRequest('holdVm needs who holds the VM');
    const now = this.ctx.clock();
    const { reason = null, forMs = null } = options;
    if (forMs !== null && options.until != null) throw new InvalidVmRequest('a hold takes until or forMs, not both');
    if (forMs !== null && (!Number.isFinite(forMs) || forMs <= 0)) throw new InvalidVmRequest(`a hold must last a positive time (forMs ${JSON.stringify(forMs)})`);
    const until = forMs !== null ? now + forMs : (options.until ?? null);
    if (until !== null && (!Number.isFinite(until) || until <= now)) throw new InvalidVmRequest(`a hold must end in the future (until ${JSON.stringify(until)})`);
    if (reason !== null && (typeof reason !== 'string' || reason.length > 1024)) throw new InvalidVmRequest('a hold reason is text of at most 1024 characters');
    const maxAge = this.ctx.config.max_hold_age * 1000;
    const end = maxAge > 0 ? Math.min(until ?? Infinity, now + maxAge) : until;
    const held = await this.ctx.scripts.holdVm(vmName, by, now, end, reason ?? '');
    if (held) this.ctx.logger.info({ vmName, by, until: end, reason }, 'VM held');
    return held;
  }

  /** Ends a hold; a ready VM can be acquired again. Returns false when it was not held. */
  async unhold(vmName: string): Promise<boolean> {
    const unheld = await this.ctx.scripts.unholdVm(vmName);
    if (unheld) this.ctx.logger.info({ vmName }, 'VM unheld');
    return unheld;
  }

  /** Ends the holds whose end has come (at most `batch` per call); returns the VMs unheld. */
  async expire(batch: number): Promise<string[]> {
    const ended = await this.ctx.scripts.expireHolds(this.ctx.clock(), batch);
    for (const vmName of ended) this.ctx.logger.info({ vmName }, 'VM hold ended (its time was up)');
    return ended;
  }
}
