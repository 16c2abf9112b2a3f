import { execFileSync } from 'node:child_process';
import { Redis, type RedisOptions } from 'ioredis';
import { isLoopbackHost } from './loopback.js';
import { redactUrl } from './text/redact.js';

/**
 * Delay before the next reconnect attempt. ioredis 6's default backoff grows to 5 s, so after Redis
 * came back a worker could stay idle that long, and its close() waited for it. Capped at 1 s.
 */
export function reconnectDelay(attempt: number): number {
  return Math.min(50 * 2 ** (attempt - 1), 1_000) + Math.floor(Math.random() * 100);
}

/**
 * Connection for producers and the pool: commands fail after a short retry instead of hanging
 * while Redis is away.
 */
export function createProducerConnection(url: string, extra: RedisOptions = {}): Redis {
  return new Redis(url, { maxRetriesPerRequest: 2, connectTimeout: 5_000, retryStrategy: reconnectDelay, ...extra });
}

/**
 * Connection for BullMQ workers: blocking commands must retry forever (maxRetriesPerRequest: null).
 * BullMQ duplicates it for its blocking connection; see endOnDisconnect.
 */
export function createWorkerConnection(url: string, extra: RedisOptions = {}): Redis {
  return endOnDisconnect(new Redis(url, { maxRetriesPerRequest: null, connectTimeout: 5_000, retryStrategy: reconnectDelay, ...extra }));
}

/**
 * Makes disconnect() end a client that is waiting to reconnect, and does the same for its
 * duplicates. ioredis then only clears its retry timer: with no socket, 'end' never comes and
 * pending commands never settle. BullMQ's Worker.close() disconnects its blocking connection and
 * waits for 'end', so a worker stopped in that state never finished closing. ioredis ends a client
 * in 'wait' (never connected) at once, so a socketless 'reconnecting' one is ended that way.
 */
export function endOnDisconnect(redis: Redis): Redis {
  const disconnect = redis.disconnect.bind(redis);
  redis.disconnect = (reconnect = false) => {
    if (!reconnect && redis.status === 'reconnecting') redis.status = 'wait';
    disconnect(reconnect);
  };
  const duplicate = redis.duplicate.bind(redis);
  redis.duplicate = ((override?: Partial<RedisOptions>) => endOnDisconnect(duplicate(override))) as Redis['duplicate'];
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
  /** The URL with its password masked: the error may be logged whole. */
  readonly url: string;

  constructor(url: string) {
    super(redisUnreachableHint(url, redisUrlTarget(url).loopback && haveRedisServer()));
    this.url = redactUrl(url);
    this.name = 'RedisUnreachable';
  }
}

/**
 * A connection that answered a PING, for commands and start-up checks: one connect attempt (3 s)
 * and no reconnects, so an unreachable Redis fails fast with RedisUnreachable instead of hanging.
 */
export async function connectAnsweringRedis(url: string): Promise<Redis> {
  const redis = createProducerConnection(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 3_000, retryStrategy: () => null });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    await redis.ping();
    return redis;
  } catch {
    redis.disconnect();
    throw new RedisUnreachable(url);
  }
}

/**
 * A template for BullMQ's blocking connections (QueueEvents, Worker): BullMQ duplicates the client
 * it is given for blocking reads, and refuses one with a retry limit. The template itself never
 * connects (lazyConnect); it works for a single Redis and for a Cluster alike.
 */
export function blockingConnectionTemplate(redis: Redis): Redis {
  return redis.duplicate({ maxRetriesPerRequest: null, lazyConnect: true });
}

/**
 * A connection given as an ioredis instance (shared: the caller closes it) or as a URL (owned: a
 * producer connection that the holder closes).
 */
export function producerConnectionFrom(redis: Redis | string): { redis: Redis; owned: boolean } {
  return typeof redis === 'string' ? { redis: createProducerConnection(redis), owned: true } : { redis, owned: false };
}
