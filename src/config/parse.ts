import { applyEnvironment } from './environment.js';
import { keptConfigValue, showConfigValue } from './redaction.js';
import { configSchema, type Config } from './schemas.js';

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
  /** The value that was given (a secret or an object's contents not kept: keptConfigValue), or undefined when the field is missing or unknown. */
  received: unknown;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

/** Configs that parseConfig returned: taken as they are by whoever needs a parsed Config. */
const parsedConfigs = new WeakSet<object>();

/** Whether the value is a Config as parseConfig returned it (validated, with defaults). */
export function isParsedConfig(value: unknown): value is Config {
  return typeof value === 'object' && value !== null && parsedConfigs.has(value);
}

/** What an unknown key's issue expects; its value is never shown, nor kept in the issue. */
const UNKNOWN_KEY = 'no such key (unknown option)';

function configError(issues: ConfigIssue[]): ConfigError {
  const lines = issues.map((i) =>
    i.expected === UNKNOWN_KEY ? `  ${i.path}: ${UNKNOWN_KEY}; its value is not shown` : `  ${i.path}: got ${showConfigValue(i.received, i.path.split('.'))}, expected ${i.expected}`,
  );
  return new ConfigError(`invalid vmpool config:\n${lines.join('\n')}`, issues);
}

/**
 * Validates a config object (as read from YAML) and fills in defaults.
 * REDIS_URL in the environment overrides `redis.url` (and the file's redis.cluster or redis.sentinel).
 * A Cluster needs a hash-tagged prefix (redis.prefix, or VMPOOL_PREFIX when set).
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
          // Never the value: a mistyped secret key (`passwd:`) holds a secret.
          issues.push({ path: path.join('.'), expected: UNKNOWN_KEY, received: undefined });
        }
        continue;
      }
      // zod says "Invalid input: expected number, received string"; the line already shows the value.
      const expected =
        issue.code === 'invalid_type'
          ? `${/^[aeiou]/.test(issue.expected) ? 'an' : 'a'} ${issue.expected}`
          : issue.message.replace(/^Invalid discriminator value\. Expected /, 'one of ').replace(/^[A-Za-z ]+: expected /, '');
      // The value as the message shows it: a secret or an object's contents are not kept in the error.
      issues.push({ path: issue.path.join('.') || '(root)', expected, received: keptConfigValue(valueAt(input, issue.path), issue.path) });
    }
    throw configError(issues);
  }
  parsedConfigs.add(result.data);
  const config = result.data;
  const issues = applyEnvironment(config, env);
  if (issues.length) throw configError(issues);
  return config;
}
