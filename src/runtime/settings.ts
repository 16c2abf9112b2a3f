import { ConfigError, configSchema, loadConfig, parseConfig, redisConfigSchema, type Config, type ConfigIssue } from '../config/index.js';
import { embeddedConfig } from '../defaults.js';

/** Worker concurrency per process type, from `<TYPE>_CONCURRENCY`; a type not named runs `concurrency.<type>`. */
export type ConcurrencyOverrides = Partial<Record<keyof Config['concurrency'], number>>;

/**
 * What a vmpool process takes from its environment, read once by its entry (workers/*.ts, the web
 * process, the CLI, `vmpool start`) and handed on from there: nothing below reads these variables.
 * An empty variable counts as unset.
 */
export interface Settings {
  /** VMPOOL_CONFIG: the config file; without it (and without --config), the embedded default. */
  configPath?: string;
  /**
   * REDIS_URL: overrides redis.url (and the file's redis.cluster or redis.sentinel): redis://,
   * rediss://, redis+cluster://h1:p1,h2:p2 or redis+sentinel://h1:p1,h2:p2/mastername.
   */
  redisUrl?: string;
  /** PORT (foreman, honcho, Heroku give it to the web process): overrides web.port. */
  webPort?: number;
  /** HOST: overrides web.host. */
  webHost?: string;
  /** VMPOOL_PREFIX: overrides redis.prefix (same rule: letters, digits, . _ - { }). */
  prefix?: string;
  /** ACQUIRE_CONCURRENCY, SPAWN_CONCURRENCY, HEALTH_CONCURRENCY, TERMINATE_CONCURRENCY: override concurrency.<type>. */
  concurrency: ConcurrencyOverrides;
  /** VMPOOL_SHUTDOWN_DEADLINE_MS: how long a stopping process waits for its active jobs (default 15 s). */
  shutdownDeadlineMs: number;
  /**
   * VMPOOL_ACQUIRE_GRACE_MS: how long past a request's timeout `vmpool acquire` still waits for its
   * job, at most (default 60 s; the CLI waits less for a short timeout: cliAcquireGraceMs).
   */
  acquireGraceMs: number;
  /**
   * VMPOOL_FAULT, for tests only: a fault point (FAULT_POINTS) where the process kills itself with
   * SIGKILL, as a crash at that exact step would. Never set it in production.
   */
  faultPoint?: FaultPoint;
}

/**
 * Test-only crash points (VMPOOL_FAULT): the spawn processor SIGKILLs its own process there.
 * `spawn-after-hook`: the spawn hook succeeded and its machine was recorded, the VM is not in the
 * pool yet. `spawn-after-add`: the VM is in the pool, its first health job is not enqueued yet.
 */
export const FAULT_POINTS = ['spawn-after-hook', 'spawn-after-add'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

const CONCURRENCY_TYPES = Object.keys(configSchema.shape.concurrency.unwrap().shape) as (keyof Config['concurrency'])[];
const prefixSchema = redisConfigSchema.shape.prefix.unwrap();

/** Reads the settings from the environment; ConfigError naming each bad variable, its value and what was expected. */
export function readSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const issues: ConfigIssue[] = [];
  const value = (name: string): string | undefined => (env[name] === '' ? undefined : env[name]);
  const integer = (name: string, min: number, expected: string, max = Number.MAX_SAFE_INTEGER): number | undefined => {
    const text = value(name);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (Number.isInteger(n) && n >= min && n <= max) return n;
    issues.push({ path: name, expected, received: text });
    return undefined;
  };
  const prefix = value('VMPOOL_PREFIX');
  if (prefix !== undefined && !prefixSchema.safeParse(prefix).success) {
    issues.push({ path: 'VMPOOL_PREFIX', expected: 'letters, digits, and . _ - { } only', received: prefix });
  }
  const concurrency: ConcurrencyOverrides = {};
  for (const type of CONCURRENCY_TYPES) {
    const n = integer(`${type.toUpperCase()}_CONCURRENCY`, 1, 'a positive integer');
    if (n !== undefined) concurrency[type] = n;
  }
  const fault = value('VMPOOL_FAULT');
  if (fault !== undefined && !(FAULT_POINTS as readonly string[]).includes(fault)) {
    issues.push({ path: 'VMPOOL_FAULT', expected: `one of ${FAULT_POINTS.join(', ')} (tests only)`, received: fault });
  }
  const settings: Settings = {
    configPath: value('VMPOOL_CONFIG'),
    redisUrl: value('REDIS_URL'),
    webPort: integer('PORT', 0, 'a TCP port number (0-65535)', 65535),
    webHost: value('HOST'),
    prefix,
    concurrency,
    shutdownDeadlineMs: integer('VMPOOL_SHUTDOWN_DEADLINE_MS', 0, 'a whole number of milliseconds') ?? 15_000,
    acquireGraceMs: integer('VMPOOL_ACQUIRE_GRACE_MS', 0, 'a whole number of milliseconds') ?? 60_000,
  };
  if (fault !== undefined) settings.faultPoint = fault as FaultPoint;
  if (issues.length) {
    const lines = issues.map((i) => `  ${i.path}: got ${JSON.stringify(i.received)}, expected ${i.expected}`);
    throw new ConfigError(`invalid vmpool environment:\n${lines.join('\n')}`, issues);
  }
  return settings;
}

/**
 * The config of a process: the file named by --config or VMPOOL_CONFIG, else the embedded default;
 * REDIS_URL, PORT and HOST applied.
 */
export function resolveConfig(path: string | undefined, settings: Settings): { config: Config; source: string } {
  const file = path ?? settings.configPath;
  const env = {
    ...(settings.redisUrl === undefined ? {} : { REDIS_URL: settings.redisUrl }),
    // Only checked against the Redis (a Cluster needs a hash tag); the processes apply it themselves.
    ...(settings.prefix === undefined ? {} : { VMPOOL_PREFIX: settings.prefix }),
  };
  const resolved = file
    ? { config: loadConfig(file, env), source: file }
    : { config: parseConfig(embeddedConfig, env), source: 'embedded default (local provider)' };
  if (settings.webPort !== undefined) resolved.config.web.port = settings.webPort;
  if (settings.webHost !== undefined) resolved.config.web.host = settings.webHost;
  return resolved;
}
