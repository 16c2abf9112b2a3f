import type { Queue } from 'bullmq';
import express, { type Express, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import helmet from 'helmet';
import { pinoHttp } from 'pino-http';
import type { Config } from '../config/index.js';
import type { Logger } from '../logger.js';
import { describeRedis } from '../redis.js';
import { createMetricsRegistry } from '../metrics/registry.js';
import type { VmManager } from '../pool/vmManager.js';
import { groupSummaries } from '../poolView.js';
import type { QueueName } from '../../queues/names.js';
import { apiRouter, refuseCrossSiteChanges, type AcquireFn, type AcquireSetFn } from './api.js';
import { authenticate, checkHost, hasScope, requireScope } from './auth.js';
import { bullBoardRouter } from './board.js';
import { HttpError, errorHandler, sendError } from './errors.js';
import { openApiDocument } from './openapi.js';
import { FAVICON_SVG, renderPoolFragment, renderPoolPage, POOL_PAGE_REFRESH_MS, POOL_PAGE_ROWS, POOL_PAGE_SCRIPT_SOURCE } from './poolPage.js';

export interface WebAppDeps {
  config: Config;
  vmm: VmManager;
  logger: Logger;
  /** A Queue handle per vmpool queue (Bull Board, queue depth metrics). */
  queue(name: QueueName): Queue;
  /** Gets a VM for POST /api/v1/acquire (VmPoolClient.acquire). */
  acquire: AcquireFn;
  /** Gets several VMs at once for POST /api/v1/acquire-set (VmPoolClient.acquireSet). */
  acquireSet: AcquireSetFn;
  /** How long /readyz waits for Redis to answer. */
  readyTimeoutMs?: number;
  /**
   * Why this process may not change the pool now, or null: while it is set every change is refused
   * with 503 (not_ready, with its reason), reads go on, and /healthz and /readyz say it.
   */
  refusal?: () => ChangesRefused | null;
  poolPageRefreshMs?: number;
}

/**
 * Why a web process takes no change: the pool's data format is newer than it knows (a process of a
 * newer release migrated it: `needed` is that version), or it could not read it yet.
 */
export interface ChangesRefused {
  reason: 'data_format_too_new' | 'data_format_unchecked';
  message: string;
  needed?: number;
  /** The data format this process knows. */
  known: number;
}

export const BOARD_PATH = '/admin/queues';

/**
 * Browser hardening on every answer (helmet): no framing (the pool page and Bull Board have buttons
 * that change things, so no other site may overlay them), nosniff, no Referer, and a CSP that runs
 * only this origin's scripts and the pool page's one inline script (Bull Board needs inline styles
 * and loads its font from Google Fonts). No HSTS: the process speaks plain HTTP; that is the proxy's.
 */
export function securityHeaders(): RequestHandler {
  return helmet({
    contentSecurityPolicy: {
      useDefaults: true,
      directives: {
        'script-src': ["'self'", POOL_PAGE_SCRIPT_SOURCE],
        'frame-ancestors': ["'none'"],
        // The process is often reached over plain HTTP (loopback): upgrading would break its assets.
        'upgrade-insecure-requests': null,
      },
    },
    xFrameOptions: { action: 'deny' },
    referrerPolicy: { policy: 'no-referrer' },
    strictTransportSecurity: false,
  });
}

/**
 * Bull Board: a read token views it read-only (bull-board refuses its changes, and so do we) and
 * without lease ids; changes need admin. An admin gets the board as web.read_only_board says.
 */
function boardAccess(queue: WebAppDeps['queue'], readOnlyBoard: boolean): RequestHandler {
  const adminBoard = bullBoardRouter(queue, { basePath: BOARD_PATH, readOnly: readOnlyBoard });
  const readBoard = bullBoardRouter(queue, { basePath: BOARD_PATH, readOnly: true, hideLeaseIds: true });
  const mayRead = requireScope('read');
  const mayChange = requireScope('admin');
  return (req: Request, res: Response, next: NextFunction) => {
    const check = req.method === 'GET' || req.method === 'HEAD' ? mayRead : mayChange;
    check(req, res, () => refuseCrossSiteChanges(req, res, () => (hasScope(req.principal!, 'admin') ? adminBoard : readBoard)(req, res, next)));
  };
}

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
  app.use(securityHeaders());
  app.use(
    pinoHttp({
      logger,
      // One short line per request: no headers (they carry tokens and cookies, and most of the bytes).
      serializers: {
        req: (req: { id: unknown; method: string; url: string; remoteAddress?: string }) => ({ id: req.id, method: req.method, url: req.url, remoteAddress: req.remoteAddress }),
        res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
      },
      autoLogging: { ignore: (req) => req.url === '/healthz' },
      // Changes at info, reads at debug, failures of ours at error; a 503 (no VM, Redis away) is an
      // answer, not a crash, so it is logged without a stack.
      customLogLevel: (req, res, err) => {
        if (res.statusCode >= 500 && res.statusCode !== 503) return 'error';
        if (err || res.statusCode >= 400) return 'info';
        return req.method === 'GET' || req.method === 'HEAD' ? 'debug' : 'info';
      },
      customErrorObject: (_req, res, _error, value: Record<string, unknown>) => (res.statusCode === 503 ? { res: value.res, responseTime: value.responseTime } : value),
    }),
  );

  const refusal = deps.refusal ?? (() => null);
  const refusalDetails = ({ message: _message, ...details }: ChangesRefused) => details;
  app.get('/healthz', (_req, res) => {
    const refused = refusal();
    // Alive either way (a restart of the same release changes nothing); it says why it refuses changes.
    if (refused) res.json({ status: 'refusing_changes', message: refused.message, ...refusalDetails(refused) });
    else res.json({ status: 'ok' });
  });

  app.use(checkHost(config.web));
  // Browsers ask for an icon without credentials: it gives nothing away.
  app.get(['/favicon.svg', '/favicon.ico'], (_req, res) => {
    res.set('Cache-Control', 'public, max-age=86400').type('image/svg+xml').send(FAVICON_SVG);
  });
  app.use(authenticate(config.web));
  // A process older than the pool's data format writes nothing it does not understand.
  app.use((req, _res, next) => {
    const refused = refusal();
    if (refused && !['GET', 'HEAD', 'OPTIONS'].includes(req.method)) throw new HttpError('not_ready', refused.message, refusalDetails(refused));
    next();
  });

  app.get('/readyz', async (_req, res) => {
    const refused = refusal();
    if (refused) {
      sendError(res, new HttpError('not_ready', refused.message, refusalDetails(refused)));
      return;
    }
    if (await redisAnswers(vmm, deps.readyTimeoutMs ?? 2_000)) {
      res.json({ status: 'ready' });
      return;
    }
    sendError(res, new HttpError('not_ready', 'Redis does not answer', { redis: describeRedis(config.redis) }));
  });

  const registry = createMetricsRegistry({ vmm, queue: deps.queue });
  app.get('/metrics', requireScope('read'), async (_req, res) => {
    const text = await registry.metrics();
    res.type(registry.contentType).send(text);
  });

  app.get('/api/v1/openapi.json', requireScope('read'), (_req, res) => {
    res.json(openApiDocument);
  });
  app.use('/api/v1', apiRouter({ config, vmm, acquire: deps.acquire, acquireSet: deps.acquireSet }));

  app.use(BOARD_PATH, boardAccess(deps.queue, config.web.read_only_board));

  app.get('/', requireScope('read'), async (req, res) => {
    const now = vmm.clock();
    // Counts from the indexes; the first POOL_PAGE_ROWS VMs of each group (the rest: a "more" link).
    // Every group the summaries list: the config's, then those removed from it that drain.
    const summaries = await groupSummaries(vmm);
    const names = summaries.map((s) => s.name);
    const pages = await Promise.all(names.map((group) => vmm.listVms({ group, limit: POOL_PAGE_ROWS })));
    const vms = pages.flatMap((p) => p.vms);
    const next = new Map(names.map((g, i) => [g, pages[i]!.next]));
    // The charts' last hour (reconcile samples it once a minute).
    const history = new Map(await Promise.all(names.map(async (g) => [g, await vmm.readHistory(g, 3_600_000)] as const)));
    const autoholds = await vmm.autoholds.list();
    res.set('Cache-Control', 'no-store');
    if (req.query.fragment !== undefined) {
      res.type('html').send(renderPoolFragment(vmm.prefix, summaries, vms, now, history, next, autoholds));
      return;
    }
    res.type('html').send(renderPoolPage(vmm.prefix, summaries, vms, now, deps.poolPageRefreshMs ?? POOL_PAGE_REFRESH_MS, history, next, !hasScope(req.principal!, 'admin'), autoholds));
  });

  app.use((req) => {
    if (['/', '/metrics', '/healthz', '/readyz'].includes(req.path)) {
      throw new HttpError('method_not_allowed', `${req.method} is not allowed here; use GET`, { allow: ['GET', 'HEAD'] });
    }
    throw new HttpError('not_found', 'no such route', {});
  });
  app.use(errorHandler(logger));
  return app;
}
