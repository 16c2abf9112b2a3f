import { createLogger } from '../logger.js';
import { describeRedis } from '../redis.js';
import { redactUrl } from '../text/redact.js';
import { startProcessTypes, stopOnSignals, type RunningProcess } from '../runtime/boot.js';
import { requireRedis, requireSafeRedis } from '../runtime/main.js';
import { mayStartPrivateRedis, startPrivateRedis, type PrivateRedis } from '../runtime/privateRedis.js';
import { connectAnsweringRedis } from '../redis.js';
import { resolveConfig, type Settings } from '../runtime/settings.js';
import { isWorkerProcessType, processTypeSpecs, WORKER_PROCESS_TYPES, type WorkerProcessType } from '../processors/index.js';
import { WebAuthRequired } from '../http/auth.js';
import { startWebServer, WebListenError, type RunningWebServer } from '../http/server.js';
import { CliError, ExitCodes } from './exitCodes.js';
import type { CliIo } from './io.js';

/** Process types of `vmpool start`: the worker types plus `web`. */
export const START_TYPES = [...WORKER_PROCESS_TYPES, 'web'] as const;

let serving = false;

/** True once `vmpool start` runs its process types: the CLI must not exit then. */
export function isServing(): boolean {
  return serving;
}

/**
 * `vmpool start [types...]`: worker types and `web` in this process, stopped together on
 * SIGTERM/SIGINT. `web` binds first: a port that is taken stops the start before any worker runs
 * (so nothing is spawned). When no Redis answers at a loopback URL and redis-server is installed,
 * a private one runs for this start (src/runtime/privateRedis.ts) and stops with it.
 */
export async function runStart(types: string[], configPath: string | undefined, settings: Settings, io: CliIo): Promise<void> {
  const chosen = types.length ? types : [...START_TYPES];
  const unknown = chosen.filter((t) => t !== 'web' && !isWorkerProcessType(t));
  if (unknown.length) throw new CliError(`unknown process type(s): ${unknown.join(', ')}; known: ${START_TYPES.join(', ')}`, ExitCodes.USAGE);
  const logger = createLogger('vmpool', io.env);
  const { config, source } = resolveConfig(configPath, settings);
  logger.info({ config: source, types: chosen, redis: describeRedis(config.redis) }, 'starting vmpool');
  let privateRedis: PrivateRedis | undefined;
  // A private redis-server only stands in for one Redis at a loopback URL (never a Cluster or Sentinel).
  const single = !config.redis.cluster && !config.redis.sentinel;
  const answers =
    !single ||
    (await connectAnsweringRedis(config.redis).then(
      (r) => (r.disconnect(), true),
      () => false,
    ));
  if (!answers && mayStartPrivateRedis(config.redis.url, io.env)) {
    try {
      privateRedis = await startPrivateRedis(config.redis.url, io.env, logger);
      io.out(
        `redis: nothing answered at ${redactUrl(config.redis.url)}, so vmpool started a private redis-server (pid ${privateRedis.pid}) ` +
          `with AOF in ${privateRedis.dir}; it stops with vmpool (VMPOOL_PRIVATE_REDIS=0 turns this off)\n`,
      );
    } catch (err) {
      logger.error({ err: (err as Error).message }, 'could not start a private redis-server');
    }
  }
  if (!privateRedis) await requireRedis(config.redis, logger);
  await requireSafeRedis(config, logger);
  const workerTypes = chosen.filter((t): t is WorkerProcessType => isWorkerProcessType(t));
  let running: RunningProcess | undefined;
  let web: RunningWebServer | undefined;
  try {
    if (chosen.includes('web')) web = await startWebServer(config, { logger, prefix: settings.prefix });
    if (workerTypes.length) running = await startProcessTypes(processTypeSpecs, workerTypes, config, { logger, prefix: settings.prefix, concurrency: settings.concurrency });
  } catch (err) {
    await web?.stop(5_000);
    await privateRedis?.stop();
    if (err instanceof WebAuthRequired) throw new CliError(err.message, ExitCodes.USAGE);
    if (err instanceof WebListenError) throw new CliError(`${err.message}; nothing was started`, ExitCodes.ERROR);
    throw err;
  }
  serving = true;
  const vmm = running?.ctx.vmm ?? web!.vmm;
  io.out(`${await vmm.info()}\n`);
  if (web) io.out(`web: ${web.url}\n`);
  const down = ['vmpool', ...(configPath ? ['--config', shellWord(configPath)] : []), 'down'].join(' ');
  stopOnSignals(
    async (deadlineMs) => {
      // Read while the connections are open: the pool's machines outlive this process.
      const left = await vmm.getAllVmRecords().then(
        (vms) => vms.length,
        () => undefined,
      );
      await Promise.all([web?.stop(deadlineMs), running?.stop(deadlineMs)]);
      // Last: the workers needed it while they stopped. Its AOF keeps the pool for the next start.
      await privateRedis?.stop(1_500);
      const redisNote = privateRedis ? `; the private redis-server stopped (its data stays in ${privateRedis.dir})` : '';
      if (left === 0) return `stopped; the pool has no VMs${redisNote}`;
      const count = left === undefined ? 'the pool\'s VMs keep' : left === 1 ? '1 VM keeps' : `${left} VMs keep`;
      return `stopped; ${count} running (VMs outlive vmpool). To terminate them: \`${down}\` while terminate workers run (\`vmpool start\`, or \`vmpool start terminate\`)${redisNote}`;
    },
    logger,
    settings.shutdownDeadlineMs,
  );
}

/** A word as a POSIX shell reads it, for commands shown to the operator (never run). */
function shellWord(word: string): string {
  return /^[\w./@%+=:,-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`;
}
