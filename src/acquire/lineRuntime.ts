import type { Redis } from 'ioredis';
import { duplicateConnection, type RedisConnection } from '../redis.js';
import type { JobContext } from '../runtime/context.js';
import { readyChannels } from '../pool/acquireLine.js';

/**
 * An acquire process's side of the fair line (commands/includes/acquireLine.lua). Waiting requests
 * are parked (delayed BullMQ jobs, holding no worker); this runtime wakes the ones the line serves:
 * - on a ready message (a VM of a group may be acquirable; the scripts publish its name), it runs
 *   the line's dispatcher for that VM, which gives it to the request next in line, and promotes
 *   that request's job: one wake per freed VM, none for the requests it cannot serve;
 * - every acquire_safety_retry seconds, and when its subscriber reconnects (messages are lost while
 *   nobody listens), it dispatches every group and promotes the jobs given a VM that have not
 *   collected it (acquire_assigned; a wake lost with a process that died). That sweep costs a few
 *   commands per group, plus one per request waiting to be woken.
 */
export class AcquireLineRuntime {
  private readonly subscriber: RedisConnection;
  private readonly channelGroup = new Map<string, string>();
  private readonly subscribed: Promise<void>;
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(private readonly ctx: JobContext) {
    for (const [channel, g] of readyChannels(ctx.prefix, ctx.vmm.vmGroups)) this.channelGroup.set(channel, g);
    this.subscriber = duplicateConnection(ctx.connection, { maxRetriesPerRequest: null, lazyConnect: false });
    this.subscriber.on('message', (channel: string, vmName: string) => {
      const g = this.channelGroup.get(channel);
      if (g !== undefined) void this.dispatch(g, vmName);
    });
    let first = true;
    this.subscriber.on('ready', () => {
      if (!first) void this.sweep();
      first = false;
    });
    this.subscriber.on('error', (err: Error) => ctx.logger.warn({ err: err.message }, 'acquire line subscriber error'));
    this.subscribed = this.subscriber.subscribe(...this.channelGroup.keys()).then(() => undefined);
    this.subscribed.catch((err: Error) => ctx.logger.warn({ err: err.message }, 'acquire line subscribe failed'));
    this.timer = setInterval(() => void this.sweep(), ctx.config.acquire_safety_retry * 1000);
    this.timer.unref();
  }

  /** Resolves once the ready channels are subscribed. */
  ready(): Promise<void> {
    return this.subscribed;
  }

  /** Runs the dispatcher for a VM of the group (or its clean VMs, for ''), and wakes whom it served. */
  async dispatch(group: string, vmName: string): Promise<void> {
    if (this.closed) return;
    try {
      // The manager wakes the requests it served.
      await this.ctx.vmm.dispatchAcquireLine(group, vmName);
    } catch (err) {
      this.ctx.logger.warn({ group, vmName, err: (err as Error).message }, 'acquire line dispatch failed; the next sweep retries');
    }
  }

  /**
   * Listens to the ready channels of groups removed from the config that drain too (a request may
   * name one, and wait for its VM): a channel is added once, when such a group is first seen.
   */
  watch(groups: Iterable<string>): void {
    const added = [...readyChannels(this.ctx.prefix, [...groups])].filter(([channel]) => !this.channelGroup.has(channel));
    for (const [channel, g] of added) this.channelGroup.set(channel, g);
    if (added.length && !this.closed) {
      this.subscriber.subscribe(...added.map(([channel]) => channel)).catch((err: Error) => this.ctx.logger.warn({ err: err.message }, 'acquire line subscribe failed'));
    }
  }

  /** Dispatches every group (the removed ones that drain too) and wakes the served requests whose wake may have been lost. */
  async sweep(): Promise<void> {
    if (this.closed) return;
    const removed = await this.ctx.vmm.refreshRemovedGroups().catch(() => this.ctx.vmm.removedGroups);
    this.watch(removed.keys());
    for (const g of [...this.ctx.vmm.vmGroups, ...removed.keys()]) await this.dispatch(g, '');
    try {
      this.ctx.vmm.wakeAcquireJobs(await this.ctx.vmm.reader.acquireAssignedBefore(this.ctx.clock() - STALE_WAKE_MS, SWEEP_WAKE_BATCH));
    } catch (err) {
      this.ctx.logger.warn({ err: (err as Error).message }, 'acquire line sweep failed');
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.subscriber.quit().catch(() => this.subscriber.disconnect());
  }
}

/** A served request whose job has not collected its VM after this long was not woken (a lost wake). */
const STALE_WAKE_MS = 2_000;
/** Served requests woken again per sweep, at most. */
const SWEEP_WAKE_BATCH = 500;
