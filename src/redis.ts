import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions as TlsOptions } from 'node:tls';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { ConfigError } from './config/index.js';
import { isLoopbackHost } from './loopback.js';
import {
  clusterPrefixProblem,
  describeEndpoint,
  parseRedisEndpoint,
  type RedisEndpoint,
  type RedisTarget,
  type RedisTlsConfig,
} from './redisEndpoint.js';
import { redactUrl } from './text/redact.js';

export type { RedisTarget } from './redisEndpoint.js';

/**
 * A connection vmpool works on: one Redis (a server, or a master found through Sentinel) or a
 * Redis Cluster. Everything that takes a connection takes either.
 */
export type RedisConnection = Redis | Cluster;

/** Whether a connection is a Cluster client. */
export function isCluster(redis: RedisConnection): redis is Cluster {
  return (redis as { isCluster?: boolean }).isCluster === true;
}

/**
 * Delay before the next reconnect attempt. ioredis 6's default backoff grows to 5 s, so after Redis
 * came back a worker could stay idle that long, and its close() waited for it. Capped at 1 s.
 */
export function reconnectDelay(attempt: number): number {
  return Math.min(50 * 2 ** (attempt - 1), 1_000) + Math.floor(Math.random() * 100);
}

/** The endpoint of a target, or ConfigError saying what is wrong with it. */
export function endpointOf(target: RedisTarget): RedisEndpoint {
  const parsed = parseRedisEndpoint(target);
  if (typeof parsed !== 'string') return parsed;
  const url = typeof target === 'string' ? target : target.url;
  throw new ConfigError(`invalid Redis address ${JSON.stringify(redactUrl(url))}: expected ${parsed}`, [
    { path: 'redis.url', expected: parsed, received: redactUrl(url) },
  ]);
}

/** Where a target points, as logs and messages may show it (no password). */
export function describeRedis(target: RedisTarget): string {
  const parsed = parseRedisEndpoint(target);
  if (typeof parsed === 'string') return redactUrl(typeof target === 'string' ? target : target.url);
  return parsed.kind === 'single' ? redactUrl(parsed.url) : describeEndpoint(parsed);
}

/** Whether a target is a Redis Cluster (so that its prefix needs a hash tag). */
export function targetIsCluster(target: RedisTarget): boolean {
  const parsed = parseRedisEndpoint(target);
  return typeof parsed !== 'string' && parsed.kind === 'cluster';
}

/**
 * Refuses a prefix without a hash tag on a Cluster, with a ConfigError that says why and shows a
 * tagged one. Called wherever a prefix meets a connection (VmManager, VmPoolClient, processes).
 */
export function assertPrefixFits(redis: RedisConnection | RedisTarget, prefix: string): void {
  const cluster = isConnection(redis) ? isCluster(redis) : targetIsCluster(redis);
  if (!cluster) return;
  const problem = clusterPrefixProblem(prefix);
  if (problem) {
    throw new ConfigError(`invalid vmpool config:\n  redis.prefix: got ${JSON.stringify(prefix)}, expected ${problem}`, [
      { path: 'redis.prefix', expected: problem, received: prefix },
    ]);
  }
}

function tlsOptions(tls: RedisTlsConfig | undefined): TlsOptions | undefined {
  if (tls === undefined || tls === false) return undefined;
  if (tls === true) return {};
  return {
    ...(tls.ca !== undefined ? { ca: readFileSync(tls.ca) } : {}),
    ...(tls.servername !== undefined ? { servername: tls.servername } : {}),
    ...(tls.reject_unauthorized !== undefined ? { rejectUnauthorized: tls.reject_unauthorized } : {}),
  };
}

/**
 * After a Sentinel failover the old master becomes a replica and answers writes with READONLY
 * until the client moves: reconnecting asks the sentinels for the new master, and the command
 * (not run by the replica) is sent again there.
 */
export function reconnectOnReadonly(err: Error): 2 | false {
  return err.message.startsWith('READONLY') ? 2 : false;
}

/**
 * A connection to a target with the given options (those of one Redis: for a Cluster they apply to
 * its node connections, and retryStrategy to the cluster's reconnects). Sentinel connections detect
 * a failover from the sentinels' +switch-master (failoverDetector) and on READONLY.
 */
export function connectTo(target: RedisTarget, options: RedisOptions = {}): RedisConnection {
  const endpoint = endpointOf(target);
  const tls = tlsOptions(endpoint.tls);
  const auth: RedisOptions = {
    ...(endpoint.username !== undefined ? { username: endpoint.username } : {}),
    ...(endpoint.password !== undefined ? { password: endpoint.password } : {}),
    ...(tls ? { tls } : {}),
  };
  switch (endpoint.kind) {
    case 'single':
      // The URL's own user info and TLS (rediss://) win over the config's.
      return new Redis(endpoint.url, { ...options, ...auth, ...urlOwn(endpoint.url) });
    case 'sentinel':
      return new Redis({
        ...options,
        ...auth,
        sentinels: endpoint.sentinels,
        name: endpoint.name,
        ...(endpoint.sentinelUsername !== undefined ? { sentinelUsername: endpoint.sentinelUsername } : {}),
        ...(endpoint.sentinelPassword !== undefined ? { sentinelPassword: endpoint.sentinelPassword } : {}),
        ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
        failoverDetector: true,
        reconnectOnError: options.reconnectOnError ?? reconnectOnReadonly,
        // All sentinels away: retried as the master is (by default ioredis retries every 10 s at most).
        ...(options.retryStrategy !== undefined ? { sentinelRetryStrategy: options.retryStrategy ?? undefined } : {}),
      });
    case 'cluster': {
      const { retryStrategy, lazyConnect, enableOfflineQueue, ...nodeOptions } = options;
      const clusterOptions: ClusterOptions = {
        redisOptions: { ...nodeOptions, ...auth },
        ...(lazyConnect !== undefined ? { lazyConnect } : {}),
        ...(enableOfflineQueue !== undefined ? { enableOfflineQueue } : {}),
        ...(retryStrategy !== undefined ? { clusterRetryStrategy: retryStrategy } : {}),
      };
      return new Cluster(endpoint.nodes, clusterOptions);
    }
  }
}

/** Options a single-server URL sets itself, which the config's must not override. */
function urlOwn(url: string): RedisOptions {
  try {
    const parsed = new URL(url);
    return {
      ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
      ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
    };
  } catch {
    return {};
  }
}

/**
 * Connection for producers and the pool: commands fail after a short retry instead of hanging
 * while Redis is away.
 */
export function createProducerConnection(target: RedisTarget, extra: RedisOptions = {}): RedisConnection {
  return connectTo(target, { maxRetriesPerRequest: 2, connectTimeout: 5_000, retryStrategy: reconnectDelay, ...extra });
}

/**
 * Connection for BullMQ workers: blocking commands must retry forever (maxRetriesPerRequest: null).
 * BullMQ duplicates it for its blocking connection; see endOnDisconnect.
 */
export function createWorkerConnection(target: RedisTarget, extra: RedisOptions = {}): RedisConnection {
  return endOnDisconnect(connectTo(target, { maxRetriesPerRequest: null, connectTimeout: 5_000, retryStrategy: reconnectDelay, ...extra }));
}

/**
 * Makes disconnect() end a client that is waiting to reconnect, and does the same for its
 * duplicates. ioredis then only clears its retry timer: with no socket, 'end' never comes and
 * pending commands never settle. BullMQ's Worker.close() disconnects its blocking connection and
 * waits for 'end', so a worker stopped in that state never finished closing. ioredis ends a client
 * in 'wait' (never connected) at once, so a socketless 'reconnecting' one is ended that way.
 */
export function endOnDisconnect<C extends RedisConnection>(redis: C): C {
  // A Cluster has the same flaw: with no node left, its reset() never emits the 'drain' that ends it.
  const client = redis as unknown as { status: string; disconnect(reconnect?: boolean): void; duplicate(...args: unknown[]): RedisConnection };
  const disconnect = client.disconnect.bind(redis);
  client.disconnect = (reconnect = false) => {
    if (!reconnect && client.status === 'reconnecting') client.status = 'wait';
    disconnect(reconnect);
  };
  const duplicate = client.duplicate.bind(redis);
  // BullMQ calls Cluster.duplicate(nodes, options) and Redis.duplicate(options): all arguments pass.
  client.duplicate = (...args: unknown[]) => endOnDisconnect(duplicate(...args));
  return redis;
}

/** Whether the redis-server binary is installed (for the hint below). */
export function haveRedisServer(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Where a Redis URL points: whether its host is this machine (loopback, or a URL that does not
 * parse as one, such as a Unix socket path), and its port.
 */
export function redisUrlTarget(url: string): { loopback: boolean; port: number } {
  try {
    const parsed = new URL(url);
    return { loopback: parsed.hostname === '' || isLoopbackHost(parsed.hostname), port: Number(parsed.port || 6379) };
  } catch {
    return { loopback: true, port: 6379 };
  }
}

/**
 * Why Redis cannot be reached, and how to fix it, in one message for operators. Starting a local
 * server is suggested only when the URL points at this machine.
 */
export function redisUnreachableHint(url: string, haveRedisServer: boolean): string {
  const shown = redactUrl(url);
  const { loopback, port } = redisUrlTarget(url);
  if (!loopback) {
    return (
      `Redis is not reachable at ${shown}. Check that Redis runs there and that this machine can reach it ` +
      '(address, firewall, password, TLS with rediss://), or set REDIS_URL to a Redis that runs.'
    );
  }
  const portArg = port === 6379 ? '' : ` --port ${port}`;
  const start = haveRedisServer
    ? `start it with \`redis-server --daemonize yes${portArg}\` (the binary is installed)`
    : 'install and start Redis (for example `apt-get install redis-server`)';
  return `Redis is not reachable at ${shown}. Either ${start}, or set REDIS_URL to a Redis that runs (for example REDIS_URL=redis://host:6379).`;
}

/** Redis did not answer; the message says how to fix it (redisUnreachableHint). */
export class RedisUnreachable extends Error {
  /** Where Redis was looked for, with its password masked: the error may be logged whole. */
  readonly url: string;

  constructor(target: RedisTarget) {
    const parsed = parseRedisEndpoint(target);
    const single = typeof parsed === 'string' ? (typeof target === 'string' ? target : target.url) : parsed.kind === 'single' ? parsed.url : null;
    super(
      single !== null
        ? redisUnreachableHint(single, redisUrlTarget(single).loopback && haveRedisServer())
        : `Redis is not reachable at ${describeRedis(target)}. Check that the ${(parsed as RedisEndpoint).kind === 'cluster' ? 'Cluster nodes' : 'sentinels and the master they name'} run there and that this machine can reach them (address, firewall, password, TLS), or set REDIS_URL to a Redis that runs.`,
    );
    this.url = describeRedis(target);
    this.name = 'RedisUnreachable';
  }
}

/**
 * A connection that answered a PING, for commands and start-up checks: one connect attempt (3 s)
 * and no reconnects, so an unreachable Redis fails fast with RedisUnreachable instead of hanging.
 * A bad address is a ConfigError.
 */
export async function connectAnsweringRedis(target: RedisTarget): Promise<RedisConnection> {
  const redis = createProducerConnection(target, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 3_000, retryStrategy: () => null });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    await redis.ping();
    return redis;
  } catch {
    redis.disconnect();
    throw new RedisUnreachable(target);
  }
}

/** How many replicas must have a write before it is answered (redis.wait_replicas), and how long to wait. */
export interface ReplicaWait {
  replicas: number;
  timeoutMs: number;
}

/** The replica wait a config asks for, or undefined (the default: none). */
export function replicaWaitOf(redis: { wait_replicas?: number; wait_timeout?: number }): ReplicaWait | undefined {
  if (redis.wait_replicas === undefined) return undefined;
  return { replicas: redis.wait_replicas, timeoutMs: Math.round((redis.wait_timeout ?? 0.5) * 1000) };
}

/**
 * A write reached the master but fewer replicas than redis.wait_replicas within wait_timeout: a
 * failover now could lose it, so it is not reported as done. The write itself stays on the master.
 */
export class WriteNotReplicated extends Error {
  constructor(
    readonly replicas: number,
    readonly wanted: number,
  ) {
    super(`the write reached ${replicas} of the ${wanted} replicas redis.wait_replicas asks for in time; a failover could lose it`);
    this.name = 'WriteNotReplicated';
  }
}

/**
 * Waits (Redis WAIT) until the replicas have every write this connection made, or the timeout;
 * WriteNotReplicated when too few did. On a Cluster WAIT goes to the node of the prefix's slot, where
 * the pool's writes went, in one pipeline with a command on that slot.
 */
export async function waitForReplicas(redis: RedisConnection, prefix: string, wait: ReplicaWait): Promise<void> {
  let acked: number;
  if (isCluster(redis)) {
    const replies = await redis.pipeline().exists(prefix).call('WAIT', wait.replicas, wait.timeoutMs).exec();
    const [err, value] = replies?.[1] ?? [new Error('no reply to WAIT'), 0];
    if (err) throw err;
    acked = Number(value);
  } else {
    acked = Number(await redis.call('WAIT', wait.replicas, wait.timeoutMs));
  }
  if (acked < wait.replicas) throw new WriteNotReplicated(acked, wait.replicas);
}

/**
 * Another connection to the same Redis with some options changed: Redis.duplicate(options), or for a
 * Cluster duplicate(nodes, options) with the node options under redisOptions.
 */
export function duplicateConnection(redis: RedisConnection, options: RedisOptions = {}): RedisConnection {
  if (isCluster(redis)) {
    const { lazyConnect, ...nodeOptions } = options;
    return redis.duplicate([], {
      ...(lazyConnect !== undefined ? { lazyConnect } : {}),
      redisOptions: { ...redis.options.redisOptions, ...nodeOptions },
    });
  }
  return redis.duplicate(options);
}

/**
 * A template for BullMQ's blocking connections (QueueEvents, Worker): BullMQ refuses one with a
 * retry limit. The template itself never connects (lazyConnect). For a Cluster it keeps the startup
 * nodes (built from the client's `options`, it would point at 127.0.0.1:6379).
 */
export function blockingConnectionTemplate(redis: RedisConnection): RedisConnection {
  return duplicateConnection(redis, { maxRetriesPerRequest: null, lazyConnect: true });
}

/**
 * A connection given as an ioredis instance (shared: the caller closes it) or as a URL or config
 * section (owned: a producer connection that the holder closes).
 */
export function producerConnectionFrom(redis: RedisConnection | RedisTarget): { redis: RedisConnection; owned: boolean } {
  return isConnection(redis) ? { redis, owned: false } : { redis: createProducerConnection(redis), owned: true };
}

/** Whether a value is an ioredis client (Redis or Cluster) rather than an address. */
export function isConnection(value: RedisConnection | RedisTarget): value is RedisConnection {
  return typeof value === 'object' && value !== null && value instanceof Object && 'status' in value && typeof (value as { quit?: unknown }).quit === 'function';
}
