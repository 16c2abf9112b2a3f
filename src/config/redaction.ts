import { redactUrl } from '../text/redact.js';
import type { Config } from './schemas.js';

/** Config paths whose values are secrets: tokens, provider environments, and URLs with passwords. */
export function isSecretPath(path: readonly PropertyKey[]): boolean {
  return path.some((k) => k === 'token' || k === 'env' || k === 'password');
}

/** A value at a config path, as an error message may show it: secrets hidden, long values cut. */
export function showConfigValue(value: unknown, path: readonly PropertyKey[] = []): string {
  if (value === undefined) return 'nothing';
  if (isSecretPath(path)) return '(a secret, not shown)';
  if (path[0] === 'redis' && path[1] === 'url' && typeof value === 'string') return JSON.stringify(redactUrl(value));
  // An object or array may hold secrets under any key (a token, an env, a mistyped `passwd`).
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object' && value !== null) return 'an object';
  try {
    const text = JSON.stringify(value);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
  } catch {
    return String(value);
  }
}

/**
 * A given value as a ConfigIssue keeps it: a secret path's value and the contents of an object or
 * array (which may hold a token or an env) are not kept, only what showConfigValue says of them.
 */
export function keptConfigValue(value: unknown, path: readonly PropertyKey[]): unknown {
  if (value === undefined) return undefined;
  if (isSecretPath(path)) return '(a secret, not shown)';
  if (Array.isArray(value)) return Array.from({ length: value.length }, () => null);
  if (typeof value === 'object' && value !== null) return {};
  return value;
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

/**
 * Values of a hook's or check's `env` shorter than this are settings (ports, flags, names), not
 * credentials: masking them would garble every line of output they occur in.
 */
export const ENV_SECRET_MIN_LENGTH = 8;

/** The password in a URL's user info, as written and decoded (empty when none). */
function urlPasswords(url: string): string[] {
  let raw: string;
  try {
    raw = new URL(url).password;
  } catch {
    // Not a URL (a cluster or sentinel URL with several hosts): the user info is up to the `@`,
    // and the password is all of it after the user name's `:`.
    const userinfo = url.match(/^(?:[^/]*\/\/)?([^@]*)@/)?.[1];
    const colon = userinfo?.indexOf(':') ?? -1;
    raw = colon === -1 ? '' : userinfo!.slice(colon + 1);
  }
  if (raw === '') return [];
  let decoded = raw;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    // Not percent-encoded text: as written.
  }
  return [...new Set([raw, decoded, encodeURIComponent(decoded)])];
}

/**
 * The config's secrets as text, for masking hook output: the Redis passwords (of the URL, which
 * REDIS_URL has already replaced, of the servers and of the sentinels), the web tokens, and of at
 * least ENV_SECRET_MIN_LENGTH characters: the values of every provider's, check's and account's
 * `env`, and the values in `environment` (vmpool's own) of the variables their `pass_env` names.
 */
export function configSecrets(config: Config, environment: NodeJS.ProcessEnv = process.env): string[] {
  const secrets = new Set<string>();
  const add = (value: string | null | undefined) => {
    if (value) secrets.add(value);
  };
  const addEnv = (env: Record<string, string> | undefined, passEnv: readonly string[] | undefined) => {
    for (const value of [...Object.values(env ?? {}), ...(passEnv ?? []).map((name) => environment[name])]) {
      if (value !== undefined && value.length >= ENV_SECRET_MIN_LENGTH) add(value);
    }
  };
  // The URL may carry the password percent-encoded, as it would be printed.
  for (const password of urlPasswords(config.redis.url)) add(password);
  add(config.redis.password);
  add(config.redis.sentinel?.password);
  add(config.web.auth.token);
  for (const t of config.web.auth.tokens) add(t.token);
  for (const g of config.groups) {
    for (const hooks of [g.provider, g.check] as { env?: Record<string, string>; pass_env?: string[] }[]) addEnv(hooks.env, hooks.pass_env);
  }
  for (const account of Object.values(config.accounts ?? {})) addEnv(account.env, account.pass_env);
  return [...secrets];
}
