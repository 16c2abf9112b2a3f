import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import type { Router } from 'express';
import { ALL_QUEUE_NAMES, type QueueName } from '../../queues/names.js';

/** Bull Board over every vmpool queue, mounted at basePath; read-only when the config says so. */
export function bullBoardRouter(queue: (name: QueueName) => Queue, options: { basePath: string; readOnly: boolean }): Router {
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(options.basePath);
  createBullBoard({
    queues: ALL_QUEUE_NAMES.map((name) => new BullMQAdapter(queue(name), { readOnlyMode: options.readOnly })),
    // @bull-board/express pins its own copy of @bull-board/api; the types differ only by declaration site.
    serverAdapter: serverAdapter as unknown as Parameters<typeof createBullBoard>[0]['serverAdapter'],
    options: { uiConfig: { boardTitle: 'vmpool' } },
  });
  return serverAdapter.getRouter() as Router;
}
