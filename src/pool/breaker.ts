import { blockedGroups } from '../acquire/fallback.js';
import { UNCLASSIFIED, type SpawnFailureClass } from '../providers/spawnErrors.js';
import { breakerPolicy, needsOperator } from '../reconcile/breaker.js';
import type { PoolContext } from './context.js';
import type { Quotas } from './quota.js';
import { activeVmCount } from './types.js';

/** Each group's spawn circuit breaker (recordSpawnOutcome-1.lua), and the groups it blocks. */
export class Breaker {
  constructor(
    private readonly ctx: PoolContext,
    private readonly quotas: Quotas,
  ) {}

  /** See VmManager.recordSpawnOutcome. */
  async recordSpawnOutcome(group: string, outcome: 'ok' | 'failed', errorClass: SpawnFailureClass = UNCLASSIFIED, message = ''): Promise<boolean> {
    const g = this.ctx.groupConfig(group);
    if (outcome === 'ok') return this.ctx.scripts.recordSpawnOutcome(group, 'ok', this.ctx.clock());
    const policy = breakerPolicy(g);
    const opened = await this.ctx.scripts.recordSpawnOutcome(group, 'failed', this.ctx.clock(), {
      errorClass,
      threshold: policy.failures,
      backoffSeconds: policy.backoff,
      maxBackoffSeconds: policy.maxBackoff,
      needsOperator: needsOperator(errorClass),
      message: message.slice(0, 300),
    });
    if (opened) this.ctx.logger.warn({ group, errorClass, message: message.slice(0, 300) }, 'spawn circuit breaker opened: no spawns in the group until it closes');
    return opened;
  }

  /** See VmManager.blockedGroups. */
  async blockedGroups(groups: readonly string[]): Promise<Set<string>> {
    const [counts, breakers, full] = await Promise.all([
      this.ctx.reader.stateCounts(groups),
      Promise.all(groups.map((g) => this.ctx.reader.breaker(g))),
      this.quotas.full(groups),
    ]);
    return blockedGroups(
      this.ctx.config.groups,
      groups.map((g, i) => ({ group: g, breaker: breakers[i], active: activeVmCount(counts[i]!), quotaFull: full[i] != null })),
      this.ctx.clock(),
    );
  }

  /** An operator closes the group's circuit breaker (after fixing credentials or the request). */
  async reset(group: string): Promise<void> {
    this.ctx.groupConfig(group);
    await this.ctx.scripts.recordSpawnOutcome(group, 'reset', this.ctx.clock());
    this.ctx.logger.info({ group }, 'spawn circuit breaker reset');
  }
}
