/**
 * Where vmpool's Redis is: one server (a redis:// or rediss:// URL), a Redis Cluster, or a master
 * found through Redis Sentinel. Given by the config's redis section (`url`, or `cluster`, or
 * `sentinel`) or by one URL, as REDIS_URL gives it:
 *
 *   redis+cluster://[user:password@]host:port,host:port[/]
 *   redis+sentinel://[user:password@]host:port,host:port/mastername
 *
 * (`rediss+cluster://` and `rediss+sentinel://` with TLS). This module only parses; src/redis.ts
 * makes the connections. Problems are returned as words, for ConfigError (src/config.ts).
 */

export interface HostPort {
  host: string;
  port: number;
}

/** TLS for the connections: `true` (the system's CAs) or a CA file and options. */
export type RedisTlsConfig = boolean | { ca?: string; servername?: string; reject_unauthorized?: boolean };

/** The connection part of the config's redis section (all but `url` optional). */
export interface RedisEndpointConfig {
  url: string;
  /** Cluster: some of its nodes (`host:port`); the client learns the rest. */
  cluster?: string[];
  /** Sentinel: the master's name and some sentinels (`host:port`). */
  sentinel?: { name: string; sentinels: string[]; username?: string; password?: string };
  /** Credentials of the data nodes (a URL's user info wins). */
  username?: string;
  password?: string;
  tls?: RedisTlsConfig;
}

/** Anything a connection can be made from: a URL or the config's redis section. */
export type RedisTarget = string | RedisEndpointConfig;

interface Credentials {
  username?: string;
  password?: string;
  tls?: RedisTlsConfig;
}

export type RedisEndpoint =
  | ({ kind: 'single'; url: string } & Credentials)
  | ({ kind: 'cluster'; nodes: HostPort[] } & Credentials)
  | ({ kind: 'sentinel'; name: string; sentinels: HostPort[]; sentinelUsername?: string; sentinelPassword?: string } & Credentials);

const MULTI_HOST_URL = /^(rediss?)\+(cluster|sentinel):\/\/(?:([^@/]*)@)?([^/?#]*)(?:\/([^?#]*))?([?#].*)?$/;

/** `host:port` or `[v6]:port`; the port defaults as given. Null when it does not parse. */
export function parseHostPort(text: string, defaultPort: number): HostPort | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{1,5}))?$/.exec(text.trim());
  if (!m) return null;
  const port = m[3] === undefined ? defaultPort : Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { host: m[1] ?? m[2]!, port };
}

/** Whether a URL is one of the multi-host forms (cluster or sentinel). */
export function isMultiHostUrl(url: string): boolean {
  return /^rediss?\+(cluster|sentinel):/.test(url);
}

function decode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function hostList(list: readonly string[], defaultPort: number, what: string): HostPort[] | string {
  if (list.length === 0) return `at least one ${what} (host:port)`;
  const out: HostPort[] = [];
  for (const item of list) {
    const hp = parseHostPort(item, defaultPort);
    // An `@` in a host is the rest of a password that holds an unescaped `@`: never shown.
    if (!hp) return item.includes('@') ? `${what}s as host:port (an @ in the password must be written %40)` : `${what}s as host:port, got ${JSON.stringify(item)}`;
    out.push(hp);
  }
  return out;
}

/** Parses a redis+cluster:// or redis+sentinel:// URL; a string says what is wrong with it. */
function parseMultiHostUrl(url: string): RedisEndpoint | string {
  const m = MULTI_HOST_URL.exec(url);
  if (!m) return 'redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/mastername';
  const [, scheme, kind, userinfo, hosts, path, query] = m;
  if (query) return `no query or fragment in a ${kind} URL (give other options in the config file's redis section)`;
  const creds: Credentials = {};
  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(':');
    const user = decode(colon < 0 ? userinfo : userinfo.slice(0, colon));
    if (user !== '') creds.username = user;
    if (colon >= 0) creds.password = decode(userinfo.slice(colon + 1));
  }
  if (scheme === 'rediss') creds.tls = true;
  const list = hosts!.split(',').filter((h) => h !== '');
  if (kind === 'cluster') {
    if (path) return 'a cluster URL without a path (a Cluster has no databases)';
    const nodes = hostList(list, 6379, 'cluster node');
    return typeof nodes === 'string' ? nodes : { kind: 'cluster', nodes, ...creds };
  }
  const sentinels = hostList(list, 26379, 'sentinel');
  if (typeof sentinels === 'string') return sentinels;
  const name = decode(path ?? '');
  if (!name) return 'the master name as the path: redis+sentinel://host:port,host:port/mastername';
  return { kind: 'sentinel', name, sentinels, ...creds };
}

/**
 * Where a target points, or a string saying what is wrong. In a config section `cluster` or
 * `sentinel` wins over `url`; src/config.ts drops them when REDIS_URL overrides the URL.
 */
export function parseRedisEndpoint(target: RedisTarget): RedisEndpoint | string {
  const config: RedisEndpointConfig = typeof target === 'string' ? { url: target } : target;
  const given: Credentials = {};
  if (config.username !== undefined) given.username = config.username;
  if (config.password !== undefined) given.password = config.password;
  if (config.tls !== undefined && config.tls !== false) given.tls = config.tls;
  if (config.cluster && config.sentinel) return 'either redis.cluster or redis.sentinel, not both';
  if (config.cluster) {
    const nodes = hostList(config.cluster, 6379, 'cluster node');
    return typeof nodes === 'string' ? nodes : { kind: 'cluster', nodes, ...given };
  }
  if (config.sentinel) {
    const sentinels = hostList(config.sentinel.sentinels, 26379, 'sentinel');
    if (typeof sentinels === 'string') return sentinels;
    const s = config.sentinel;
    return {
      kind: 'sentinel',
      name: s.name,
      sentinels,
      ...given,
      ...(s.username !== undefined ? { sentinelUsername: s.username } : {}),
      ...(s.password !== undefined ? { sentinelPassword: s.password } : {}),
    };
  }
  if (isMultiHostUrl(config.url)) {
    const parsed = parseMultiHostUrl(config.url);
    // The URL's own credentials and TLS win over the section's.
    return typeof parsed === 'string' ? parsed : ({ ...given, ...parsed } as RedisEndpoint);
  }
  return { kind: 'single', url: config.url, ...given };
}

/** The endpoint, or an Error that says what is wrong (for callers outside config parsing). */
export function redisEndpoint(target: RedisTarget): RedisEndpoint {
  const parsed = parseRedisEndpoint(target);
  if (typeof parsed === 'string') throw new Error(`invalid Redis address: expected ${parsed}`);
  return parsed;
}

/** How an endpoint is shown in logs and messages: no password, ever. */
export function describeEndpoint(endpoint: RedisEndpoint): string {
  const tls = endpoint.tls ? 's' : '';
  const user = endpoint.username !== undefined || endpoint.password !== undefined ? `${encodeURIComponent(endpoint.username ?? '')}${endpoint.password !== undefined ? ':***' : ''}@` : '';
  const list = (hosts: HostPort[]) => hosts.map((h) => (h.host.includes(':') ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`)).join(',');
  switch (endpoint.kind) {
    case 'cluster':
      return `redis${tls}+cluster://${user}${list(endpoint.nodes)}`;
    case 'sentinel':
      return `redis${tls}+sentinel://${user}${list(endpoint.sentinels)}/${encodeURIComponent(endpoint.name)}`;
    default:
      return endpoint.url;
  }
}

/**
 * The hash tag of a key prefix as Redis Cluster reads it: the text between the first `{` and the
 * first `}` after it, when not empty. BullMQ's keys (`<prefix>:<queue>:...`) and the pool's
 * (`<prefix>:...`) then all hash to that tag's slot, as their scripts need on a Cluster.
 */
export function prefixHashTag(prefix: string): string | null {
  const open = prefix.indexOf('{');
  if (open < 0) return null;
  const close = prefix.indexOf('}', open + 1);
  return close > open + 1 ? prefix.slice(open + 1, close) : null;
}

/** A tagged prefix close to an untagged one, to suggest: `vmpool` -> `{vmpool}`. */
export function taggedPrefix(prefix: string): string {
  const bare = prefix.replace(/[{}]/g, '');
  return `{${bare || 'vmpool'}}`;
}

/** Why a prefix cannot be used on a Cluster, with a fixed one; null when it can. */
export function clusterPrefixProblem(prefix: string): string | null {
  if (prefixHashTag(prefix) !== null) return null;
  return (
    `a prefix with a hash tag on a Redis Cluster, such as ${JSON.stringify(taggedPrefix(prefix))}: ` +
    "BullMQ's scripts and the pool's scripts touch many keys at once, and a Cluster runs a script only " +
    'when all its keys hash to one slot, which the tag in {braces} ensures'
  );
}
