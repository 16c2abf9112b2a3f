import { spawn } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { inject } from 'vitest';
import { VmPoolClient } from '../../../src/client/index.js';
import type { ConfigInput } from '../../../src/config/index.js';
import { createLogger } from '../../../src/logger.js';
import type { AuditEvent } from '../../../src/pool/audit.js';
import type { PoolReader } from '../../../src/pool/poolReader.js';
import { VmManager } from '../../../src/pool/vmManager.js';
import { type Figures } from './figures.js';
import { ROOT, startWorkerProcess, waitForWithLogs, writeConfigFile, type WorkerProcess } from '../../helpers/processes.js';
import { startPrivateRedis, type PrivateRedis } from '../../helpers/redisServers.js';

// The chaos suite's shared parts: a private redis-server per scenario, the invariants checked from
// the audit trail, and the figures each scenario prints (and the suite's summary table collects).

export { CHAOS_SCALE, figuresTable, type Figures } from './figures.js';

/** Every event of the audit trail, oldest first (pages through it). */
export async function readAudit(reader: PoolReader): Promise<AuditEvent[]> {
  const out: AuditEvent[] = [];
  let since: string | null = null;
  for (;;) {
    const page = await reader.auditEvents({ since, limit: 1000 });
    out.push(...page.events);
    since = page.next;
    if (!page.more) return out;
  }
}

export interface GroupLimits {
  max_vm_total: number;
  max_vm_per_user: number;
}

export interface AuditCheck {
  /** Acquisitions (acquired events). */
  acquired: number;
  /** Acquisitions of a VM whose previous lease had not ended: two holders at once. */
  doubled: number;
  /** A reattach under a lease that was not the one holding the VM. */
  badReattach: number;
  /** Most VMs of a group active (spawned, not yet terminating) at once, by group. */
  maxActive: Map<string, number>;
  /** Most VMs of a group bound to one owner at once, by group. */
  maxPerOwner: Map<string, number>;
  /** Times a group had more active VMs than max_vm_total, or an owner more than max_vm_per_user. */
  overTotal: number;
  overPerOwner: number;
  /** Examples of what broke, for the failure message. */
  problems: string[];
}

/**
 * The invariants that the audit trail proves, replaying it in order: no VM had two holders at once
 * (each acquired follows the end of the previous lease: released, lease_expired, or a termination
 * that ended it), no group had more than max_vm_total active VMs, and no owner more than
 * max_vm_per_user VMs bound in a group.
 */
export function checkAudit(events: readonly AuditEvent[], limits: Readonly<Record<string, GroupLimits>>): AuditCheck {
  const holder = new Map<string, string>();
  const active = new Map<string, Set<string>>();
  const bound = new Map<string, { group: string; owner: string }>();
  const perOwner = new Map<string, number>();
  const out: AuditCheck = { acquired: 0, doubled: 0, badReattach: 0, maxActive: new Map(), maxPerOwner: new Map(), overTotal: 0, overPerOwner: 0, problems: [] };
  const problem = (text: string) => {
    if (out.problems.length < 10) out.problems.push(text);
  };
  for (const e of events) {
    const group = e.group ?? '';
    const open = holder.get(e.vm);
    switch (e.event) {
      case 'spawned': {
        const set = active.get(group) ?? new Set<string>();
        set.add(e.vm);
        active.set(group, set);
        out.maxActive.set(group, Math.max(out.maxActive.get(group) ?? 0, set.size));
        const limit = limits[group]?.max_vm_total;
        if (limit !== undefined && set.size > limit) {
          out.overTotal += 1;
          problem(`${e.id}: group ${group} has ${set.size} active VMs (max_vm_total ${limit})`);
        }
        break;
      }
      case 'acquired':
        out.acquired += 1;
        if (open !== undefined) {
          out.doubled += 1;
          problem(`${e.id}: ${e.vm} acquired under lease ${e.lease} while lease ${open} still held it`);
        }
        holder.set(e.vm, e.lease ?? '');
        break;
      case 'reattached':
        if (open === undefined || open !== e.lease) {
          out.badReattach += 1;
          problem(`${e.id}: ${e.vm} reattached under lease ${e.lease}, held by ${open ?? 'nobody'}`);
        }
        break;
      case 'released':
      case 'lease_expired':
        holder.delete(e.vm);
        break;
      case 'terminate_requested':
        if (e.lease !== null) holder.delete(e.vm);
        active.get(group)?.delete(e.vm);
        break;
      case 'removed':
        holder.delete(e.vm);
        active.get(group)?.delete(e.vm);
        break;
      default:
        break;
    }
    // An owner's VMs in a group: bound at its first event with that owner, until removed.
    if (e.owner !== null && e.event !== 'removed' && !bound.has(e.vm)) {
      bound.set(e.vm, { group, owner: e.owner });
      const key = `${group}\u0000${e.owner}`;
      const n = (perOwner.get(key) ?? 0) + 1;
      perOwner.set(key, n);
      out.maxPerOwner.set(group, Math.max(out.maxPerOwner.get(group) ?? 0, n));
      const limit = limits[group]?.max_vm_per_user;
      if (limit !== undefined && n > limit) {
        out.overPerOwner += 1;
        problem(`${e.id}: owner ${e.owner} has ${n} VMs in group ${group} (max_vm_per_user ${limit})`);
      }
    }
    if (e.event === 'removed') {
      const b = bound.get(e.vm);
      if (b) {
        const key = `${b.group}\u0000${b.owner}`;
        perOwner.set(key, (perOwner.get(key) ?? 1) - 1);
        bound.delete(e.vm);
      }
    }
  }
  return out;
}

/** Prints a scenario's figures, and adds them to the suite's summary (npm run test:chaos) when it runs. */
export function reportFigures(f: Figures): void {
  const recover = f.recoverMs === null ? '-' : `${(f.recoverMs / 1000).toFixed(1)} s`;
  process.stdout.write(`[chaos] ${f.scenario}: tried ${f.tried}, lost ${f.lost}, doubled ${f.doubled}, time to recover ${recover}${f.notes ? `; ${f.notes}` : ''}\n`);
  let dir: string | undefined;
  try {
    dir = inject('chaosFiguresDir' as never) as string | undefined;
  } catch {
    dir = undefined;
  }
  if (dir) {
    mkdirSync(dir, { recursive: true });
    appendFileSync(join(dir, 'figures.ndjson'), `${JSON.stringify(f)}\n`);
  }
}

export interface ChaosSystem {
  prefix: string;
  redis: PrivateRedis;
  /** The test's own connection to the private Redis. */
  conn: Redis;
  vmm: VmManager;
  client: VmPoolClient;
  env: Record<string, string>;
  workers: WorkerProcess[];
  /** Starts one more worker process of a type. */
  start(type: string): Promise<WorkerProcess>;
  /** Worker processes still running. */
  running(type?: string): WorkerProcess[];
  until<T>(fn: () => Promise<T> | T, timeoutMs: number, what: string): Promise<NonNullable<T>>;
  close(): Promise<void>;
}

/**
 * A whole vmpool against a private redis-server: the config (redis url and prefix filled in), the
 * worker processes of `types` (real processes, from dist/ when built), the test's VmManager and
 * VmPoolClient on the same Redis.
 */
export async function startSystem(name: string, config: Record<string, unknown>, types: readonly string[]): Promise<ChaosSystem> {
  // A redis-server of the scenario's own, never the shared one; noeviction, as vmpool wants it.
  const redis = await startPrivateRedis(['--maxmemory-policy', 'noeviction'], 'chaos-redis');
  const prefix = `chaos-${name}`;
  const full = { ...config, redis: { url: redis.url, prefix } } as ConfigInput;
  const conn = new Redis(redis.url, { maxRetriesPerRequest: null });
  conn.on('error', () => undefined);
  const vmm = new VmManager(full, { redis: conn, prefix, logger: createLogger('chaos', { LOG_LEVEL: 'silent' }) });
  const client = new VmPoolClient({ redis: redis.url, prefix, graceMs: 30_000, logger: createLogger('chaos-client', { LOG_LEVEL: 'silent' }) });
  client.redis.on('error', () => undefined);
  // REDIS_URL overrides the config's url: set it too, so that nothing reaches the shared Redis.
  const env = { VMPOOL_CONFIG: writeConfigFile(full), VMPOOL_PREFIX: prefix, REDIS_URL: redis.url };
  const workers: WorkerProcess[] = [];
  const start = async (type: string) => {
    const w = await startWorkerProcess(type, env, 30_000);
    workers.push(w);
    return w;
  };
  await Promise.all(types.map(start));
  return {
    prefix,
    redis,
    conn,
    vmm,
    client,
    env,
    workers,
    start,
    running: (type) => workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null && (type === undefined || w.type === type)),
    until: (fn, timeoutMs, what) => waitForWithLogs(workers, fn, timeoutMs, what),
    async close() {
      await Promise.all(workers.map((w) => w.stop()));
      await client.close().catch(() => undefined);
      await vmm.close().catch(() => undefined);
      conn.disconnect();
      await redis.stop();
    },
  };
}

/** Machines the provider has (its own list: the hooks' state dir) against the pool's VMs: what leaked, what is missing. */
export async function compareWithProvider(vmm: VmManager, machines: ReadonlyMap<string, unknown>): Promise<{ leaked: string[]; missing: string[] }> {
  const pool = new Set((await vmm.getAllVms()).map((v) => v.vmName));
  return { leaked: [...machines.keys()].filter((n) => !pool.has(n)), missing: [...pool].filter((n) => !machines.has(n)) };
}

/** Whether the pool settled: no spawn in flight, nothing in use, checking or terminating. */
export async function settled(vmm: VmManager): Promise<boolean> {
  const busy = await vmm.getVmsByGroupAndStates(null, ['in_use', 'terminating', 'check_health', 'got_ip']);
  if (busy.length > 0) return false;
  for (const g of vmm.vmGroups) if ((await vmm.getSpawnsInFlight(g)).length > 0) return false;
  return true;
}

/** Runs a node script (TypeScript through tsx) to its end; resolves to its last stdout line, parsed as JSON. */
export function runScript<T>(file: string, env: Record<string, string>, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      const last = out.trim().split('\n').at(-1) ?? '';
      try {
        if (code !== 0) throw new Error(`exit ${code}`);
        resolve(JSON.parse(last) as T);
      } catch (e) {
        reject(new Error(`${file} failed (${(e as Error).message}):\n${out.slice(-2000)}\n${err.slice(-2000)}`));
      }
    });
  });
}
