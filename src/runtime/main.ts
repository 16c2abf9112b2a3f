import { ExitCodes } from '../cli/exitCodes.js';
import { ConfigError, type Config } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { connectAnsweringRedis, describeRedis, type RedisTarget } from '../redis.js';
import { ensureRedisSafety } from '../redisSafety.js';
import { DataFormatTooNew } from '../pool/dataFormat.js';
import { startProcessTypes, stopOnSignals, type ProcessTypeRegistry } from './boot.js';
import { readSettings, resolveConfig, type Settings } from './settings.js';

/**
 * Ends a process that cannot run: the log says what failed (summary), stderr says it whole, with
 * what to do (message), once.
 */
export function exitFatal(logger: Logger, summary: string, message: string, code: number): never {
  logger.fatal(summary);
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

/**
 * Pings Redis once with a short timeout; exits the process when it does not answer (exit code 1,
 * as every vmpool command: src/cli/exitCodes.ts). The hint goes to stderr once; the log says what failed.
 */
export async function requireRedis(target: RedisTarget, logger: Logger): Promise<void> {
  try {
    (await connectAnsweringRedis(target)).disconnect();
  } catch (err) {
    exitFatal(logger, `Redis is not reachable at ${describeRedis(target)}; exiting`, `\n${(err as Error).message}`, ExitCodes.ERROR);
  }
}

/**
 * Checks Redis's settings once at start (src/redisSafety.ts): warnings, or with redis.require_safe
 * an exit with the reasons. A Redis that does not answer was caught by requireRedis before.
 */
export async function requireSafeRedis(config: Config, logger: Logger): Promise<void> {
  const redis = await connectAnsweringRedis(config.redis).catch(() => null);
  if (!redis) return;
  try {
    await ensureRedisSafety(redis, config.redis, logger);
  } catch (err) {
    exitFatal(logger, 'Redis is not safe for vmpool (redis.require_safe); exiting', `\n${(err as Error).message}`, ExitCodes.USAGE);
  } finally {
    redis.disconnect();
  }
}

/** A bad argument of a process entry (workers/*.ts). */
export class EntryUsageError extends Error {
  override name = 'EntryUsageError';
}

/**
 * The arguments of a process entry (workers/*.ts): `--config FILE` (or `--config=FILE`, `-c FILE`),
 * at most once. Anything else is an EntryUsageError.
 */
export function parseEntryArgs(argv: readonly string[]): { configPath?: string } {
  let configPath: string | undefined;
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i]!;
    let value: string | undefined;
    if (arg === '--config' || arg === '-c') {
      value = argv[i + 1];
      i += 1;
      if (value === undefined || value === '') throw new EntryUsageError(`${arg} needs a file`);
    } else if (arg.startsWith('--config=')) {
      value = arg.slice('--config='.length);
      if (value === '') throw new EntryUsageError('--config needs a file');
    } else {
      throw new EntryUsageError(`unknown argument ${JSON.stringify(arg)} (only --config FILE is taken)`);
    }
    if (configPath !== undefined) throw new EntryUsageError('--config given twice');
    configPath = value;
  }
  return configPath === undefined ? {} : { configPath };
}

/**
 * What a process entry starts from: its arguments (parseEntryArgs), its settings (the environment)
 * and its config. A usage, environment or config error ends the process with exit 2 and the message.
 */
export function prepareProcess(
  entry: string,
  argv: readonly string[],
  logger: Logger,
  configPath?: string,
): { settings: Settings; config: Config; source: string } {
  try {
    const args = parseEntryArgs(argv);
    const settings = readSettings();
    return { settings, ...resolveConfig(configPath ?? args.configPath, settings) };
  } catch (err) {
    if (!(err instanceof EntryUsageError || err instanceof ConfigError)) throw err;
    const usage = err instanceof EntryUsageError ? `\nusage: ${entry} [--config FILE]` : '';
    const what = err instanceof EntryUsageError ? 'usage error' : 'config error';
    exitFatal(logger, `${what}; exiting`, `${entry}: ${(err as Error).message}${usage}`, ExitCodes.USAGE);
  }
}

/** Entry of a worker process: arguments, config, Redis check, workers, graceful stop on SIGTERM/SIGINT. */
export async function runWorkerProcess<T extends string>(registry: ProcessTypeRegistry<T>, types: T[], argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  const logger = createLogger(`vmpool-${types.join('+')}`);
  const { settings, config, source } = prepareProcess(`workers/${types.join('+')}.js`, argv, logger);
  logger.info({ config: source, types }, 'starting');
  await requireRedis(config.redis, logger);
  await requireSafeRedis(config, logger);
  const running = await startProcessTypes(registry, types, config, {
    logger,
    prefix: settings.prefix,
    concurrency: settings.concurrency,
    faultPoint: settings.faultPoint,
    // The pool moved to a newer data format under this running process: it stopped its workers.
    onRefused: (err) => exitFatal(logger, 'data format too new; exiting', `\n${err.message}`, ExitCodes.ERROR),
  }).catch((err: unknown) => {
    if (err instanceof DataFormatTooNew) exitFatal(logger, `data format too new (version ${err.needed}, this process knows up to ${err.known}); exiting`, `\n${err.message}`, ExitCodes.ERROR);
    throw err;
  });
  stopOnSignals((deadline) => running.stop(deadline), logger, settings.shutdownDeadlineMs);
}
