import { createLogger, type Logger } from '../logger.js';
import type { Config } from '../config.js';
import { connectAnsweringRedis } from '../redis.js';
import { ensureRedisSafety } from '../redisSafety.js';
import { startProcessTypes, stopOnSignals, type ProcessTypeRegistry } from './boot.js';
import { readSettings, resolveConfig } from './settings.js';

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

/**
 * Checks Redis's settings once at start (src/redisSafety.ts): warnings, or with redis.require_safe
 * an exit with the reasons. A Redis that does not answer was caught by requireRedis before.
 */
export async function requireSafeRedis(config: Config, logger: Logger): Promise<void> {
  const redis = await connectAnsweringRedis(config.redis.url).catch(() => null);
  if (!redis) return;
  try {
    await ensureRedisSafety(redis, config.redis, logger);
  } catch (err) {
    const message = (err as Error).message;
    logger.fatal(message);
    process.stderr.write(`\n${message}\n`);
    process.exit(2);
  } finally {
    redis.disconnect();
  }
}

/** Entry of a worker process: config, Redis check, workers, graceful stop on SIGTERM/SIGINT. */
export async function runWorkerProcess<T extends string>(registry: ProcessTypeRegistry<T>, types: T[]): Promise<void> {
  const logger = createLogger(`vmpool-${types.join('+')}`);
  const settings = readSettings();
  const { config, source } = resolveConfig(undefined, settings);
  logger.info({ config: source, types }, 'starting');
  await requireRedis(config.redis.url, logger);
  await requireSafeRedis(config, logger);
  const running = await startProcessTypes(registry, types, config, { logger, prefix: settings.prefix, concurrency: settings.concurrency });
  stopOnSignals((deadline) => running.stop(deadline), logger, settings.shutdownDeadlineMs);
}
