/**
 * What a process does with its check of the pool's state marker (checkPoolState-1.lua), as pure
 * functions; src/runtime/poolStateWatch.ts applies them. What each fault costs: docs/redis.md,
 * "When Redis loses data: detection and recovery".
 */
import { randomUUID } from 'node:crypto';
import type { PoolContext } from './context.js';
import type { PoolJobs } from './jobs.js';
import type { PoolStateCheck, PoolStateSeen } from './poolScripts.js';

/** Why a process recovers the pool. */
export type LossReason =
  /** The marker is gone though the process knew one: Redis restarted empty, or was flushed. */
  | 'lost'
  /** The marker's epoch is below one the process saw: Redis came back from an older snapshot. */
  | 'regressed'
  /** Redis restarted or failed over, and its persistence cannot prove that no write was lost. */
  | 'unproven_restart';

export type PoolStateAction =
  /** Nothing happened: keep what the check returned. */
  | { action: 'accept'; seen: PoolStateSeen }
  /** Another process recovered (a new generation on this Redis run): take it as it is. */
  | { action: 'adopt'; seen: PoolStateSeen }
  /** Redis restarted: the state is current only if its persistence proves it (provesNoLoss). */
  | { action: 'prove'; seen: PoolStateSeen }
  /** The state cannot be trusted: recover (seen: the marker as found, null when there is none). */
  | { action: 'recover'; reason: LossReason; seen: PoolStateSeen | null };

/**
 * The action for a check's answer. `known` is what this process saw before (generation '' and
 * epoch 0 when nothing). A Redis that came back with a lower epoch than this process saw went back
 * in time, whatever its persistence says.
 */
export function decidePoolState(check: PoolStateCheck, known: PoolStateSeen): PoolStateAction {
  switch (check.status) {
    case 'ok':
    case 'created':
      return { action: 'accept', seen: seenOf(check) };
    case 'changed':
      return { action: 'adopt', seen: seenOf(check) };
    case 'lost':
      return { action: 'recover', reason: 'lost', seen: null };
    case 'regressed':
      return { action: 'recover', reason: 'regressed', seen: seenOf(check) };
    case 'restarted':
      if (known.generation !== '' && check.epoch < known.epoch) return { action: 'recover', reason: 'regressed', seen: seenOf(check) };
      return { action: 'prove', seen: seenOf(check) };
  }
}

function seenOf(check: PoolStateSeen): PoolStateSeen {
  return { generation: check.generation, epoch: check.epoch };
}

/** Redis's persistence as it runs now (null: the server does not say, such as without CONFIG). */
export interface RedisPersistence {
  appendonly: string | null;
  appendfsync: string | null;
  /** Whether this server was a replica promoted to master (INFO replication: second_repl_offset). */
  promoted: boolean | null;
}

/**
 * Whether a restarted Redis provably kept every acknowledged write: only an append-only file
 * synced before every reply (appendonly yes, appendfsync always) on a server that was not a
 * promoted replica (replication is asynchronous: a replica may miss the last writes). Anything
 * else, or settings the server does not show, proves nothing. The reason says why not.
 */
export function provesNoLoss(p: RedisPersistence): { proven: true } | { proven: false; why: string } {
  if (p.appendonly === null || p.appendfsync === null || p.promoted === null) return { proven: false, why: 'Redis does not show its persistence settings (CONFIG not allowed)' };
  if (p.appendonly !== 'yes') return { proven: false, why: 'AOF is off (appendonly no): the restart lost every write since the last RDB snapshot' };
  if (p.appendfsync !== 'always') return { proven: false, why: `appendfsync is ${p.appendfsync}: the last writes before a crash may be lost` };
  if (p.promoted) return { proven: false, why: 'a replica was promoted to master: it may have missed the last writes' };
  return { proven: true };
}

/** The epoch of a new marker: above every epoch this process or the found marker has seen. */
export function nextEpoch(known: PoolStateSeen, found: PoolStateSeen | null): number {
  return Math.max(known.epoch, found?.epoch ?? 0) + 1;
}

/** The pool's state marker and the recovery from a loss of the pool's state. */
export class StateLoss {
  constructor(
    private readonly ctx: PoolContext,
    private readonly jobs: PoolJobs,
  ) {}

  /** See VmManager.checkPoolState. */
  async check(known: PoolStateSeen): Promise<PoolStateCheck> {
    return this.ctx.scripts.checkPoolState(known, randomUUID(), this.ctx.clock());
  }

  /** Accepts the state as current on this Redis run; null when the marker changed since `seen`. */
  async verify(seen: PoolStateSeen): Promise<PoolStateSeen | null> {
    return this.ctx.scripts.verifyPoolState(seen, [...this.ctx.vmGroups, ...this.ctx.removedGroups.keys()]);
  }

  /** See VmManager.recoverPool. */
  async recover(seen: PoolStateSeen | null, next: PoolStateSeen): Promise<string[] | null> {
    const now = this.ctx.clock();
    const terminated = await this.ctx.scripts.recoverPool(seen, next, now, [...this.ctx.vmGroups, ...this.ctx.removedGroups.keys()]);
    if (terminated === null) return null;
    for (const vmName of terminated) await this.jobs.enqueueTermination(vmName, now, 'state_lost');
    return terminated;
  }

  /** Records that reconcile swept the group's machines after the recovery of `generation`. */
  async markSwept(group: string, generation: string): Promise<void> {
    this.ctx.groupConfig(group);
    await this.ctx.redis.hset(this.ctx.keys.poolState, `swept:${group}`, generation);
  }
}
