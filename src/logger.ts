import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The vmpool logger: NDJSON on stdout by default, pretty-printed when NODE_ENV=development or
 * VMPOOL_LOG_PRETTY=1. LOG_LEVEL sets the level (default info; silent under vitest).
 */
export function createLogger(name = 'vmpool', env: NodeJS.ProcessEnv = process.env): Logger {
  const level = env.LOG_LEVEL ?? (env.VITEST ? 'silent' : 'info');
  const pretty = env.NODE_ENV === 'development' || env.VMPOOL_LOG_PRETTY === '1';
  return pino({
    name,
    level,
    ...(pretty ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {}),
  });
}
