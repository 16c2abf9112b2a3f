import { redactUrl } from '../text/redact.js';
import type { Config } from './schemas.js';

/** Config paths whose values are secrets: tokens, provider environments, and URLs with passwords. */
function isSecretPath(path: readonly PropertyKey[]): boolean {
  return path.some((k) => k === 'token' || k === 'env' || k === 'password');
}

/** A value at a config path, as an error message may show it: secrets hidden, long values cut. */
export function showConfigValue(value: unknown, path: readonly PropertyKey[] = []): string {
  if (value === undefined) return 'nothing';
  if (isSecretPath(path)) return '(a secret, not shown)';
  if (path[0] === 'redis' && path[1] === 'url' && typeof value === 'string') return JSON.stringify(redactUrl(value));
  try {
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  } catch {
    return String(value);
  }
}

/**
 * A copy of a config that may be printed: tokens and provider environment values replaced by
 * `***`, the Redis URL's password masked.
 */
export function redactedConfig(config: Config): Config {
  const copy = structuredClone(config);
  copy.redis.url = redactUrl(copy.redis.url);
  if (copy.redis.password !== undefined) copy.redis.password = '***';
  if (copy.redis.sentinel?.password !== undefined) copy.redis.sentinel.password = '***';
  if (copy.web.auth.token !== undefined) copy.web.auth.token = '***';
  for (const t of copy.web.auth.tokens) t.token = '***';
  for (const g of copy.groups) {
    const provider = g.provider as { env?: Record<string, string> };
    if (provider.env) for (const k of Object.keys(provider.env)) provider.env[k] = '***';
    const check = g.check as { env?: Record<string, string> };
    if (check.env) for (const k of Object.keys(check.env)) check.env[k] = '***';
  }
  return copy;
}
