/**
 * `vmpool start` (what `npm start` runs) on a machine where no Redis answers but `redis-server` is
 * installed: a private redis-server for this run, on the URL's loopback port, with AOF (fsync every
 * second) in a data directory that outlives it, so a restart keeps the pool. It is stopped with
 * vmpool. Worker entries (the Procfile) never start one: there Redis is the operator's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../logger.js';
import { connectAnsweringRedis, haveRedisServer } from '../redis.js';
import { isLoopbackHost } from '../loopback.js';

export interface PrivateRedis {
  pid: number;
  /** Its data directory (AOF and log). */
  dir: string;
  /** SIGTERM (redis-server then writes its AOF and exits), SIGKILL after timeoutMs. */
  stop(timeoutMs?: number): Promise<void>;
}

/**
 * Where a private Redis on a URL would listen: a loopback host and port of a plain redis:// URL
 * without a user, password or database other than 0; null otherwise (not ours to start).
 */
export function privateRedisTarget(url: string): { host: string; port: number } | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  if (parsed.protocol !== 'redis:' || parsed.username || parsed.password || !isLoopbackHost(host)) return null;
  if (parsed.pathname !== '' && parsed.pathname !== '/' && parsed.pathname !== '/0') return null;
  return { host: host === 'localhost' ? '127.0.0.1' : host, port: Number(parsed.port || 6379) };
}

/**
 * The data directory: VMPOOL_REDIS_DIR, else `$XDG_DATA_HOME/vmpool/redis` (default
 * `~/.local/share/vmpool/redis`), with `-<port>` for a port other than 6379.
 */
export function privateRedisDir(env: NodeJS.ProcessEnv, port: number): string {
  if (env.VMPOOL_REDIS_DIR) return env.VMPOOL_REDIS_DIR;
  const base = env.XDG_DATA_HOME || join(env.HOME || homedir(), '.local', 'share');
  return join(base, 'vmpool', port === 6379 ? 'redis' : `redis-${port}`);
}

/** Whether start may run a private redis-server for this URL (VMPOOL_PRIVATE_REDIS=0 turns it off). */
export function mayStartPrivateRedis(url: string, env: NodeJS.ProcessEnv): boolean {
  return env.VMPOOL_PRIVATE_REDIS !== '0' && privateRedisTarget(url) !== null && haveRedisServer();
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts redis-server for the URL and waits until it answers (up to readyTimeoutMs). Throws with
 * the end of its log when it exits or does not answer.
 */
export async function startPrivateRedis(url: string, env: NodeJS.ProcessEnv, logger: Logger, readyTimeoutMs = 10_000): Promise<PrivateRedis> {
  const target = privateRedisTarget(url);
  if (!target) throw new Error(`not a loopback redis:// URL without a password: ${url}`);
  const dir = privateRedisDir(env, target.port);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const logFile = join(dir, 'redis.log');
  const args = [
    '--bind', target.host,
    '--port', String(target.port),
    '--dir', dir,
    '--appendonly', 'yes',
    '--appendfsync', 'everysec',
    '--save', '',
    '--daemonize', 'no',
    '--protected-mode', 'yes',
    '--logfile', logFile,
  ];
  // Its own process group: a Ctrl-C reaches vmpool, which stops the workers first and then Redis.
  const child: ChildProcess = spawn('redis-server', args, { stdio: 'ignore', detached: true });
  child.unref();
  let exited: string | null = null;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      resolve();
    });
    child.once('error', (err) => {
      exited = `could not start: ${err.message}`;
      resolve();
    });
  });
  const logTail = () => {
    try {
      return readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ');
    } catch {
      return '';
    }
  };
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exited) throw new Error(`the private redis-server ${exited}${logTail() ? `; its log: ${logTail()}` : ''}`);
    const answered = await connectAnsweringRedis(url).then(
      (r) => {
        r.disconnect();
        return true;
      },
      () => false,
    );
    if (answered) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the private redis-server did not answer within ${readyTimeoutMs / 1000}s${logTail() ? `; its log: ${logTail()}` : ''}`);
    }
    await sleep(100);
  }
  logger.info({ pid: child.pid, dir, port: target.port }, 'started a private redis-server');
  return {
    pid: child.pid!,
    dir,
    async stop(timeoutMs = 3_000) {
      if (exited) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      await exit;
      clearTimeout(timer);
      logger.info({ pid: child.pid, how: exited }, 'private redis-server stopped');
    },
  };
}
