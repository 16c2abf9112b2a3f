import type { RedisConnection } from '../redis.js';
import type { Logger } from '../logger.js';
import { poolKeys } from '../pool/keys.js';

export type WaitOutcome = 'signal' | 'timeout' | 'aborted';

interface Sleeper {
  groups: readonly number[];
  since: readonly number[];
  done(outcome: WaitOutcome): void;
}

/**
 * The ready channels of a pool, on one subscriber connection per process. The pool scripts publish
 * on a group's channel when one of its VMs may be acquirable (a VM became ready, an owner dropped
 * under max_vm_per_user, a request left the line). Each group has a generation that every message
 * bumps: a waiter takes a snapshot before its acquire attempt and sleeps only while it is unchanged,
 * so a message that arrives between the attempt and the sleep is not lost.
 */
export class ReadySignal {
  private readonly generations = new Map<number, number>();
  private readonly sleepers = new Set<Sleeper>();
  private readonly channelGroup = new Map<string, number>();
  private readonly subscribed: Promise<void>;
  private closed = false;

  constructor(
    private readonly subscriber: RedisConnection,
    prefix: string,
    groups: readonly number[],
    private readonly logger?: Logger,
  ) {
    const keys = poolKeys(prefix);
    for (const g of groups) this.channelGroup.set(keys.readyChannel(g), g);
    subscriber.on('message', (channel: string) => {
      const g = this.channelGroup.get(channel);
      if (g !== undefined) this.bump([g]);
    });
    // Messages published while the connection was down are lost: wake everyone to retry.
    let first = true;
    subscriber.on('ready', () => {
      if (!first) this.bump([...this.channelGroup.values()]);
      first = false;
    });
    subscriber.on('error', (err: Error) => this.logger?.warn({ err: err.message }, 'ready-signal connection error'));
    this.subscribed = subscriber.subscribe(...this.channelGroup.keys()).then(() => undefined);
    // Observed here so that a subscriber closed before anyone waited is no unhandled rejection.
    this.subscribed.catch((err: Error) => this.logger?.warn({ err: err.message }, 'ready-signal subscribe failed'));
  }

  /** Resolves once the channels are subscribed: only then may waiters rely on messages. */
  ready(): Promise<void> {
    return this.subscribed;
  }

  snapshot(groups: readonly number[]): number[] {
    return groups.map((g) => this.generations.get(g) ?? 0);
  }

  /** Sleeps until a message for one of the groups arrives after `since`, the timeout, or abort. */
  wait(groups: readonly number[], since: readonly number[], timeoutMs: number, signal?: AbortSignal): Promise<WaitOutcome> {
    if (this.changed(groups, since)) return Promise.resolve('signal');
    if (signal?.aborted || this.closed) return Promise.resolve('aborted');
    return new Promise((resolve) => {
      const sleeper: Sleeper = {
        groups,
        since,
        done: (outcome) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          this.sleepers.delete(sleeper);
          resolve(outcome);
        },
      };
      const onAbort = () => sleeper.done('aborted');
      const timer = setTimeout(() => sleeper.done('timeout'), Math.max(0, timeoutMs));
      signal?.addEventListener('abort', onAbort, { once: true });
      this.sleepers.add(sleeper);
    });
  }

  /** Number of acquire requests sleeping in this process. */
  get sleeping(): number {
    return this.sleepers.size;
  }

  private changed(groups: readonly number[], since: readonly number[]): boolean {
    return groups.some((g, i) => (this.generations.get(g) ?? 0) !== since[i]);
  }

  private bump(groups: readonly number[]): void {
    for (const g of groups) this.generations.set(g, (this.generations.get(g) ?? 0) + 1);
    for (const s of [...this.sleepers]) if (this.changed(s.groups, s.since)) s.done('signal');
  }

  /** Wakes every sleeper as aborted and closes the subscriber connection. */
  async close(): Promise<void> {
    this.closed = true;
    for (const s of [...this.sleepers]) s.done('aborted');
    await this.subscriber.quit().catch(() => this.subscriber.disconnect());
  }
}
