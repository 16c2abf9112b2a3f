import type { GroupConfig } from '../config/index.js';
import type { Logger } from '../logger.js';

/** What a provider knows about the group it spawns into. */
export interface ProviderGroup {
  /**
   * The group's index in the config's `groups` list (hooks get it as VMPOOL_GROUP), null for a
   * group no longer in the config (it drains). The group's identity is its name: config.name.
   */
  index?: number | null;
  config: GroupConfig;
  /**
   * The pool's identity (VmManager.poolId): hooks get it as VMPOOL_POOL_ID, to tag the machines
   * they make and to list only those; the local provider keeps its state per pool id. Absent: no
   * identity (hooks get it empty, the local provider uses state_dir itself).
   */
  poolId?: string;
}

export interface SpawnRequest {
  group: ProviderGroup;
  /** Unique per spawn; hooks see it as VMPOOL_SPAWN_ID. */
  spawnId: string;
  /** Appends a line to the job's log (Bull Board shows it). */
  log?: (line: string) => void | Promise<void>;
  /**
   * Told each machine the spawn is making as soon as its name is known (a spawn hook's output line
   * with a name, before the hook ends), so that it can be recorded before anything else can crash.
   */
  onMachine?: (machine: PrintedMachine) => void;
  /**
   * Aborted when the process stops: the spawn stops at once (a hook's process group is killed) and
   * rejects with SpawnAborted, naming the machine it may have made, which the caller terminates.
   */
  signal?: AbortSignal;
}

/** A machine a spawn named before it finished: the IP may not be known yet. */
export interface PrintedMachine {
  name: string;
  ip: string | null;
}

/** A spawn stopped because its process stops; `machine` is the one it may have made (not terminated). */
export class SpawnAborted extends Error {
  constructor(
    message: string,
    readonly machine: PrintedMachine | null,
  ) {
    super(message);
    this.name = 'SpawnAborted';
  }
}

/** The machine a spawn made. Both fields are validated before the VM enters the pool. */
export interface SpawnedMachine {
  name: string;
  ip: string;
}

export interface TerminateRequest {
  group: ProviderGroup;
  vmName: string;
  vmIp: string | null;
  log?: (line: string) => void | Promise<void>;
}

/** A machine as the provider sees it, for leak and orphan cleanup. */
export interface ProviderMachine {
  name: string;
  ip?: string | null;
  /** Epoch ms when the provider created it, when known. */
  createdAt?: number | null;
  /**
   * The pool id the machine is tagged with (VMPOOL_POOL_ID at its spawn), when the provider knows
   * it. The orphan pass terminates only machines tagged with its own pool's id.
   */
  pool?: string | null;
}

/**
 * Creates and destroys machines for one group. spawn and terminate are required; list lets
 * reconcile find leaks; check lets the provider answer health checks itself.
 */
export interface Provider {
  readonly type: string;
  spawn(request: SpawnRequest): Promise<SpawnedMachine>;
  /** Must be idempotent: terminating a machine that is already gone succeeds. */
  terminate(request: TerminateRequest): Promise<void>;
  list?(group: ProviderGroup): Promise<ProviderMachine[]>;
  check?(machine: { vmName: string; vmIp: string; group: ProviderGroup }): Promise<boolean>;
}

export interface ProviderDeps {
  logger: Logger;
  /** Known secrets (configSecrets of the config): masked in hook output that is logged or kept. */
  secrets?: readonly string[];
}
