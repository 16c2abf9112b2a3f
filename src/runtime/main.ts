import { loadConfig, parseConfig, type Config } from '../config.js';
import { embeddedConfig } from '../defaults.js';
import { createLogger, type Logger } from '../logger.js';
import { connectAnsweringRedis } from '../redis.js';
import { startProcessTypes, stopOnSignals, type ProcessTypeRegistry } from './boot.js';

/** The config of a process: the file named by --config or VMPOOL_CONFIG, else the embedded default. */
export function resolveConfig(path: string | undefined, env: NodeJS.ProcessEnv = process.env): { config: Config; source: string } {
  const file = path ?? env.VMPOOL_CONFIG;
  if (file) return { config: loadConfig(file, env), source: file };
  return { config: parseConfig(embeddedConfig, env), source: 'embedded default (local provider)' };
}

/** Pings Redis once with a short timeout; exits the process with a hint when it does not answer. */
export async function requireRedis(url: string, logger: Logger): Promise<void> {
  try {
    (await connectAnsweringRedis(url)).disconnect();
  } catch (err) {
    const hint = (err as Error).message;
    logger.fatal(hint);
    process.stderr.write(`\n${hint}\n`);
    process.exit(2);
  }
}

/** Entry of a worker process: config, Redis check, workers, graceful stop on SIGTERM/SIGINT. */
export async function runWorkerProcess<T extends string>(registry: ProcessTypeRegistry<T>, types: T[], configPath?: string): Promise<void> {
  const logger = createLogger(`vmpool-${types.join('+')}`);
  const { config, source } = resolveConfig(configPath);
  logger.info({ config: source, types }, 'starting');
  await requireRedis(config.redis.url, logger);
  const running = await startProcessTypes(registry, types, config, { logger });
  stopOnSignals((deadline) => running.stop(deadline), logger, Number(process.env.VMPOOL_SHUTDOWN_DEADLINE_MS ?? 15_000));
}
