/**
 * Reply codes of the pool's Lua scripts (commands/), as BullMQ keeps enums/error-code.ts: one table,
 * and each code means the same in every script. A script replies with a code, or with a list whose
 * first element is one. Positive: the call did what it was asked; negative: it did not, and says why
 * (nothing changed unless the script's header says so). commands/includes/replyCodes.lua spells the
 * same table for the scripts (test/pool/scripts.test.ts checks that they agree), and every script
 * header names its replies by these names.
 *
 * Only the wrappers in poolScripts.ts read these codes; everything else gets their typed results.
 */
export const ReplyCodes = {
  /** Done as asked. */
  OK: 1,
  /** acquireVm: the task already held this VM, which is handed back with its lease. */
  REATTACHED: 2,
  /** recordHealthCheckResult: the failed check was counted (the VM stays below its limit). */
  CHECK_FAILED: 3,
  /** recordHealthCheckResult: the failed check was one too many; the VM moved to terminating. */
  TERMINATING: 4,
  /** recordSpawnOutcome: the failure opened the group's circuit breaker. */
  OPENED: 5,
  /** checkPoolState: the pool had no state marker and the caller knew none: one was created. */
  CREATED: 6,
  /** releaseVm: released, and held by an autohold rule (a failed build): {HELD, rule id}. */
  HELD: 7,

  /** No such VM. */
  NOT_FOUND: -1,
  /** The VM's state does not allow the call (for example release of a VM that is not in_use). */
  WRONG_STATE: -2,
  /** The VM is in_use under another lease than the one given. */
  LEASE_MISMATCH: -3,
  /** addVm: a VM of that name is already in the pool. */
  ALREADY_EXISTS: -4,
  /** holdVm: the VM is held already (the first holder stays). */
  ALREADY_HELD: -5,
  /** unholdVm: the VM is not held. */
  NOT_HELD: -6,
  /** acquireVm, claimTask: the task holds a VM, or has a request waiting, for another owner or sandbox. */
  TASK_CONFLICT: -7,
  /** acquireVm: no VM fits the request. */
  NO_VM: -8,
  /** acquireVm: a VM fits, but a request ahead in line could take it. */
  DEFERRED: -9,
  /** extendCycleLock, releaseCycleLock (locks.ts), saveMigrationProgress, finishMigration: the lock is not held with this token. */
  LOCK_NOT_HELD: -10,
  /** acquireVm: the waiting request was withdrawn (cancelAcquire); it left the line and gets no VM. */
  CANCELLED: -11,
  /**
   * startSpawnAttempt: an earlier attempt of the spawn printed a machine that is not in the pool:
   * it is adopted or terminated before anything else is spawned.
   */
  MACHINE_PENDING: -12,
  /**
   * startSpawnAttempt, addVm (with a spawn id): the spawn no longer holds a slot among its group's
   * spawns in flight (it finished, or reconcile dropped it as stale), so it must not add a VM.
   */
  NO_SPAWN_SLOT: -13,
  /** checkPoolState: the state marker is gone while the caller knew one (Redis lost its data). */
  POOL_LOST: -14,
  /** checkPoolState, verifyPoolState, recoverPool: the marker has another generation than the caller's (another process recovered). */
  POOL_CHANGED: -15,
  /** checkPoolState: the marker was verified on another Redis run (a restart or a failover since): not proven current. */
  POOL_RESTARTED: -16,
  /** checkPoolState: the marker's epoch is below the one the caller saw (Redis went back in time). */
  POOL_REGRESSED: -17,
  /** acquireVm: the request would wait, but its owner has max_waiting_per_owner requests waiting in a group already. */
  TOO_MANY_WAITING: -18,
  /**
   * startMigration: the pool's data format is at the migration's version or past it already (another process migrated);
   * saveMigrationProgress: the migration is no longer in progress;
   * releaseVm, renewLease, claimTask, cancelAcquire ({DATA_FORMAT_AHEAD, needed}): the pool's data
   * format, or a migration in progress, is past the caller's (includes/dataFormat): nothing changed.
   */
  DATA_FORMAT_AHEAD: -19,
  /**
   * publishLaunch: the group's published launch configuration is newer than the caller's (a higher
   * launch_revision, or published after the caller started): the caller makes no decision for it.
   */
  SUPERSEDED: -20,
  /** registerSpawn: one more VM would pass a resource limit of its group or account (the spawn waits as quota_full). */
  QUOTA_FULL: -30,
} as const;

export type ReplyCodeName = keyof typeof ReplyCodes;
export type ReplyCode = (typeof ReplyCodes)[ReplyCodeName];

const names = new Map<number, ReplyCodeName>(Object.entries(ReplyCodes).map(([name, code]) => [code, name as ReplyCodeName]));

/** The name of a reply code, for messages (`code 7` for a number the table does not have). */
export function replyCodeName(code: unknown): string {
  return (typeof code === 'number' && names.get(code)) || `code ${String(code)}`;
}
