import type { PoolContext } from './context.js';
import type { SpawnInFlight } from './poolReader.js';
import type { SpawnAttemptStart } from './types.js';

/**
 * How long a spawn's record (what its attempts printed and added) outlives its last attempt's
 * start: far longer than any retry or stalled-job recovery of its job.
 */
export const SPAWN_RECORD_TTL_MS = 24 * 3600 * 1000;

/**
 * Spawns in flight and their records. The group's spawning set (its slots against max_vm_total) is
 * written by the spawn scripts only, through includes/spawnSlots.lua: registerSpawn adds a slot,
 * finishSpawn drops it, and addVm turns it into the VM.
 */
export class Spawns {
  constructor(private readonly ctx: PoolContext) {}

  /** Records a spawn in flight, in Redis, so that a restarted process does not forget it. */
  async register(group: string, spawnId: string): Promise<void> {
    this.ctx.groupConfig(group);
    await this.ctx.scripts.registerSpawn(group, spawnId, this.ctx.clock());
  }

  /** See VmManager.startSpawnAttempt. */
  async startAttempt(group: string, spawnId: string): Promise<SpawnAttemptStart> {
    this.ctx.groupConfig(group);
    return this.ctx.scripts.startSpawnAttempt(spawnId, group, this.ctx.clock(), SPAWN_RECORD_TTL_MS);
  }

  /** See VmManager.recordSpawnMachine. */
  async recordMachine(spawnId: string, machine: { name: string; ip: string | null }, hookDone: boolean): Promise<void> {
    await this.ctx.scripts.recordSpawnMachine(spawnId, machine.name, machine.ip, hookDone, SPAWN_RECORD_TTL_MS);
  }

  /** Forgets the machine an earlier attempt of the spawn printed, once it is terminated. */
  async forgetMachine(spawnId: string, vmName: string): Promise<void> {
    await this.ctx.scripts.forgetSpawnMachine(spawnId, vmName);
  }

  /** Drops the spawn's slot (its attempts ended, or it went stale). */
  async finish(group: string, spawnId: string): Promise<void> {
    await this.ctx.scripts.finishSpawn(group, spawnId);
  }

  /** Spawns in flight of a group, oldest first. */
  async inFlight(group: string): Promise<SpawnInFlight[]> {
    return this.ctx.reader.spawnsInFlight(group);
  }
}
