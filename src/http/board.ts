import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { Queue } from 'bullmq';
import type { Router } from 'express';
import { ALL_QUEUE_NAMES, type QueueName } from '../../queues/names.js';

/** A job's result as a board without lease ids shows it: an acquire's assignment without its lease id. */
function withoutLeaseId(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || !('leaseId' in value)) return value;
  return { ...value, leaseId: '(hidden: only an admin sees lease ids)' };
}

/**
 * Bull Board over every vmpool queue, mounted at basePath; read-only when the config says so.
 * With hideLeaseIds (a read token's board), job results show no lease id: it is the capability to
 * renew and release a VM.
 */
export function bullBoardRouter(queue: (name: QueueName) => Queue, options: { basePath: string; readOnly: boolean; hideLeaseIds?: boolean }): Router {
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(options.basePath);
  createBullBoard({
    queues: ALL_QUEUE_NAMES.map((name) => {
      const adapter = new BullMQAdapter(queue(name), { readOnlyMode: options.readOnly });
      if (options.hideLeaseIds) adapter.setFormatter('returnValue', withoutLeaseId);
      return adapter;
    }),
    // @bull-board/express pins its own copy of @bull-board/api; the types differ only by declaration site.
    serverAdapter: serverAdapter as unknown as Parameters<typeof createBullBoard>[0]['serverAdapter'],
    options: { uiConfig: { boardTitle: 'vmpool' } },
  });
  return serverAdapter.getRouter() as Router;
}
