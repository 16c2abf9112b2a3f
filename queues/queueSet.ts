import { Queue, type ConnectionOptions } from 'bullmq';
import type { QueueName } from './names.js';

/**
 * Queue handles by name on one connection and prefix: each opened once, on first use. close()
 * closes them all; a later get() opens a new handle.
 */
export class QueueSet {
  private readonly queues = new Map<QueueName, Queue>();

  constructor(
    private readonly connection: ConnectionOptions,
    private readonly prefix: string,
    /** Listens to each handle's 'error' events (without a listener they are thrown). */
    private readonly onError?: (err: Error, name: QueueName) => void,
  ) {}

  get(name: QueueName): Queue {
    let q = this.queues.get(name);
    if (!q) {
      q = new Queue(name, { connection: this.connection, prefix: this.prefix });
      const onError = this.onError;
      if (onError) q.on('error', (err) => onError(err, name));
      this.queues.set(name, q);
    }
    return q;
  }

  async close(): Promise<void> {
    const queues = [...this.queues.values()];
    this.queues.clear();
    await Promise.all(queues.map(async (q) => {
      // Closing a handle whose connection is still starting throws 'Connection is closed' later.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([q.waitUntilReady().catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 2_000)))]);
      clearTimeout(timer);
      await q.close();
    }));
  }
}
