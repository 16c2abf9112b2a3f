import type { AddressInfo } from 'node:net';
import { createServer, type Server } from 'node:http';
import { ExitCodes } from '../cli/exitCodes.js';
import type { Config } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { DataFormat, DataFormatTooNew, type DataFormatOptions } from '../pool/dataFormat.js';
import { VmManager, type Clock } from '../pool/vmManager.js';
import { PoolStateWatch, poolStateCheckMs } from '../runtime/poolStateWatch.js';
import { assertPrefixFits, createProducerConnection, replicaWaitOf } from '../redis.js';
import { stopOnSignals } from '../runtime/boot.js';
import { exitFatal, prepareProcess, requireRedis, requireSafeRedis } from '../runtime/main.js';
import { VmPoolClient } from '../client/index.js';
import type { QueueName } from '../../queues/names.js';
import { WebShuttingDown, type AcquireFn, type AcquireSetFn } from './api.js';
import { createWebApp, type ChangesRefused } from './app.js';
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
  /** The data format this process knows and its migrations (default: this release's; tests give their own). */
  dataFormat?: Pick<DataFormatOptions, 'known' | 'migrations' | 'lockTtlMs' | 'quiesceMs'>;
}

export interface RunningWebServer {
  server: Server;
  /** Base URL, such as http://127.0.0.1:8080/ */
  url: string;
  port: number;
  vmm: VmManager;
  /**
   * Why the process refuses changes, or null. Set once the pool's data format is newer than this
   * process knows (at start, or moved past it by a process of a newer release): it then serves reads
   * only, and answers every change with 503 (reason data_format_too_new) naming the version needed.
   * Also while it could not read the data format yet (Redis did not answer at start:
   * data_format_unchecked).
   */
  refusal(): ChangesRefused | null;
  /**
   * Stops accepting connections, ends idle ones, answers waiting POST /acquire requests at once
   * (503, Retry-After) and withdraws them, then closes Redis; other open requests get until the deadline.
   */
  stop(deadlineMs?: number): Promise<void>;
}

/** How often a web process that could not read the pool's data format at start tries again. */
const DATA_FORMAT_RETRY_MS = 2_000;

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
 * listen. Once listening, like every process, it brings the pool's data format to its own version
 * (or waits for the process that does), taking no change until then; on a pool newer than it
 * knows, it serves reads and refuses changes.
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
  const acquireSet: AcquireSetFn = async (request, setOptions) => {
    if (stoppingAcquires) throw new WebShuttingDown();
    const controller = new AbortController();
    waiting.add(controller);
    const signal = setOptions?.signal ? AbortSignal.any([controller.signal, setOptions.signal]) : controller.signal;
    try {
      return await client.acquireSet(request, { signal });
    } catch (err) {
      if (controller.signal.aborted) throw new WebShuttingDown();
      throw err;
    } finally {
      waiting.delete(controller);
    }
  };
  // The data format before anything is written: until it is read, and for good once it is newer
  // than this process knows, changes are refused.
  const dataFormat = new DataFormat({ redis: connection, prefix, logger, clock: options.clock, groups: config.groups.map((g) => g.name), ...options.dataFormat });
  let refused: ChangesRefused | null = {
    reason: 'data_format_unchecked',
    message: "the web process has not read the pool's data format yet (Redis does not answer, or another process migrates the pool); it takes changes once it has",
    known: dataFormat.known,
  };
  const tooNew = (err: DataFormatTooNew) => {
    if (refused?.reason === 'data_format_too_new') return;
    refused = { reason: 'data_format_too_new', message: err.message, needed: err.needed, known: err.known };
    logger.error({ needed: err.needed, known: err.known }, `data format: ${err.message}; web serves reads only, and refuses every change (503)`);
  };
  let poolState: PoolStateWatch | undefined;
  let stopped = false;
  /** Brings the pool to this version (or finds it newer): true when settled, false to try again. */
  const checkDataFormat = async (): Promise<boolean> => {
    try {
      await dataFormat.ensure();
    } catch (err) {
      if (err instanceof DataFormatTooNew) {
        tooNew(err);
        return true;
      }
      logger.warn({ err: (err as Error).message }, 'data format: not read yet; changes are refused until it is');
      return false;
    }
    if (stopped) return true;
    refused = null;
    // The web process watches the pool's state too: any process may be the first to see a loss. It
    // stops (and writes nothing more) once the data format moves past this process.
    poolState = new PoolStateWatch({
      vmm,
      redis: connection,
      logger,
      intervalMs: poolStateCheckMs(config),
      dataFormat: { format: dataFormat, onNewer: (needed) => tooNew(new DataFormatTooNew(needed, dataFormat.known)) },
    });
    poolState.start();
    return true;
  };
  let checking: Promise<void> | undefined;
  let wakeChecking = () => {};
  const closeConnections = async () => {
    stopped = true;
    wakeChecking();
    await poolState?.stop();
    await client.close();
    await vmm.close();
    await connection.quit().catch(() => connection.disconnect());
    await checking;
  };
  const app = createWebApp({ config, vmm, logger, queue, acquire, acquireSet, poolPageRefreshMs: options.poolPageRefreshMs, refusal: () => refused });
  const server = createServer(app);
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
  // Listening first (a port taken leaves the pool untouched); changes wait for the data format.
  // 'web listening' comes after the first read of it, so that a start that saw the log finds
  // /readyz ready unless the read failed (it is then retried, and changes are refused until then).
  const settled = await checkDataFormat();
  logger.info({ url, auth: config.web.auth.token !== undefined || config.web.auth.tokens.length > 0 }, 'web listening');
  if (!settled) {
    checking = (async () => {
      while (!stopped) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, DATA_FORMAT_RETRY_MS);
          wakeChecking = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        if (stopped || (await checkDataFormat())) return;
      }
    })();
  }
  let stopping: Promise<void> | undefined;
  return {
    server,
    url,
    port: address.port,
    vmm,
    refusal: () => refused,
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
