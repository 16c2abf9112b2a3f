import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

/** Raised when a config file or object does not validate. The message names every bad field. */
export class ConfigError extends Error {
  constructor(
    message: string,
    readonly issues: readonly ConfigIssue[] = [],
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

export interface ConfigIssue {
  /** Dotted path of the field, such as `groups.0.max_vm_total`. */
  path: string;
  /** What was expected, in words. */
  expected: string;
  /** The value that was given, or undefined when the field is missing. */
  received: unknown;
}

const seconds = (fallback: number) => z.number().nonnegative().default(fallback);
const positiveInt = (fallback: number) => z.number().int().positive().default(fallback);

/** One build group, as Copr's `build_groups`. Defaults are Copr's. */
export const groupConfigSchema = z.strictObject({
  name: z.string().min(1),
  archs: z.array(z.string().min(1)).default([]),
  max_vm_total: positiveInt(8),
  max_vm_per_user: positiveInt(4),
  max_spawn_processes: positiveInt(2),
  vm_spawn_min_interval: seconds(30),
  vm_dirty_terminating_timeout: seconds(120),
  vm_health_check_period: seconds(120),
  vm_health_check_max_time: seconds(300),
  vm_max_check_fails: z.number().int().nonnegative().default(2),
  vm_terminating_timeout: seconds(600),
  // Beyond Copr: warm pool, reuse limits, leases (job system).
  /** Clean ready VMs to keep waiting for builders. */
  min_ready: z.number().int().nonnegative().default(0),
  /** Retire a dirty VM after this many builds (0: no limit). */
  reuse_max_count: z.number().int().nonnegative().default(0),
  /** Retire a dirty VM this many seconds after its first acquisition by its owner and sandbox (0: no limit). */
  reuse_max_time: seconds(0),
  /** Seconds an assignment lives without a renew. */
  lease_timeout: z.number().positive().default(300),
  /** What happens to a VM whose lease lapsed: its state is unknown, so it is terminated by default. */
  on_lease_expiry: z.enum(['terminate', 'release']).default('terminate'),
  /** Seconds a health check (connect and command) may take. */
  vm_ssh_check_timeout: z.number().positive().default(5),
});

export const redisConfigSchema = z.strictObject({
  url: z.string().min(1).default('redis://127.0.0.1:6379'),
  prefix: z
    .string()
    .regex(/^[A-Za-z0-9_.{}-]+$/, 'letters, digits, and . _ - { } only')
    .default('vmpool'),
});

export const configSchema = z.strictObject({
  redis: redisConfigSchema.default({ url: 'redis://127.0.0.1:6379', prefix: 'vmpool' }),
  vm_cycle_timeout: z.number().positive().default(10),
  /** Worker concurrency per process type; <TYPE>_CONCURRENCY in the environment overrides. */
  concurrency: z
    .strictObject({
      acquire: positiveInt(50),
      spawn: positiveInt(4),
      health: positiveInt(20),
      terminate: positiveInt(4),
    })
    .default({ acquire: 50, spawn: 4, health: 20, terminate: 4 }),
  groups: z
    .array(groupConfigSchema)
    .min(1)
    .superRefine((groups, ctx) => {
      const seen = new Set<string>();
      groups.forEach((g, i) => {
        if (seen.has(g.name)) {
          ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `a unique group name (duplicate "${g.name}")` });
        }
        seen.add(g.name);
      });
    }),
});

export type GroupConfig = z.output<typeof groupConfigSchema>;
export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  try {
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  } catch {
    return String(value);
  }
}

/**
 * Validates a config object (as read from YAML) and fills in defaults.
 * REDIS_URL in the environment overrides `redis.url`.
 * Throws ConfigError naming each bad field, the value given and what was expected.
 */
export function parseConfig(input: unknown, env: NodeJS.ProcessEnv = process.env): Config {
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const issues: ConfigIssue[] = [];
    for (const issue of result.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) {
          const path = [...issue.path, key];
          issues.push({ path: path.join('.'), expected: 'no such key (unknown option)', received: valueAt(input, path) });
        }
        continue;
      }
      issues.push({ path: issue.path.join('.') || '(root)', expected: issue.message, received: valueAt(input, issue.path) });
    }
    const lines = issues.map((i) => `  ${i.path}: got ${show(i.received)}, expected ${i.expected}`);
    throw new ConfigError(`invalid vmpool config:\n${lines.join('\n')}`, issues);
  }
  const config = result.data;
  if (env.REDIS_URL) config.redis.url = env.REDIS_URL;
  return config;
}

/** Reads a YAML config file and validates it with parseConfig. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  try {
    return parseConfig(data, env);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.message.replace('invalid vmpool config', `invalid vmpool config in ${path}`), err.issues);
    throw err;
  }
}
