import type { AddressInfo } from 'node:net';
import { createServer, type Server } from 'node:http';
import type { Config } from '../config.js';
import { createLogger, type Logger } from '../logger.js';
import { VmManager, type Clock } from '../pool/vmManager.js';
import { createProducerConnection } from '../redis.js';
import { stopOnSignals } from '../runtime/boot.js';
import { requireRedis } from '../runtime/main.js';
import { readSettings, resolveConfig } from '../runtime/settings.js';
import { VmPoolClient } from '../client/index.js';
import type { QueueName } from '../../queues/names.js';
import type { AcquireFn } from './api.js';
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
  /** Stops accepting connections, ends idle ones, and closes Redis; open requests get until the deadline. */
  stop(deadlineMs?: number): Promise<void>;
}

/**
 * Starts the `web` process's HTTP server. Refuses (WebAuthRequired) to listen off loopback without
 * a token, before opening any connection.
 */
export async function startWebServer(config: Config, options: WebServerOptions = {}): Promise<RunningWebServer> {
  const host = options.host ?? config.web.host;
  const port = options.port ?? config.web.port;
  assertBindAllowed(config.web, host);
  const logger = options.logger ?? createLogger('vmpool-web');
  const prefix = options.prefix ?? config.redis.prefix;
  const connection = createProducerConnection(config.redis.url);
  connection.on('error', (err) => logger.warn({ err: err.message }, 'Redis connection error'));
  // The manager's queue handles are the process's: Bull Board, metrics and the client use them.
  const vmm = new VmManager(config, { redis: connection, prefix, logger, clock: options.clock });
  const queue = (name: QueueName) => vmm.queue(name);
  const client = new VmPoolClient({ redis: connection, prefix, queue, logger, clock: options.clock, graceMs: options.acquireGraceMs });
  const acquire: AcquireFn = (request, acquireOptions) => client.acquire(request, acquireOptions);
  const app = createWebApp({ config, vmm, logger, queue, acquire, poolPageRefreshMs: options.poolPageRefreshMs });
  const server = createServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
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
        await client.close();
        await vmm.close();
        await connection.quit().catch(() => connection.disconnect());
      })();
      return stopping;
    },
  };
}

/** Entry of the `web` process: config, Redis check, HTTP server, graceful stop on SIGTERM/SIGINT. */
export async function runWebProcess(configPath?: string): Promise<void> {
  const logger = createLogger('vmpool-web');
  const settings = readSettings();
  const { config, source } = resolveConfig(configPath, settings);
  try {
    assertBindAllowed(config.web);
  } catch (err) {
    logger.fatal((err as Error).message);
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(2);
  }
  logger.info({ config: source }, 'starting web');
  await requireRedis(config.redis.url, logger);
  const web = await startWebServer(config, { logger, prefix: settings.prefix });
  stopOnSignals((deadline) => web.stop(deadline), logger, settings.shutdownDeadlineMs);
}
