import { userInfo } from 'node:os';
import type { Command } from 'commander';
import type { RedisConnection } from '../redis.js';
import type { Config } from '../config/index.js';
import { createLogger, type Logger } from '../logger.js';
import { DataFormat, DataFormatTooNew, newerThan } from '../pool/dataFormat.js';
import { VmManager } from '../pool/vmManager.js';
import { groupSummaries, resolveGroup } from '../poolView.js';
import { AmbiguousRequestId, AmbiguousTaskId, type AcquireRequestStatus } from '../acquire/requests.js';
import { describeUnavailableVms } from '../acquire/why.js';
import { textTable } from '../text/table.js';
import { connectAnsweringRedis } from '../redis.js';
import { readSettings, resolveConfig, type Settings } from '../runtime/settings.js';
import { CliError, ExitCodes } from './exitCodes.js';
import type { CliIo } from './io.js';

/** What every command of `vmpool` shares: the program's global options, the pool, and output. */
export interface CliContext {
  io: CliIo;
  /** The global `--config` option. */
  configFile(): string | undefined;
  /** The environment's settings, read on first use (so that `config check` does not depend on them). */
  settings(): Settings;
  config(): Config;
  logger(): Logger;
  /**
   * A VmManager on a connection that answered a PING, or CliError (exit 1) with the fix. A command
   * that changes the pool (all but `reads: true`) runs only on a pool of this release's data format
   * (CliError otherwise, naming the version needed): it never writes data it does not understand.
   */
  withPool<T>(fn: (vmm: VmManager, cfg: Config, redis: RedisConnection) => Promise<T>, options?: { reads?: boolean }): Promise<T>;
  /** Prints `value` as JSON, or `text()` for people. */
  print(json: boolean, value: unknown, text: () => string): void;
}

/** Adds one top-level command (or a group of subcommands) to the program. */
export type RegisterCommand = (program: Command, ctx: CliContext) => void;

export function createContext(program: Command, io: CliIo): CliContext {
  let readEnv: Settings | undefined;
  const settings = (): Settings => (readEnv ??= readSettings(io.env));
  const configFile = (): string | undefined => program.opts().config;
  const config = (): Config => resolveConfig(configFile(), settings()).config;
  const logger = (): Logger => createLogger('vmpool-cli', { ...io.env, LOG_LEVEL: io.env.LOG_LEVEL ?? 'warn' });
  return {
    io,
    configFile,
    settings,
    config,
    logger,
    async withPool(fn, options = {}) {
      const cfg = config();
      const redis = await connectAnsweringRedis(cfg.redis).catch((err: Error) => {
        throw new CliError(err.message, ExitCodes.ERROR);
      });
      const vmm = new VmManager(cfg, { redis, prefix: settings().prefix, logger: logger() });
      try {
        if (!options.reads) await requireSameDataFormat(redis, vmm.prefix, logger());
        return await fn(vmm, cfg, redis);
      } finally {
        await vmm.close();
        await redis.quit().catch(() => redis.disconnect());
      }
    },
    print: (json, value, text) => io.out(`${json ? JSON.stringify(value, null, 2) : text()}\n`),
  };
}

/**
 * Refuses (CliError, exit 1) a change to a pool whose recorded data format is not this release's:
 * newer (a newer release migrated it, or migrates it now), or older (no process of this release
 * has migrated it yet). A pool without a recorded version (no process started on it yet) is not
 * checked, and the check writes nothing.
 */
async function requireSameDataFormat(redis: RedisConnection, prefix: string, logger: Logger): Promise<void> {
  const format = new DataFormat({ redis, prefix, logger });
  const state = await format.peek();
  if (!state) return;
  const needed = newerThan(state, format.known);
  if (needed !== null) throw new CliError(`${new DataFormatTooNew(needed, format.known).message}; this command changes the pool, so it refused (reading commands still work)`, ExitCodes.ERROR);
  if (state.version < format.known) {
    throw new CliError(
      `the pool's data format is version ${state.version}${state.migrating ? ` (a migration to ${state.migrating} runs)` : ''}, and this vmpool writes version ${format.known}: ` +
        `start a process of this release first (it migrates the pool), or use a vmpool of the pool's release; this command changes the pool, so it refused`,
      ExitCodes.ERROR,
    );
  }
}

/** Parses `--timeout <seconds>`: a positive number, or a usage error. */
export function parseSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new CliError(`--timeout must be a positive number of seconds, got ${JSON.stringify(value)}`, ExitCodes.USAGE);
  return n;
}

/** A group's name from its name or index, or a usage error naming the groups. */
export function groupOf(cfg: Config, value: string): string {
  try {
    return resolveGroup(cfg, value);
  } catch (err) {
    throw new CliError((err as Error).message, ExitCodes.USAGE);
  }
}

/** The user running the CLI, or `operator` when the system cannot say. */
export function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'operator';
  }
}

/** One line per group whose spawn circuit breaker is open (vmpool info, vmpool breaker). */
export async function breakerLines(vmm: VmManager): Promise<string[]> {
  const now = vmm.clock();
  const lines: string[] = [];
  for (const g of await groupSummaries(vmm)) {
    const b = g.breaker;
    if (!b) continue;
    const until = b.openUntil === null ? `until \`vmpool breaker reset ${g.name}\`` : b.openUntil <= now ? 'probe due' : `probe in ${Math.ceil((b.openUntil - now) / 1000)} s`;
    lines.push(`group ${g.name}: spawn breaker OPEN (${b.errorClass}, ${b.failures} failures in a row${b.message ? `: ${b.message}` : ''}), ${until}`);
  }
  return lines;
}

/** A task id that several owners use is a usage error (vmpool why, vmpool cancel): name the owner. */
export function ambiguousTaskError(err: unknown): never {
  if (err instanceof AmbiguousRequestId) throw new CliError(err.message, ExitCodes.USAGE);
  if (err instanceof AmbiguousTaskId) throw new CliError(`${err.message} with --owner`, ExitCodes.USAGE);
  throw err;
}

/** Lines for people about an acquire request (vmpool why, vmpool cancel). */
export function requestText(r: AcquireRequestStatus): string {
  const what = r.taskId ? ` (task ${r.taskId})` : r.kind === 'acquire-set' ? ` (set of ${r.items?.length ?? '?'} VMs${r.requestId ? `, request ${r.requestId}` : ''})` : '';
  const head = `request ${r.id}${what} of ${r.owner} (sandbox ${JSON.stringify(r.sandbox)}): ${r.state}`;
  if (r.state === 'assigned' && r.assignment) return `${head}: VM ${r.assignment.vmName} (${r.assignment.vmIp})`;
  if (r.state === 'assigned' && r.vms) return `${head}: VMs ${r.vms.map((v) => `${v.vmName} (${v.vmIp})`).join(', ')}`;
  if (r.state === 'failed' && r.failure) return `${head}: ${r.failure.reason}`;
  if (r.state === 'queued') return `${head}: no acquire worker took it yet`;
  if (!r.waiting) return head;
  const left = Math.max(0, Math.round((r.deadline - Date.now()) / 1000));
  if (!Array.isArray(r.waiting.groups)) return `${head}, waits because: ${r.waiting.reason} (gives up in ${left} s)`;
  const rows = r.waiting.groups.map((g) => [
    `${g.group}(${g.groupIndex ?? 'removed'})`,
    g.ownerLimit ? `${g.reason} (${g.ownerLimit.units.join(', ')} over ${g.ownerLimit.scope === 'all' ? 'all groups' : `account ${g.ownerLimit.account}`})` : g.reason,
    g.position === null ? '-' : String(g.position),
    g.ownerPosition === null ? '-' : String(g.ownerPosition),
    String(g.waiting),
    `${g.ownerVms}/${g.maxVmPerUser}`,
    g.etaMs === undefined ? '-' : `${Math.ceil(g.etaMs / 1000)} s`,
  ]);
  // A set's: which of its VMs cannot be had now (or that it waits only for its turn).
  const unavailable = describeUnavailableVms(r.waiting);
  return `${head}, waits because: ${r.waiting.reason} (gives up in ${left} s)${unavailable ? `\n${unavailable}` : ''}\n${textTable(['GROUP', 'REASON', 'POSITION', 'OWNER POS', 'WAITING', 'OWNER VMS', 'ETA'], rows)}`;
}
