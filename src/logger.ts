import { pino, type Logger } from 'pino';
import { PinoPretty } from 'pino-pretty';

export type { Logger };

/** Whether to print human-readable lines: VMPOOL_LOG_PRETTY=1|0 decides, else NODE_ENV=development or a terminal on stdout. */
export function wantsPrettyLogs(env: NodeJS.ProcessEnv = process.env, stdoutIsTty = process.stdout.isTTY === true): boolean {
  if (env.VMPOOL_LOG_PRETTY === '1') return true;
  if (env.VMPOOL_LOG_PRETTY === '0') return false;
  return env.NODE_ENV === 'development' || stdoutIsTty;
}

/**
 * The vmpool logger: human-readable lines when stdout is a terminal (or NODE_ENV=development, or
 * VMPOOL_LOG_PRETTY=1), NDJSON otherwise (VMPOOL_LOG_PRETTY=0 forces it). LOG_LEVEL sets the level
 * (default info; silent under vitest). The pretty stream writes synchronously, in this thread, so the
 * last lines before an exit are not lost.
 */
export function createLogger(name = 'vmpool', env: NodeJS.ProcessEnv = process.env): Logger {
  const level = env.LOG_LEVEL ?? (env.VITEST ? 'silent' : 'info');
  const options = { name, level };
  if (!wantsPrettyLogs(env)) return pino(options);
  return pino(options, PinoPretty({ colorize: process.stdout.isTTY === true, sync: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
}
