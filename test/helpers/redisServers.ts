import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, waitFor } from './processes.js';

// Private Redis deployments for tests, on loopback ports of their own and in a temp dir of their
// own, from Debian's redis-server and redis-sentinel: a standalone server (that a test may shut
// down, crash and start again), a 3-master Cluster, and a Sentinel set (a master, a replica, 3
// sentinels). The shared Redis on 6379 is never touched. Each stop() ends every server it started
// and removes the dir.
const run = promisify(execFile);

/** Whether a TCP port on 127.0.0.1 can be listened on now. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/** A free port whose cluster bus port (port + 10000) is free too. */
async function clusterPort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    if (taken.has(port) || taken.has(port + 10_000)) continue;
    if ((await portFree(port)) && (await portFree(port + 10_000))) {
      taken.add(port).add(port + 10_000);
      return port;
    }
  }
}

/** redis-cli against a loopback port; its output, or null when it failed. */
export async function cli(port: number, ...args: string[]): Promise<string | null> {
  try {
    const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 5_000 });
    return stdout.trim();
  } catch {
    return null;
  }
}

class Servers {
  readonly dir: string;
  private readonly children = new Map<number, ChildProcess>();

  constructor(name: string) {
    this.dir = mkdtempSync(join(tmpdir(), `vmpool-${name}-`));
  }

  async start(port: number, command: string, args: string[]): Promise<void> {
    const child = spawn(command, args, { stdio: 'ignore', cwd: this.dir });
    this.children.set(port, child);
    // A command that cannot run (ENOENT) fails this start, instead of escaping as an unhandled 'error' event.
    let failed: Error | undefined;
    child.once('error', (err) => (failed = err));
    await waitFor(async () => {
      if (failed) throw new Error(`${command} on port ${port} did not start: ${failed.message}`);
      if (child.exitCode !== null) throw new Error(`${command} on port ${port} exited with ${child.exitCode}`);
      return (await cli(port, 'ping')) === 'PONG';
    }, 10_000, `${command} on port ${port}`);
  }

  /** SHUTDOWN of one server (saving as its settings say, or NOSAVE); resolves once it exited. */
  async shutdown(port: number, noSave: boolean): Promise<void> {
    const child = this.children.get(port);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((res) => child.once('exit', res));
    await cli(port, 'shutdown', ...(noSave ? ['nosave'] : []));
    await exited;
  }

  /** SIGKILL of one server, as a crash. */
  async kill(port: number): Promise<void> {
    const child = this.children.get(port);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((res) => child.once('exit', res));
    child.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    await Promise.all(
      [...this.children.values()].map(async (child) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((res) => child.once('exit', res));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
        await exited;
        clearTimeout(timer);
      }),
    );
    this.children.clear();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const baseArgs = (port: number) => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'];

export interface PrivateRedis {
  port: number;
  /** redis://127.0.0.1:<port> */
  url: string;
  /** Its own dir (its files go there unless the args give another --dir); stop() removes it. */
  dir: string;
  /** Starts it again on its port after shutdown() or crash(), with `args` instead of the last ones when given. */
  restart(args?: string[]): Promise<void>;
  /** SHUTDOWN (its AOF or save points persist as configured), or SHUTDOWN NOSAVE; resolves once it exited. */
  shutdown(options?: { noSave?: boolean }): Promise<void>;
  /** SIGKILL, as a crash: nothing is saved at exit. */
  crash(): Promise<void>;
  /** Ends it if it runs and removes its dir. */
  stop(): Promise<void>;
}

/**
 * Starts a standalone redis-server on a free loopback port, with no persistence unless `args` ask for
 * it (they come last, so they win), and waits until it answers.
 */
export async function startPrivateRedis(args: string[] = [], name = 'redis'): Promise<PrivateRedis> {
  const servers = new Servers(name);
  try {
    const port = await freePort();
    let current = args;
    const launch = () => servers.start(port, 'redis-server', [...baseArgs(port), '--dir', servers.dir, ...current]);
    await launch();
    return {
      port,
      url: `redis://127.0.0.1:${port}`,
      dir: servers.dir,
      async restart(next) {
        if (next) current = next;
        await launch();
      },
      shutdown: (options) => servers.shutdown(port, options?.noSave ?? false),
      crash: () => servers.kill(port),
      stop: () => servers.stop(),
    };
  } catch (err) {
    await servers.stop();
    throw err;
  }
}

export interface PrivateCluster {
  /** The masters' ports. */
  ports: number[];
  /** `host:port` of each master, for redis.cluster. */
  nodes: string[];
  /** REDIS_URL form: redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3 */
  url: string;
  stop(): Promise<void>;
}

/** Starts a Redis Cluster of `masters` masters (no replicas) and waits until it is ok. */
export async function startRedisCluster(masters = 3): Promise<PrivateCluster> {
  const servers = new Servers('cluster');
  try {
    const taken = new Set<number>();
    const ports: number[] = [];
    for (let i = 0; i < masters; i += 1) ports.push(await clusterPort(taken));
    await Promise.all(
      ports.map((port) =>
        servers.start(port, 'redis-server', [
          ...baseArgs(port),
          '--cluster-enabled', 'yes',
          '--cluster-config-file', `nodes-${port}.conf`,
          '--cluster-node-timeout', '3000',
          '--dir', servers.dir,
        ]),
      ),
    );
    const nodes = ports.map((p) => `127.0.0.1:${p}`);
    await run('redis-cli', ['--cluster', 'create', ...nodes, '--cluster-replicas', '0', '--cluster-yes'], { timeout: 20_000 });
    await waitFor(async () => {
      const infos = await Promise.all(ports.map((p) => cli(p, 'cluster', 'info')));
      return infos.every((i) => i?.includes('cluster_state:ok') && i.includes(`cluster_known_nodes:${masters}`));
    }, 20_000, 'the cluster to be ok on every node');
    return { ports, nodes, url: `redis+cluster://${nodes.join(',')}`, stop: () => servers.stop() };
  } catch (err) {
    await servers.stop();
    throw err;
  }
}

export interface PrivateSentinelSet {
  masterName: string;
  /** `host:port` of each sentinel, for redis.sentinel.sentinels. */
  sentinels: string[];
  /** REDIS_URL form: redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/<name> */
  url: string;
  /** The data servers' ports (the first started as master, the second as its replica). */
  dataPorts: number[];
  /** The port of the current master, as the sentinels report it. */
  masterPort(): Promise<number>;
  /** Resolves once the current master has its replica online (in sync), as after a failover it takes a moment. */
  replicaInSync(): Promise<void>;
  /** Asks a sentinel to fail the master over now (SENTINEL FAILOVER); resolves once another master is reported. */
  failover(): Promise<number>;
  /** SIGKILL of a data server (the master, to have the sentinels fail it over themselves). */
  kill(port: number): Promise<void>;
  /** SIGKILL of the master; resolves with the new master's port once the sentinels report one. */
  killMaster(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * Starts a master, its replica and 3 sentinels that watch it (quorum 2, down after 1 s), and waits
 * until the replica is in sync and every sentinel knows the replica and the other sentinels.
 * `masterArgs` go to both data servers (such as `--min-replicas-to-write 1`).
 */
export async function startSentinelSet(masterArgs: string[] = []): Promise<PrivateSentinelSet> {
  const servers = new Servers('sentinel');
  const masterName = 'vmpool-test';
  try {
    const master = await freePort();
    let replica = await freePort();
    while (replica === master) replica = await freePort();
    await servers.start(master, 'redis-server', [...baseArgs(master), '--dir', servers.dir, ...masterArgs]);
    await servers.start(replica, 'redis-server', [...baseArgs(replica), '--dir', servers.dir, '--replicaof', '127.0.0.1', String(master), ...masterArgs]);
    await waitFor(async () => (await cli(replica, 'info', 'replication'))?.includes('master_link_status:up'), 10_000, 'the replica in sync');
    const sentinelPorts: number[] = [];
    for (let i = 0; i < 3; i += 1) {
      let p = await freePort();
      while ([master, replica, ...sentinelPorts].includes(p)) p = await freePort();
      sentinelPorts.push(p);
    }
    await Promise.all(
      sentinelPorts.map((port) => {
        const conf = join(servers.dir, `sentinel-${port}.conf`);
        writeFileSync(
          conf,
          [
            `port ${port}`,
            'bind 127.0.0.1',
            'protected-mode no',
            `dir ${servers.dir}`,
            `sentinel monitor ${masterName} 127.0.0.1 ${master} 2`,
            `sentinel down-after-milliseconds ${masterName} 1000`,
            `sentinel failover-timeout ${masterName} 10000`,
            `sentinel parallel-syncs ${masterName} 1`,
            '',
          ].join('\n'),
        );
        return servers.start(port, 'redis-sentinel', [conf]);
      }),
    );
    await waitFor(async () => {
      const views = await Promise.all(sentinelPorts.map((p) => cli(p, 'sentinel', 'master', masterName)));
      return views.every((v) => v !== null && /num-slaves\n1\b/.test(v) && /num-other-sentinels\n2\b/.test(v));
    }, 20_000, 'every sentinel to know the replica and the other sentinels');
    const masterPort = async (): Promise<number> => {
      const addr = await cli(sentinelPorts[0]!, 'sentinel', 'get-master-addr-by-name', masterName);
      return Number(addr?.split('\n')[1]);
    };
    const sentinels = sentinelPorts.map((p) => `127.0.0.1:${p}`);
    return {
      masterName,
      sentinels,
      url: `redis+sentinel://${sentinels.join(',')}/${masterName}`,
      dataPorts: [master, replica],
      masterPort,
      async failover() {
        const before = await masterPort();
        await waitFor(async () => (await cli(sentinelPorts[0]!, 'sentinel', 'failover', masterName)) === 'OK', 10_000, 'SENTINEL FAILOVER accepted');
        return waitFor(async () => {
          const now = await masterPort();
          return now !== before && now > 0 ? now : null;
        }, 20_000, 'a new master');
      },
      async replicaInSync() {
        await waitFor(async () => /slave0:.*state=online/.test((await cli(await masterPort(), 'info', 'replication')) ?? ''), 20_000, 'the replica online');
      },
      kill: (port) => servers.kill(port),
      async killMaster() {
        const before = await masterPort();
        await servers.kill(before);
        return waitFor(async () => {
          const now = await masterPort();
          return now !== before && now > 0 ? now : null;
        }, 30_000, 'the sentinels to promote the replica');
      },
      stop: () => servers.stop(),
    };
  } catch (err) {
    await servers.stop();
    throw err;
  }
}
