import { randomUUID } from 'node:crypto';
import type { RedisConnection } from '../redis.js';
import type { Config } from '../config/index.js';
import type { Logger } from '../logger.js';
import { newerThan, type DataFormat } from '../pool/dataFormat.js';
import type { PoolStateSeen } from '../pool/poolScripts.js';
import { decidePoolState, nextEpoch, provesNoLoss, type LossReason } from '../pool/stateLoss.js';
import type { VmManager } from '../pool/vmManager.js';
import { readPersistence } from '../redisSafety.js';

/** What a check found and did, when it was more than "nothing happened". */
export type PoolStateEvent =
  /** Redis restarted, and its persistence proves the state current: nothing was replaced. */
  | { kind: 'verified'; generation: string }
  /** This process recovered the pool from a loss: the VMs it terminated. */
  | { kind: 'recovered'; reason: LossReason; why: string; generation: string; terminated: string[] }
  /** Another process recovered (or verified) first: this one took its generation. */
  | { kind: 'adopted'; generation: string };

export interface PoolStateWatchOptions {
  vmm: VmManager;
  /** The connection whose reconnects ('ready') trigger a check, and that reads Redis's settings. */
  redis: RedisConnection;
  logger: Logger;
  /** Period of the heartbeat check (ms). */
  intervalMs: number;
  /** The process's own duties after a loss or a restart (re-creating the reconcile schedule). */
  onEvent?: (event: PoolStateEvent) => Promise<void>;
  /**
   * The pool's data format, read at each check: once it (or a migration in progress) is past this
   * process's version, onNewer is called, once, and the watch writes nothing more (it no longer
   * understands the data).
   */
  dataFormat?: { format: DataFormat; onNewer(needed: number): void };
}

/** The heartbeat period: vm_cycle_timeout, within 0.5 s to 5 s. */
export function poolStateCheckMs(config: Pick<Config, 'vm_cycle_timeout'>): number {
  return Math.min(5_000, Math.max(500, Math.round(config.vm_cycle_timeout * 1000)));
}

/**
 * Every vmpool process's watch over the pool's state in Redis (self-healing after Redis loses
 * data). It remembers the marker's generation and the highest epoch it saw, and checks them on
 * each heartbeat, on each reconnect and when asked (each reconcile cycle):
 * - the marker is gone though this process knew one (Redis restarted empty, was flushed), or its
 *   epoch went back (an older snapshot): the pool is recovered (VmManager.recoverPool);
 * - Redis restarted or failed over (the marker was verified on another run): acquires hand out
 *   nothing (includes/poolState.lua) until this process or another verified the state, which only
 *   an AOF synced on every write, on a server that was no promoted replica, proves (provesNoLoss);
 *   otherwise it is recovered;
 * - another process recovered: its generation is taken.
 * Checks are serialized, and a check asked for while one runs shares it.
 */
export class PoolStateWatch {
  private known: PoolStateSeen = { generation: '', epoch: 0 };
  private running: Promise<PoolStateEvent | null> | null = null;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly onReady = () => void this.check('reconnect');

  constructor(private readonly options: PoolStateWatchOptions) {}

  /** What this process saw last. */
  get seen(): PoolStateSeen {
    return { ...this.known };
  }

  /** Starts the heartbeat and the reconnect trigger. */
  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => void this.check('heartbeat'), this.options.intervalMs);
    this.timer.unref();
    this.options.redis.on('ready', this.onReady);
  }

  /** Stops the heartbeat and waits for a check in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.options.redis.off('ready', this.onReady);
    await this.running?.catch(() => undefined);
  }

  /** One check (shared with one in progress). Never rejects: a Redis away is logged and retried at the next one. */
  check(trigger: string): Promise<PoolStateEvent | null> {
    if (this.stopped) return Promise.resolve(null);
    this.running ??= this.run(trigger)
      .catch((err: Error) => {
        this.options.logger.debug({ err: err.message, trigger }, 'pool state check failed; retried at the next one');
        return null;
      })
      .finally(() => {
        this.running = null;
      });
    return this.running;
  }

  private async run(trigger: string): Promise<PoolStateEvent | null> {
    const { vmm, logger, dataFormat } = this.options;
    if (dataFormat) {
      const needed = newerThan(await dataFormat.format.read(), dataFormat.format.known);
      if (needed !== null) {
        this.stopped = true;
        clearInterval(this.timer);
        dataFormat.onNewer(needed);
        return null;
      }
    }
    // A few rounds: a verify or recover that lost its race to another process checks again.
    for (let round = 0; round < 5; round++) {
      const check = await vmm.checkPoolState(this.known);
      const decision = decidePoolState(check, this.known);
      if (decision.action === 'accept') {
        this.known = decision.seen;
        return null;
      }
      if (decision.action === 'adopt') {
        this.known = decision.seen;
        logger.info({ generation: decision.seen.generation, trigger }, 'pool state: another process recovered the pool; taking its generation');
        return this.emit({ kind: 'adopted', generation: decision.seen.generation });
      }
      let reason: LossReason;
      let why: string;
      if (decision.action === 'prove') {
        const proof = provesNoLoss(await readPersistence(this.options.redis));
        if (proof.proven) {
          const verified = await vmm.verifyPoolState(decision.seen);
          if (!verified) continue;
          this.known = verified;
          logger.info({ generation: verified.generation, trigger }, 'pool state: Redis restarted; its AOF (appendfsync always) proves the state current, nothing replaced');
          return this.emit({ kind: 'verified', generation: verified.generation });
        }
        reason = 'unproven_restart';
        why = `Redis restarted or failed over, and ${proof.why}`;
      } else {
        reason = decision.reason;
        why =
          reason === 'lost'
            ? "Redis lost the pool's state (it restarted empty, or was flushed)"
            : `Redis went back in time (epoch ${decision.seen?.epoch} below ${this.known.epoch}: an older snapshot, or a replica that missed writes)`;
      }
      const next = { generation: randomUUID(), epoch: nextEpoch(this.known, decision.seen) };
      const terminated = await vmm.recoverPool(decision.seen, next);
      if (terminated === null) continue;
      this.known = next;
      logger.warn(
        { reason, generation: next.generation, terminated: terminated.length, trigger },
        `pool state: ${why}; recovered: server start marked again, every VM whose state cannot be proven (${terminated.length}) terminated, the providers' machines swept by the next reconcile cycle`,
      );
      return this.emit({ kind: 'recovered', reason, why, generation: next.generation, terminated });
    }
    logger.warn({ trigger }, 'pool state: the marker kept changing under this check; trying again at the next one');
    return null;
  }

  private async emit(event: PoolStateEvent): Promise<PoolStateEvent> {
    await this.options.onEvent?.(event).catch((err: Error) => this.options.logger.error({ err: err.message, event: event.kind }, 'pool state: a duty after the event failed'));
    return event;
  }
}
