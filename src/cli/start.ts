import { createLogger } from '../logger.js';
import { redactUrl } from '../text/redact.js';
import { startProcessTypes, stopOnSignals, type RunningProcess } from '../jobs/boot.js';
import { requireRedis, resolveConfig } from '../jobs/main.js';
import { isWorkerProcessType, type WorkerProcessType } from '../jobs/processTypes.js';
import { WebAuthRequired } from '../http/auth.js';
import { startWebServer, type RunningWebServer } from '../http/server.js';
import { CliError, ExitCodes } from './exitCodes.js';
import { START_TYPES, type CliIo } from './program.js';

let serving = false;

/** True once `vmpool start` runs its process types: the CLI must not exit then. */
export function isServing(): boolean {
  return serving;
}

/** `vmpool start [types...]`: worker types and `web` in this process, stopped together on SIGTERM/SIGINT. */
export async function runStart(types: string[], configPath: string | undefined, io: CliIo): Promise<void> {
  const chosen = types.length ? types : [...START_TYPES];
  const unknown = chosen.filter((t) => t !== 'web' && !isWorkerProcessType(t));
  if (unknown.length) throw new CliError(`unknown process type(s): ${unknown.join(', ')}; known: ${START_TYPES.join(', ')}`, ExitCodes.USAGE);
  const logger = createLogger('vmpool', io.env);
  const { config, source } = resolveConfig(configPath, io.env);
  logger.info({ config: source, types: chosen, redis: redactUrl(config.redis.url) }, 'starting vmpool');
  await requireRedis(config.redis.url, logger);
  const workerTypes = chosen.filter((t): t is WorkerProcessType => isWorkerProcessType(t));
  let running: RunningProcess | undefined;
  let web: RunningWebServer | undefined;
  try {
    if (workerTypes.length) running = await startProcessTypes(workerTypes, config, { logger, env: io.env });
    if (chosen.includes('web')) web = await startWebServer(config, { logger, prefix: io.env.VMPOOL_PREFIX });
  } catch (err) {
    await running?.stop(5_000);
    if (err instanceof WebAuthRequired) throw new CliError(err.message, ExitCodes.USAGE);
    throw err;
  }
  serving = true;
  const vmm = running?.ctx.vmm ?? web!.vmm;
  io.out(`${await vmm.info()}\n`);
  if (web) io.out(`web: ${web.url}\n`);
  const deadline = Number(io.env.VMPOOL_SHUTDOWN_DEADLINE_MS ?? 15_000);
  stopOnSignals(
    async (deadlineMs) => {
      await Promise.all([web?.stop(deadlineMs), running?.stop(deadlineMs)]);
    },
    logger,
    deadline,
  );
}
