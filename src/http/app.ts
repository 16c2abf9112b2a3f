import type { Queue } from 'bullmq';
import express, { type Express } from 'express';
import { pinoHttp } from 'pino-http';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { createMetricsRegistry } from '../metrics/registry.js';
import type { VmManager } from '../pool/vmManager.js';
import type { QueueName } from '../../queues/names.js';
import { apiRouter, groupSummaries, refuseCrossSiteChanges, type AcquireFn } from './api.js';
import { authenticate, requireScope } from './auth.js';
import { bullBoardRouter } from './board.js';
import { HttpError, errorHandler, sendError } from './errors.js';
import { openApiDocument } from './openapi.js';
import { renderPoolFragment, renderPoolPage, POOL_PAGE_REFRESH_MS } from './poolPage.js';

export interface WebAppDeps {
  config: Config;
  vmm: VmManager;
  logger: Logger;
  /** A Queue handle per vmpool queue (Bull Board, queue depth metrics). */
  queue(name: QueueName): Queue;
  /** Gets a VM for POST /api/v1/acquire (VmPoolClient.acquire). */
  acquire: AcquireFn;
  /** How long /readyz waits for Redis to answer. */
  readyTimeoutMs?: number;
  poolPageRefreshMs?: number;
}

export const BOARD_PATH = '/admin/queues';

async function redisAnswers(vmm: VmManager, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([vmm.reader.ping(), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The `web` process's express app: pool page (/), Bull Board (/admin/queues), API (/api/v1),
 * metrics (/metrics), /healthz and /readyz. Only /healthz is open when tokens are configured.
 */
export function createWebApp(deps: WebAppDeps): Express {
  const { config, vmm, logger } = deps;
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', false);
  app.use(
    pinoHttp({
      logger,
      redact: ['req.headers.authorization', 'req.headers.cookie'],
      autoLogging: { ignore: (req) => req.url === '/healthz' },
    }),
  );

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  app.use(authenticate(config.web));

  app.get('/readyz', async (_req, res) => {
    if (await redisAnswers(vmm, deps.readyTimeoutMs ?? 2_000)) {
      res.json({ status: 'ready' });
      return;
    }
    sendError(res, new HttpError('not_ready', 'Redis does not answer', { redis: config.redis.url.replace(/\/\/[^@]*@/, '//***@') }));
  });

  const registry = createMetricsRegistry({ vmm, queue: deps.queue });
  app.get('/metrics', requireScope('admin'), async (_req, res) => {
    const text = await registry.metrics();
    res.type(registry.contentType).send(text);
  });

  app.get('/api/v1/openapi.json', requireScope('admin'), (_req, res) => {
    res.json(openApiDocument);
  });
  app.use('/api/v1', apiRouter({ config, vmm, acquire: deps.acquire }));

  app.use(BOARD_PATH, requireScope('admin'), refuseCrossSiteChanges, bullBoardRouter(deps.queue, { basePath: BOARD_PATH, readOnly: config.web.read_only_board }));

  app.get('/', requireScope('admin'), async (req, res) => {
    const now = vmm.clock();
    const vms = await vmm.getAllVmRecords();
    const summaries = await groupSummaries(vmm, vms);
    res.set('Cache-Control', 'no-store');
    if (req.query.fragment !== undefined) {
      res.type('html').send(renderPoolFragment(vmm.prefix, summaries, vms, now));
      return;
    }
    res.type('html').send(renderPoolPage(vmm.prefix, summaries, vms, now, deps.poolPageRefreshMs ?? POOL_PAGE_REFRESH_MS));
  });

  app.use(() => {
    throw new HttpError('not_found', 'no such route', {});
  });
  app.use(errorHandler(logger));
  return app;
}
