import { isIP } from 'node:net';
import { launchFingerprint } from '../config/fingerprint.js';
import type { z } from 'zod';
import type { commandProviderSchema } from '../config/index.js';
import { VM_NAME_PATTERN } from '../pool/types.js';
import { maskSecrets } from '../text/redact.js';
import { describeEnd, runHook, toArgv, type HookResult } from './hook.js';
import { UNCLASSIFIED, classifySpawnFailure, type SpawnFailureClass } from './spawnErrors.js';
import {
  SpawnAborted,
  type PrintedMachine,
  type Provider,
  type ProviderDeps,
  type ProviderGroup,
  type ProviderMachine,
  type SpawnedMachine,
  type SpawnRequest,
  type TerminateRequest,
} from './types.js';

/** A list is only trusted whole; this bounds memory (about 40,000 machines). */
const LIST_KEEP_BYTES = 4 * 1024 * 1024;

export type CommandProviderConfig = z.output<typeof commandProviderSchema>;

/** A hook failed or printed something we cannot use. The message says which and why. */
export class ProviderError extends Error {
  /** Why a spawn failed, as the hook said it (spawnErrors.ts); unclassified when it did not. */
  readonly errorClass: SpawnFailureClass;

  constructor(
    message: string,
    /** A failed spawn's machine (the name its hook printed), and whether terminate_cmd ended it. */
    readonly leftover?: { machine: PrintedMachine; terminated: boolean },
    errorClass: SpawnFailureClass = UNCLASSIFIED,
  ) {
    super(message);
    this.name = 'ProviderError';
    this.errorClass = errorClass;
  }
}

/** The environment every hook gets; values never go into argv or a shell string. */
export function hookEnv(
  group: ProviderGroup,
  extra: Record<string, string>,
  vm: { name?: string | null; ip?: string | null; spawnId?: string } = {},
): Record<string, string> {
  return {
    ...extra,
    VMPOOL_GROUP: group.index === undefined || group.index === null ? '' : String(group.index),
    VMPOOL_GROUP_NAME: group.config.name,
    VMPOOL_POOL_ID: group.poolId ?? '',
    // What the machine is to be made from: the group's `image` (empty when unset) and launch fingerprint, to tag it with.
    VMPOOL_IMAGE: group.config.image ?? '',
    VMPOOL_LAUNCH_FINGERPRINT: launchFingerprint(group.config),
    VMPOOL_VM_NAME: vm.name ?? '',
    VMPOOL_VM_IP: vm.ip ?? '',
    VMPOOL_SPAWN_ID: vm.spawnId ?? '',
  };
}

function lastLines(result: HookResult): string {
  const lines = result.tail.filter((l) => l.trim() !== '').slice(-5);
  return lines.length ? `; last output: ${lines.map((l) => JSON.stringify(l.slice(0, 200))).join(' | ')}` : '; no output';
}

/** Reads a name (and IP) from one output line, if the line is a spawn result of either format. */
export function parseSpawnLine(line: string): { name?: unknown; ip?: unknown } | null {
  const text = line.trim();
  if (text.startsWith('{')) {
    try {
      const value: unknown = JSON.parse(text);
      if (value && typeof value === 'object' && !Array.isArray(value)) {
        const v = value as Record<string, unknown>;
        return { name: v.name, ip: v.ip };
      }
    } catch {
      return null;
    }
    return null;
  }
  // Copr's playbooks print `IP=1.2.3.4 vm_name=builder-1` (any order, other tokens ignored).
  const fields: Record<string, string> = {};
  for (const token of text.split(/\s+/)) {
    const eq = token.indexOf('=');
    if (eq > 0) fields[token.slice(0, eq)] = token.slice(eq + 1);
  }
  if (fields.IP === undefined && fields.vm_name === undefined) return null;
  return { name: fields.vm_name, ip: fields.IP };
}

/** Validates the last non-empty line of a spawn hook's output. Throws ProviderError naming the problem. */
export function parseSpawnOutput(stdout: string): SpawnedMachine {
  const lines = stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const last = lines.at(-1);
  if (last === undefined) throw new ProviderError('spawn_cmd printed nothing; expected {"ip": ..., "name": ...} or IP=... vm_name=... on its last line');
  const shown = JSON.stringify(last.slice(0, 200));
  const parsed = parseSpawnLine(last);
  if (!parsed) {
    throw new ProviderError(`spawn_cmd's last line ${shown} is neither a JSON object {"ip", "name"} nor "IP=... vm_name=..."`);
  }
  if (typeof parsed.name !== 'string' || !VM_NAME_PATTERN.test(parsed.name)) {
    throw new ProviderError(`spawn_cmd's last line ${shown}: name ${JSON.stringify(parsed.name)} does not match ${VM_NAME_PATTERN}`);
  }
  if (typeof parsed.ip !== 'string' || isIP(parsed.ip) === 0) {
    throw new ProviderError(`spawn_cmd's last line ${shown}: ip ${JSON.stringify(parsed.ip)} is not an IPv4 or IPv6 address`);
  }
  return { name: parsed.name, ip: parsed.ip };
}

/** created_at in list output: epoch seconds, or an ISO 8601 date. Returns epoch ms. */
function parseCreatedAt(value: unknown): number | null | undefined {
  if (value === undefined || value === null || value === '') return null;
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value * 1000;
  if (typeof value === 'string') {
    if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000;
    const ms = Date.parse(value);
    if (!Number.isNaN(ms)) return ms;
  }
  return undefined;
}

/**
 * Parses list_cmd output: one machine per line, either JSON {"name", "ip"?, "created_at"?, "pool"?}
 * or `name [ip [created_at [pool]]]` (`-` for an empty ip or created_at). created_at is epoch
 * seconds or ISO 8601; pool is the pool id the machine was tagged with (VMPOOL_POOL_ID at its
 * spawn). Empty lines are ignored. Any bad line fails the whole list, naming the line.
 */
export function parseListOutput(stdout: string): ProviderMachine[] {
  const machines: ProviderMachine[] = [];
  const lines = stdout.split('\n');
  lines.forEach((raw, index) => {
    const line = raw.trim();
    if (line === '') return;
    const where = `list_cmd line ${index + 1} ${JSON.stringify(line.slice(0, 200))}`;
    let name: unknown;
    let ip: unknown;
    let created: unknown;
    let pool: unknown;
    if (line.startsWith('{')) {
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        throw new ProviderError(`${where} is not valid JSON`);
      }
      if (!value || typeof value !== 'object' || Array.isArray(value)) throw new ProviderError(`${where} is not a JSON object`);
      ({ name, ip, created_at: created, pool } = value as Record<string, unknown>);
    } else {
      const parts = line.split(/\s+/).map((p) => (p === '-' ? '' : p));
      if (parts.length > 4) throw new ProviderError(`${where} has more than 4 fields (name ip created_at pool)`);
      [name, ip, created, pool] = parts;
    }
    if (pool !== undefined && pool !== null && typeof pool !== 'string') throw new ProviderError(`${where}: pool ${JSON.stringify(pool)} is not a string`);
    if (typeof name !== 'string' || !VM_NAME_PATTERN.test(name)) {
      throw new ProviderError(`${where}: name ${JSON.stringify(name)} does not match ${VM_NAME_PATTERN}`);
    }
    if (ip !== undefined && ip !== null && ip !== '' && (typeof ip !== 'string' || isIP(ip) === 0)) {
      throw new ProviderError(`${where}: ip ${JSON.stringify(ip)} is not an IP address`);
    }
    const createdAt = parseCreatedAt(created);
    if (createdAt === undefined) throw new ProviderError(`${where}: created_at ${JSON.stringify(created)} is neither epoch seconds nor ISO 8601`);
    machines.push({ name, ip: typeof ip === 'string' && ip !== '' ? ip : null, createdAt, ...(typeof pool === 'string' && pool !== '' ? { pool } : {}) });
  });
  return machines;
}

/**
 * Production provider: runs configured hooks (Copr's playbooks, resalloc's cmd_new/cmd_delete/cmd_list).
 * Every value reaches the hook through its environment (see hookEnv).
 */
export class CommandProvider implements Provider {
  readonly type = 'command';
  private readonly spawnArgv: string[];
  private readonly terminateArgv: string[];
  private readonly listArgv: string[] | null;

  constructor(
    private readonly config: CommandProviderConfig,
    private readonly deps: ProviderDeps,
  ) {
    this.spawnArgv = toArgv(config.spawn_cmd);
    this.terminateArgv = toArgv(config.terminate_cmd);
    this.listArgv = config.list_cmd ? toArgv(config.list_cmd) : null;
    if (!this.listArgv) this.list = undefined;
  }

  /** What every hook run shares: vmpool variables it may pass on, and the secrets masked in its output. */
  private get hookOptions() {
    return { passEnv: this.config.pass_env, secrets: this.deps.secrets ?? [] };
  }

  /** A message that may quote hook output, with the known secrets masked. */
  private mask(message: string): string {
    return maskSecrets(message, this.deps.secrets ?? []);
  }

  /**
   * The message of a parse failure of hook output, made from the output with its secrets masked
   * first: a message cuts and escapes what it quotes, which could leave part of a secret unmasked.
   */
  private parseFailure(parse: (stdout: string) => unknown, stdout: string, err: Error): string {
    try {
      parse(this.mask(stdout));
    } catch (masked) {
      return this.mask((masked as Error).message);
    }
    return this.mask(err.message);
  }

  async spawn(request: SpawnRequest): Promise<SpawnedMachine> {
    const { group, spawnId, log } = request;
    const logger = this.deps.logger.child({ group: group.config.name, spawnId });
    // The last name (and IP) the hook printed, so a failed spawn can still clean up.
    let printed: PrintedMachine | null = null;
    const timeoutMs = this.config.spawn_timeout * 1000;
    const result = await runHook({
      argv: this.spawnArgv,
      env: hookEnv(group, this.config.env, { spawnId }),
      ...this.hookOptions,
      timeoutMs,
      killGraceMs: this.config.kill_grace * 1000,
      logger,
      label: 'spawn_cmd',
      log,
      signal: request.signal,
      onStdoutLine: (line) => {
        const parsed = parseSpawnLine(line);
        if (parsed && typeof parsed.name === 'string' && VM_NAME_PATTERN.test(parsed.name)) {
          const machine: PrintedMachine = { name: parsed.name, ip: typeof parsed.ip === 'string' && isIP(parsed.ip) ? parsed.ip : null };
          printed = machine;
          request.onMachine?.(machine);
        }
      },
    });
    if (result.aborted) {
      // The caller terminates what the hook printed: its terminate may not fit in what is left of a stop.
      const machine = printed as PrintedMachine | null;
      throw new SpawnAborted(`spawn_cmd ${describeEnd(result, timeoutMs)}${machine ? `; it had printed ${machine.name}` : ''}`, machine);
    }

    let failure: string | null = null;
    let machine: SpawnedMachine | null = null;
    let errorClass: SpawnFailureClass = UNCLASSIFIED;
    if (result.startError || result.timedOut || result.code !== 0) {
      // Classified from the masked output: its message is cut, which could split a secret.
      const typed = result.startError || result.timedOut ? null : classifySpawnFailure(this.mask(result.stdout), result.code);
      errorClass = typed?.errorClass ?? UNCLASSIFIED;
      const said = typed?.message ? `: ${typed.message}` : '';
      failure = this.mask(`spawn_cmd ${describeEnd(result, timeoutMs)}${errorClass === UNCLASSIFIED ? '' : ` (${errorClass}${said})`}${lastLines(result)}`);
    } else {
      try {
        machine = parseSpawnOutput(result.stdout);
      } catch (err) {
        failure = this.parseFailure(parseSpawnOutput, result.stdout, err as Error);
      }
    }
    if (machine) return machine;

    const leaked = printed as PrintedMachine | null;
    if (leaked) {
      // The hook may have made a machine before failing: remove it so nothing half-made leaks.
      const note = `spawn failed after printing name ${leaked.name}; running terminate_cmd for it`;
      logger.warn({ vmName: leaked.name }, note);
      await Promise.resolve(log?.(note)).catch(() => {});
      let terminated = false;
      try {
        await this.terminate({ group, vmName: leaked.name, vmIp: leaked.ip, log });
        failure += `; terminated ${leaked.name}`;
        terminated = true;
      } catch (err) {
        failure += `; terminating ${leaked.name} failed too: ${(err as Error).message}`;
      }
      throw new ProviderError(failure!, { machine: leaked, terminated }, errorClass);
    }
    throw new ProviderError(failure!, undefined, errorClass);
  }

  async terminate(request: TerminateRequest): Promise<void> {
    const { group, vmName, vmIp, log } = request;
    const timeoutMs = this.config.terminate_timeout * 1000;
    const result = await runHook({
      argv: this.terminateArgv,
      env: hookEnv(group, this.config.env, { name: vmName, ip: vmIp }),
      ...this.hookOptions,
      timeoutMs,
      killGraceMs: this.config.kill_grace * 1000,
      logger: this.deps.logger.child({ group: group.config.name, vmName }),
      label: 'terminate_cmd',
      log,
    });
    if (result.startError || result.timedOut || result.code !== 0) {
      throw new ProviderError(`terminate_cmd for ${vmName} ${describeEnd(result, timeoutMs)}${lastLines(result)}`);
    }
  }

  list?: (group: ProviderGroup) => Promise<ProviderMachine[]> = async (group) => {
    const timeoutMs = this.config.list_timeout * 1000;
    const result = await runHook({
      argv: this.listArgv!,
      env: hookEnv(group, this.config.env),
      ...this.hookOptions,
      timeoutMs,
      killGraceMs: this.config.kill_grace * 1000,
      logger: this.deps.logger.child({ group: group.config.name }),
      label: 'list_cmd',
      keepBytes: LIST_KEEP_BYTES,
    });
    if (result.startError || result.timedOut || result.code !== 0) {
      throw new ProviderError(`list_cmd ${describeEnd(result, timeoutMs)}${lastLines(result)}`);
    }
    if (result.truncated) throw new ProviderError(`list_cmd printed more than ${LIST_KEEP_BYTES} bytes; cannot trust a partial list`);
    try {
      return parseListOutput(result.stdout);
    } catch (err) {
      throw err instanceof ProviderError ? new ProviderError(this.parseFailure(parseListOutput, result.stdout, err)) : err;
    }
  };
}
