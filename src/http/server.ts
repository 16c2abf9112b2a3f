import type { AddressInfo } from 'node:net';
import { createServer, type Server } from 'node:http';
import { ExitCodes } from '../cli/exitCodes.js';
import type { Config } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { VmManager, type Clock } from '../pool/vmManager.js';
import { PoolStateWatch, poolStateCheckMs } from '../runtime/poolStateWatch.js';
import { assertPrefixFits, createProducerConnection, replicaWaitOf } from '../redis.js';
import { stopOnSignals } from '../runtime/boot.js';
import { exitFatal, prepareProcess, requireRedis, requireSafeRedis } from '../runtime/main.js';
import { VmPoolClient } from '../client/index.js';
import type { QueueName } from '../../queues/names.js';
import { WebShuttingDown, type AcquireFn } from './api.js';
import { createWebApp } from './app.js';
import { assertBindAllowed } from './auth.js';

export interface WebServerOptions {
  logger?: Logger;
  /** Overrides config.redis.prefix. */
  prefix?: string;
  clock?: Clock;
  /** Override config.web.host / port (port 0: any free port). */
  host?: string;
  port?: number;
  poolPageRefreshMs?: number;
  /** How long past a request's timeout POST /acquire still waits for the acquire job (VmPoolClient graceMs). */
  acquireGraceMs?: number;
}

export interface RunningWebServer {
  server: Server;
  /** Base URL, such as http://127.0.0.1:8080/ */
  url: string;
  port: number;
  vmm: VmManager;
  /**
   * Stops accepting connections, ends idle ones, answers waiting POST /acquire requests at once
   * (503, Retry-After) and withdraws them, then closes Redis; other open requests get until the deadline.
   */
  stop(deadlineMs?: number): Promise<void>;
}

/** The web process could not listen (the port is taken, a privileged port, an address not here). */
export class WebListenError extends Error {
  readonly code: string | undefined;

  constructor(host: string, port: number, cause: NodeJS.ErrnoException) {
    const why =
      cause.code === 'EADDRINUSE'
        ? 'the port is in use by another process; stop it, or choose another port (web.port in the config, or PORT)'
        : cause.code === 'EACCES'
          ? 'permission denied (ports below 1024 need privileges); choose another port (web.port, or PORT)'
          : cause.code === 'EADDRNOTAVAIL'
            ? 'the address is not one of this machine\'s; choose another (web.host, or HOST)'
            : cause.message;
    super(`web cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port}: ${why} (${cause.code ?? 'error'})`, { cause });
    this.name = 'WebListenError';
    this.code = cause.code;
  }
}

/**
 * Starts the `web` process's HTTP server. Refuses (WebAuthRequired) to listen off loopback without
 * a token, before opening any connection; WebListenError (its connections closed) when it cannot
 * listen.
 */
export async function startWebServer(config: Config, options: WebServerOptions = {}): Promise<RunningWebServer> {
  const host = options.host ?? config.web.host;
  const port = options.port ?? config.web.port;
  assertBindAllowed(config.web, host);
  const logger = options.logger ?? createLogger('vmpool-web');
  const prefix = options.prefix ?? config.redis.prefix;
  assertPrefixFits(config.redis, prefix);
  const connection = createProducerConnection(config.redis);
  connection.on('error', (err) => logger.warn({ err: err.message }, 'Redis connection error'));
  // The manager's queue handles are the process's: Bull Board, metrics and the client use them.
  const vmm = new VmManager(config, { redis: connection, prefix, logger, clock: options.clock });
  const queue = (name: QueueName) => vmm.queue(name);
  const client = new VmPoolClient({ redis: connection, prefix, queue, logger, clock: options.clock, graceMs: options.acquireGraceMs, waitReplicas: replicaWaitOf(config.redis), groups: config.groups });
  // Waiting POST /acquire requests: at stop they are answered at once and their requests withdrawn
  // (an aborted VmPoolClient.acquire withdraws its request itself).
  const waiting = new Set<AbortController>();
  let stoppingAcquires = false;
  const acquire: AcquireFn = async (request, acquireOptions) => {
    if (stoppingAcquires) throw new WebShuttingDown();
    const controller = new AbortController();
    waiting.add(controller);
    const signal = acquireOptions?.signal ? AbortSignal.any([controller.signal, acquireOptions.signal]) : controller.signal;
    try {
      return await client.acquire(request, { signal });
    } catch (err) {
      if (controller.signal.aborted) throw new WebShuttingDown();
      throw err;
    } finally {
      waiting.delete(controller);
    }
  };
  const app = createWebApp({ config, vmm, logger, queue, acquire, poolPageRefreshMs: options.poolPageRefreshMs });
  const server = createServer(app);
  // The web process watches the pool's state too: any process may be the first to see a loss.
  const poolState = new PoolStateWatch({ vmm, redis: connection, logger, intervalMs: poolStateCheckMs(config) });
  poolState.start();
  const closeConnections = async () => {
    await poolState.stop();
    await client.close();
    await vmm.close();
    await connection.quit().catch(() => connection.disconnect());
  };
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    await closeConnections();
    throw new WebListenError(host, port, err as NodeJS.ErrnoException);
  }
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${shownHost}:${address.port}/`;
  logger.info({ url, auth: config.web.auth.token !== undefined || config.web.auth.tokens.length > 0 }, 'web listening');
  let stopping: Promise<void> | undefined;
  return {
    server,
    url,
    port: address.port,
    vmm,
    stop(deadlineMs = 10_000) {
      stopping ??= (async () => {
        // Waiting acquires would hold their connections until their timeout: answer them now.
        stoppingAcquires = true;
        for (const controller of waiting) controller.abort(new WebShuttingDown());
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        let timer: NodeJS.Timeout | undefined;
        const deadline = new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            server.closeAllConnections();
            resolve();
          }, deadlineMs);
        });
        await Promise.race([closed, deadline]);
        clearTimeout(timer);
        await closeConnections();
      })();
      return stopping;
    },
  };
}

/**
 * Entry of the `web` process: arguments (`--config FILE`; an explicit configPath wins), config,
 * Redis check, HTTP server, graceful stop on SIGTERM/SIGINT.
 */
export async function runWebProcess(configPath?: string, argv: readonly string[] = []): Promise<void> {
  const logger = createLogger('vmpool-web');
  const { settings, config, source } = prepareProcess('workers/web.js', argv, logger, configPath);
  try {
    assertBindAllowed(config.web);
  } catch (err) {
    exitFatal(logger, 'web needs a token; exiting', (err as Error).message, ExitCodes.USAGE);
  }
  logger.info({ config: source }, 'starting web');
  await requireRedis(config.redis, logger);
  await requireSafeRedis(config, logger);
  const web = await startWebServer(config, { logger, prefix: settings.prefix }).catch((err: unknown) => {
    if (!(err instanceof WebListenError)) throw err;
    exitFatal(logger, `web cannot listen (${err.code}); exiting`, err.message, ExitCodes.ERROR);
  });
  stopOnSignals((deadline) => web.stop(deadline), logger, settings.shutdownDeadlineMs);
}
