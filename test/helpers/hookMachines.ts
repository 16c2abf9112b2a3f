import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './processes.js';

// Machines made by the test hooks (test/fixtures/hooks) for the command provider: each is a TCP
// listener process on a loopback address, recorded as a file `<name>` (`<pid> <ip>`) in the state dir
// given to the hooks as HOOK_STATE_DIR.

export const HOOKS_DIR = join(ROOT, 'test', 'fixtures', 'hooks');

/** A fresh state dir for the hooks' machine files. */
export function hookStateDir(name: string): string {
  return mkdtempSync(join(tmpdir(), `vmpool-${name}-`));
}

export interface HookProviderOptions {
  stateDir: string;
  /** The port every machine listens on (the group's tcp check port). */
  port: number;
  /** Seconds the spawn hook waits first (HOOK_SPAWN_DELAY). */
  spawnDelay?: number;
  /** Seconds the terminate hook waits first (HOOK_TERMINATE_DELAY). */
  terminateDelay?: number;
  /** A new machine with a random name on every spawn run, with an `attempt-<name>` marker. */
  newMachineEachRun?: boolean;
  /** Add the list hook, so that reconcile can find machines the pool does not know. */
  list?: boolean;
}

/** A command provider config block running the test hooks. */
export function hookProvider(o: HookProviderOptions) {
  const env: Record<string, string> = { HOOK_STATE_DIR: o.stateDir, HOOK_PORT: String(o.port) };
  if (o.spawnDelay !== undefined) env.HOOK_SPAWN_DELAY = String(o.spawnDelay);
  if (o.terminateDelay !== undefined) env.HOOK_TERMINATE_DELAY = String(o.terminateDelay);
  if (o.newMachineEachRun) env.HOOK_NEW_MACHINE_EACH_RUN = '1';
  return {
    type: 'command' as const,
    spawn_cmd: [join(HOOKS_DIR, 'spawn.sh')],
    terminate_cmd: [join(HOOKS_DIR, 'terminate.sh')],
    ...(o.list ? { list_cmd: [join(HOOKS_DIR, 'list.sh')] } : {}),
    spawn_timeout: 20,
    terminate_timeout: 10,
    env,
  };
}

/** Where the hook machines live: loopback, which a command provider's group must allow outright. */
export const HOOK_NETWORKS = ['127.88.0.0/16'];

/** A group's keys for hook machines checked with the tcp check, with short periods for tests. */
export function hookGroup(o: HookProviderOptions) {
  return {
    provider: hookProvider(o),
    allowed_networks: HOOK_NETWORKS,
    check: { type: 'tcp' as const, port: o.port },
    vm_spawn_min_interval: 0,
    vm_health_check_period: 1,
    vm_ssh_check_timeout: 2,
  };
}

/** The listener pid of a machine the hooks made, or null when it has no file (never made, or terminated). */
export function listenerPid(stateDir: string, vmName: string): number | null {
  const file = join(stateDir, vmName);
  if (!existsSync(file)) return null;
  const pid = Number(readFileSync(file, 'utf8').split(' ')[0]);
  // Never 0 or negative: process.kill would signal a whole process group.
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

/** The machines in a state dir: name -> listener pid. */
export function hookMachines(stateDir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const file of readdirSync(stateDir)) {
    if (file.startsWith('vm-')) out.set(file, listenerPid(stateDir, file)!);
  }
  return out;
}

/** Spawn attempts that started (spawn.sh's markers with newMachineEachRun): machine name -> spawn id. */
export function spawnAttempts(stateDir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const file of readdirSync(stateDir)) {
    if (file.startsWith('attempt-')) out.set(file.slice('attempt-'.length), readFileSync(join(stateDir, file), 'utf8').trim());
  }
  return out;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Kills the listeners left in a state dir (machines never terminated) and removes the dir. */
export function removeHookMachines(stateDir: string): void {
  if (existsSync(stateDir)) {
    for (const pid of hookMachines(stateDir).values()) {
      try {
        if (pid) process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  rmSync(stateDir, { recursive: true, force: true });
}
