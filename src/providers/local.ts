import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { z } from 'zod';
import type { localProviderSchema } from '../config/index.js';
import { ProviderError } from './command.js';
import { hookProcessEnv } from './hook.js';
import { generateSshKeyPair, isUsableSshKey } from './sshKeyPair.js';
import { SpawnAborted, type Provider, type ProviderDeps, type ProviderGroup, type ProviderMachine, type SpawnedMachine, type SpawnRequest, type TerminateRequest } from './types.js';

export type LocalProviderConfig = z.output<typeof localProviderSchema>;

/** The state dir when none is configured: per user, in the temp dir (the VMs do not outlive a reboot). */
export function defaultLocalStateDir(): string {
  return join(tmpdir(), `vmpool-local-${userInfo().uid}`);
}

/**
 * Where one pool's local VMs keep their state: `<state_dir>/pools/<pool id>`, so that two pools on
 * one machine never list (and take for leaks) each other's VMs. Without a pool id, state_dir itself.
 */
export function localPoolDir(stateDir: string, poolId?: string): string {
  return poolId ? join(stateDir, 'pools', poolId) : stateDir;
}

/** The private key the local VMs accept (any user name); the ssh check uses it by default. */
export function localClientKeyPath(stateDir: string): string {
  return join(stateDir, 'id_ed25519');
}

/** What a running local VM wrote about itself. */
export interface LocalVmState {
  pid: number;
  name: string;
  /** The group that spawned it, so each group lists only its own VMs. */
  group: string;
  /** The pool id it was spawned for ('' without one). */
  pool?: string;
  ip: string;
  port: number;
  created_at: number;
  /** Its SSH host public key, `ssh-ed25519 AAAA...`. */
  host_key: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * How to start localVm: the built .js with plain node, or the .ts source through the tsx loader
 * (tests and `tsx` runs). Either way with this node binary.
 */
export function localVmCommand(): { command: string; args: string[] } {
  const here = fileURLToPath(import.meta.url);
  const js = join(dirname(here), 'localVm.js');
  if (here.endsWith('.js') && existsSync(js)) return { command: process.execPath, args: [js] };
  const ts = join(dirname(here), 'localVm.ts');
  const tsx = createRequire(import.meta.url).resolve('tsx');
  return { command: process.execPath, args: ['--import', pathToFileURL(tsx).href, ts] };
}

/** Whether pid is a live localVm process for this VM name (guards against reused pids). */
export function isLocalVmProcess(pid: number, name: string): boolean {
  let argv: string[];
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return false;
  }
  const i = argv.indexOf('--name');
  return i >= 0 && argv[i + 1] === name && argv.some((a) => /[/\\]localVm\.(js|ts)$/.test(a));
}

/**
 * Creates the client key once; concurrent first spawns agree on one file (link fails if it exists).
 * A key ssh2 cannot parse (an earlier release could write one, see generateSshKeyPair) is replaced:
 * no VM can have started with it, since a VM parses the key before it listens.
 */
function ensureClientKey(stateDir: string): string {
  const path = localClientKeyPath(stateDir);
  let existing: Buffer | null = null;
  try {
    existing = readFileSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (existing && isUsableSshKey(existing)) return path;
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  writeFileSync(tmp, generateSshKeyPair().private, { mode: 0o600 });
  try {
    if (existing) renameSync(tmp, path);
    else linkSync(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    rmSync(tmp, { force: true });
  }
  return path;
}

/**
 * The embedded default provider. Each VM is a detached local process (localVm.ts) serving real SSH
 * on its own address 127.<ip_base>.x.y and the configured port, so it needs no root. State lives in
 * files under state_dir, so any worker process on this machine can list and terminate the VMs,
 * and they survive restarts of the worker that spawned them.
 *
 * Layout of state_dir: id_ed25519 (the client key) and ips/<ip> (address claims, containing the
 * VM name), shared by every pool on the machine as the addresses are; and per pool (localPoolDir,
 * `pools/<pool id>/`): vms/<name>.json (written by the VM once it listens), logs/<name>.log,
 * work/<name>/ (exec cwd), known_vms (the ssh check's host keys).
 */
export class LocalProvider implements Provider {
  readonly type = 'local';
  /** This pool's state directory (localPoolDir). */
  readonly stateDir: string;
  /** The configured state_dir: the client key and address claims of every pool on this machine. */
  private readonly sharedDir: string;

  constructor(
    private readonly config: LocalProviderConfig,
    private readonly deps: ProviderDeps,
    /** The pool's identity (ProviderGroup.poolId): its VMs live in their own directory and carry it. */
    readonly poolId?: string,
  ) {
    this.sharedDir = config.state_dir ?? defaultLocalStateDir();
    this.stateDir = localPoolDir(this.sharedDir, poolId);
  }

  private dir(sub: string): string {
    return sub === 'ips' ? join(this.sharedDir, sub) : join(this.stateDir, sub);
  }

  private ensureDirs(): void {
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    for (const sub of ['vms', 'ips', 'logs', 'work']) mkdirSync(this.dir(sub), { recursive: true, mode: 0o700 });
  }

  /** Claims the lowest free address by creating its claim file exclusively. */
  private claimAddress(name: (ip: string) => string): { ip: string; name: string } {
    const taken = new Set(readdirSync(this.dir('ips')));
    for (let i = 1; i < 65536; i++) {
      const hi = i >> 8;
      const lo = i & 255;
      if (lo === 0 || lo === 255) continue;
      const ip = `127.${this.config.ip_base}.${hi}.${lo}`;
      if (taken.has(ip)) continue;
      const vmName = name(ip);
      try {
        writeFileSync(join(this.dir('ips'), ip), vmName, { flag: 'wx' });
        return { ip, name: vmName };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    throw new ProviderError(`no free address left in 127.${this.config.ip_base}.0.0/16 (state dir ${this.stateDir})`);
  }

  private releaseAddress(ip: string, name: string): void {
    const file = join(this.dir('ips'), ip);
    try {
      if (readFileSync(file, 'utf8') === name) unlinkSync(file);
    } catch {
      // Already released.
    }
  }

  /**
   * Where VM state lives: this pool's directory, and with a pool id also state_dir itself, where
   * builds before pool ids kept every VM (such a VM's state has no pool; it is listed untagged,
   * so the orphan pass leaves it alone, and it can still be terminated).
   */
  private stateDirs(): string[] {
    return this.stateDir === this.sharedDir ? [this.stateDir] : [this.stateDir, this.sharedDir];
  }

  private readStateIn(dir: string, name: string): LocalVmState | null {
    try {
      const state = JSON.parse(readFileSync(join(dir, 'vms', `${name}.json`), 'utf8')) as LocalVmState;
      return dir === this.stateDir || !state.pool ? state : null;
    } catch {
      return null;
    }
  }

  private findState(name: string): { state: LocalVmState; dir: string } | null {
    for (const dir of this.stateDirs()) {
      const state = this.readStateIn(dir, name);
      if (state) return { state, dir };
    }
    return null;
  }

  readState(name: string): LocalVmState | null {
    return this.findState(name)?.state ?? null;
  }

  private allStates(): { state: LocalVmState; dir: string }[] {
    const states: { state: LocalVmState; dir: string }[] = [];
    for (const dir of this.stateDirs()) {
      let files: string[];
      try {
        files = readdirSync(join(dir, 'vms')).filter((f) => f.endsWith('.json'));
      } catch {
        continue;
      }
      for (const f of files) {
        const state = this.readStateIn(dir, f.slice(0, -'.json'.length));
        if (state) states.push({ state, dir });
      }
    }
    return states;
  }

  async spawn(request: SpawnRequest): Promise<SpawnedMachine> {
    const log = (line: string) => Promise.resolve(request.log?.(line)).catch(() => {});
    this.ensureDirs();
    const keyFile = ensureClientKey(this.sharedDir);
    const suffix = randomBytes(3).toString('hex');
    const { ip, name } = this.claimAddress((addr) => `local-${addr.split('.').slice(1).join('-')}-${suffix}`);
    request.onMachine?.({ name, ip });
    const logFile = join(this.dir('logs'), `${name}.log`);
    const fd = openSync(logFile, 'a', 0o600);
    const { command, args } = localVmCommand();
    const child = spawn(
      command,
      [...args, '--state-dir', this.stateDir, '--name', name, '--group', request.group.config.name, '--pool', this.poolId ?? '', '--ip', ip, '--port', String(this.config.port), '--authorized-key', keyFile],
      // Its own session, output to a file: it must outlive this process. Its environment is a hook's
      // (no REDIS_URL, no tokens): the commands a build runs in the VM inherit it.
      { detached: true, stdio: ['ignore', fd, fd], env: hookProcessEnv({}) },
    );
    closeSync(fd);
    child.unref();
    let exited: string | null = null;
    child.on('exit', (code, signal) => {
      exited = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    });
    child.on('error', (err) => {
      exited = `could not start: ${err.message}`;
    });
    await log(`local VM ${name}: started pid ${child.pid} on ${ip}:${this.config.port}`);

    const deadline = Date.now() + this.config.spawn_timeout * 1000;
    while (Date.now() < deadline && !exited) {
      // The caller terminates the VM: the process stops.
      if (request.signal?.aborted) throw new SpawnAborted(`local VM ${name}: spawn stopped as the process shuts down`, { name, ip });
      if (this.readState(name)) {
        this.deps.logger.info({ vmName: name, vmIp: ip, pid: child.pid }, 'local VM listening');
        return { name, ip };
      }
      await sleep(50);
    }
    let output = '';
    try {
      output = readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ');
    } catch {
      // No log.
    }
    const why = exited ?? `did not listen within ${this.config.spawn_timeout}s`;
    await this.terminate({ group: request.group, vmName: name, vmIp: ip }).catch(() => {});
    if (child.pid && isLocalVmProcess(child.pid, name)) process.kill(child.pid, 'SIGKILL');
    throw new ProviderError(`local VM ${name} ${why}${output ? `; output: ${output}` : ''}`);
  }

  async terminate(request: TerminateRequest): Promise<void> {
    const { vmName, vmIp } = request;
    // By recorded name, else by address.
    const found = this.findState(vmName) ?? (vmIp ? (this.allStates().find((s) => s.state.ip === vmIp) ?? null) : null);
    const state = found?.state ?? null;
    const dir = found?.dir ?? this.stateDir;
    const name = state?.name ?? vmName;
    if (state && isLocalVmProcess(state.pid, name)) {
      process.kill(state.pid, 'SIGTERM');
      for (let i = 0; i < 60 && isLocalVmProcess(state.pid, name); i++) await sleep(50);
      if (isLocalVmProcess(state.pid, name)) process.kill(state.pid, 'SIGKILL');
      for (let i = 0; i < 40 && isLocalVmProcess(state.pid, name); i++) await sleep(50);
      if (isLocalVmProcess(state.pid, name)) throw new ProviderError(`local VM ${name} (pid ${state.pid}) is still running after SIGKILL`);
    }
    rmSync(join(dir, 'vms', `${name}.json`), { force: true });
    rmSync(join(dir, 'logs', `${name}.log`), { force: true });
    rmSync(join(dir, 'work', name), { recursive: true, force: true });
    const ip = state?.ip ?? vmIp;
    if (ip) this.releaseAddress(ip, name);
    await Promise.resolve(request.log?.(`local VM ${name}: terminated`)).catch(() => {});
  }

  async list(group: ProviderGroup): Promise<ProviderMachine[]> {
    return this.allStates()
      .map(({ state }) => state)
      .filter((s) => s.group === group.config.name && isLocalVmProcess(s.pid, s.name))
      .map((s) => ({ name: s.name, ip: s.ip, createdAt: s.created_at, ...(s.pool ? { pool: s.pool } : {}) }));
  }
}
