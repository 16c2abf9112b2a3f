/**
 * Redis key names of one pool. All of them share the `{vmpool}` hash tag, so that every script's
 * keys sit in one Redis Cluster slot. A group's keys carry its name (`group:<name>:...`; the config
 * schema keeps names to GROUP_NAME_PATTERN), never its index in the config's list. The Lua side builds the same names
 * (commands/includes/poolKeys.lua; test/pool/scripts.test.ts checks that both agree).
 */
export function poolKeyBase(prefix: string): string {
  return `${prefix}:{vmpool}:`;
}

export function poolKeys(prefix: string) {
  const base = poolKeyBase(prefix);
  return {
    base,
    vm: (name: string) => `${base}vm:${name}`,
    allVms: `${base}vms`,
    ip: (ip: string) => `${base}ip:${ip}`,
    /**
     * The name of the VM a task of an owner holds. Task ids are per owner; the owner's length (in
     * bytes, as Lua's string.len) keeps ("a:b", "c") and ("a", "b:c") apart.
     */
    ownerTask: (owner: string, taskId: string) => `${base}owner_task:${Buffer.byteLength(owner)}:${owner}:${taskId}`,
    /** JSON {owner, sandbox, deadline} of the request of an owner that claimed a task and still waits for it (includes/taskOwner.lua). */
    ownerTaskClaim: (owner: string, taskId: string) => `${base}owner_task_claim:${Buffer.byteLength(owner)}:${owner}:${taskId}`,
    /** Before task ids were per owner: the VM a task held, for every owner (read for requests in flight during an upgrade). */
    legacyTask: (taskId: string) => `${base}task:${taskId}`,
    /** Before task ids were per owner: a task's claim, for every owner. */
    legacyTaskClaim: (taskId: string) => `${base}task_claim:${taskId}`,
    /** What every key of a group starts with (a group's keys are found by it: the data-format migration, `vmpool group rename`). */
    groupKeyPrefix: (group: string) => `${base}group:${group}:`,
    state: (group: string, state: string) => `${base}group:${group}:state:${state}`,
    /** Ready VMs bound to no owner, scored by last health check. */
    readyClean: (group: string) => `${base}group:${group}:ready_clean`,
    /**
     * Ready VMs bound to one owner and sandbox, scored by last health check. The owner's length (in
     * bytes, as Lua's string.len) keeps ("a:b", "c") and ("a", "b:c") apart.
     */
    readyDirty: (group: string, owner: string, sandbox: string) => `${base}group:${group}:ready_dirty:${Buffer.byteLength(owner)}:${owner}:${sandbox}`,
    /** Hash owner -> number of VMs of the group bound to that owner (for max_vm_per_user). */
    ownerVms: (group: string) => `${base}group:${group}:owner_vms`,
    groupInfo: (group: string) => `${base}group:${group}:info`,
    /**
     * Hash unit -> amount: what the VMs bound to one owner use in a scope, summed over its groups
     * (commands/includes/ownerUsage.lua): scope `all` (every group) or `account:<name>` (the groups
     * naming the account), for the top-level and the account's max_resources_per_owner. The owner's
     * length (in bytes, as Lua's string.len) keeps ("a:b", "c") and ("a", "b:c") apart.
     */
    ownerUsage: (scope: string, owner: string) => `${base}owner_usage:${scope}:${Buffer.byteLength(owner)}:${owner}`,
    /** Set of the groups in whose line the owner was blocked for a limit across groups: unblocked there when one of its bound VMs goes. */
    ownerBlockedGroups: (owner: string) => `${base}owner_blocked_groups:${Buffer.byteLength(owner)}:${owner}`,
    serverStart: `${base}server_start`,
    /** Position of the last server start in the check_seq counter (markServerStart-1.lua). */
    serverStartSeq: `${base}server_start_seq`,
    /** Counter that orders health checks and server starts within one millisecond. */
    checkSeq: `${base}check_seq`,
    /** Sorted set of spawns in flight: member spawn id, score start time (epoch ms). */
    spawning: (group: string) => `${base}group:${group}:spawning`,
    /**
     * Hash of one spawn across its attempts (startSpawnAttempt-1.lua): group, attempts, the machine
     * its hook printed (vm_name, vm_ip), hook_done once the hook succeeded, added once its VM entered
     * the pool. Expires a day after the last attempt started.
     */
    spawnRecord: (spawnId: string) => `${base}spawn:${spawnId}`,
    /** Sorted set of waiting acquire requests: member acquire job id, score deadline (epoch ms). */
    demand: (group: string) => `${base}group:${group}:demand`,
    /** Sorted set of in_use VMs with a lease: member VM name, score lease expiry (epoch ms). */
    leases: `${base}leases`,
    /** Sorted set of held VMs whose hold ends: member VM name, score the hold's end (epoch ms). */
    holdsExpiring: `${base}holds_expiring`,
    /**
     * Sorted set of acquire requests waiting in the group, in serving order: score BullMQ priority
     * (0 first), member `<job timestamp, 15 digits>|<job id>` (older first within a priority).
     */
    waiters: (group: string) => `${base}group:${group}:waiters`,
    /** Hash waiter member -> JSON {owner, sandbox, deadline, groups} of each waiting acquire request. */
    waiterInfo: `${base}waiter_info`,
    /** Why a waiting acquire request (by waiter member) was withdrawn (cancelAcquire-1.lua); the acquire script ends it. */
    acquireCancel: (waiter: string) => `${base}acquire_cancel:${waiter}`,
    /**
     * Hash {vm, lease} of the VM an acquire job (by job id) was given, expiring with that lease's
     * first term: a re-run of the job (its worker died after the assignment) gets the same VM back.
     */
    acquireAssignment: (jobId: string) => `${base}acquire_assignment:${jobId}`,
    /**
     * The fair line of a group (commands/includes/acquireLine.lua): owners with waiting requests
     * that may take a clean VM, scored by (priority of their first request) * 2^31 + their turn.
     */
    lineOwners: (group: string) => `${base}group:${group}:line_owners`,
    /** Owners of the group's line at max_vm_per_user (same scores), skipped for clean VMs. */
    lineBlocked: (group: string) => `${base}group:${group}:line_blocked`,
    /** One owner's waiting requests in the group: score priority, member the waiter member. */
    ownerLine: (group: string, owner: string) => `${base}group:${group}:owner_line:${Buffer.byteLength(owner)}:${owner}`,
    /** One owner and sandbox's waiting requests in the group (for the VMs bound to them). */
    sandboxLine: (group: string, owner: string, sandbox: string) => `${base}group:${group}:sandbox_line:${Buffer.byteLength(owner)}:${owner}:${sandbox}`,
    /** Counter of the turns given in the group's line. */
    lineTurn: (group: string) => `${base}group:${group}:line_turn`,
    /**
     * Hash of the waiting sets that keep ready clean VMs of the group, as its last dispatch found
     * them: waiter member -> `<VMs kept>:<priority>` (commands/includes/acquireLine.lua).
     */
    setKeeps: (group: string) => `${base}group:${group}:set_keeps`,
    /** Acquire job ids given a VM by the line that have not collected it yet, scored by when (epoch ms). */
    acquireAssigned: `${base}acquire_assigned`,
    /** Hash of machines the group's provider lists but the pool does not know: name -> first seen (epoch ms). */
    orphanUnknown: (group: string) => `${base}group:${group}:orphan_unknown`,
    /** Hash of the group's pool VMs missing from the provider's last list: name -> first missed (epoch ms). */
    orphanMissing: (group: string) => `${base}group:${group}:orphan_missing`,
    /** Set of machines the group's provider lists with no pool id, already reported (logged once each). */
    orphanUntagged: (group: string) => `${base}group:${group}:orphan_untagged`,
    /** List of the group's history samples for the pool page's charts, newest first, capped (src/reconcile/history.ts). */
    history: (group: string) => `${base}group:${group}:history`,
    /** JSON AcquireWaitMark: the acquire wait histogram at the last history sample. */
    historyAcquire: `${base}history_acquire`,
    /**
     * Hash of the pool's state marker (src/runtime/poolStateWatch.ts): generation (a random id, new
     * after each recovery), epoch (bumped by every process's check, never lower after a recovery),
     * run_id (the Redis run the state was verified on), recovered_at, sweep_generation.
     */
    poolState: `${base}pool_state`,
    /** The reconcile cycle lock (locks.ts): one cycle at a time across replicas. */
    reconcileLock: `${base}reconcile_lock`,
    /**
     * Hash of the pool's data-format version (dataFormat.ts): version, and while a migration runs,
     * migrating (its version), migration (its name), progress (where it is, for a resume).
     */
    dataFormat: `${base}data_format`,
    /** The migration lock (locks.ts): one process migrates the data format at a time. */
    migrationLock: `${base}migration_lock`,
    /** Due-time set (includes/setVmState indexDue): VMs in got_ip, ready, in_use or check_health_failed, scored by last health check (0: never). */
    dueCheck: (group: string) => `${base}group:${group}:due:check`,
    /** Due-time set: ready VMs bound to an owner and not held, scored by last release (0: never). */
    dueDirty: (group: string) => `${base}group:${group}:due:dirty`,
    /** Due-time set: VMs in check_health, scored by the check's start. */
    dueCheckStarted: (group: string) => `${base}group:${group}:due:check_started`,
    /** Due-time set: VMs in terminating, scored by terminating_since. */
    dueTerminating: (group: string) => `${base}group:${group}:due:terminating`,
    /** Set of the unbound, unheld VMs in got_ip or check_health (with readyClean, the coming supply of spawn decisions). */
    coming: (group: string) => `${base}group:${group}:coming`,
    /**
     * Hash of the group's current launch configuration (publishLaunch-1.lua): fingerprint,
     * launch_revision, revision (moves forward at each change), published_at, published_by, started_at,
     * superseded (the fingerprints that were current before, space-separated, the most recent last).
     */
    launch: (group: string) => `${base}group:${group}:launch`,
    /** Sorted set of processes whose config of the group is not the published one: member `<process id>|<fingerprint>`, score last seen. */
    launchDeferring: (group: string) => `${base}group:${group}:launch_deferring`,
    /** Set of the group's VMs, not terminating, whose launch fingerprint is not the current one. */
    outdated: (group: string) => `${base}group:${group}:outdated`,
    /** Clean ready outdated VMs, scored by last health check: acquire takes one only when readyClean has none. */
    readyOutdated: (group: string) => `${base}group:${group}:ready_outdated`,
    /** Due-time set: clean, unheld ready VMs scored by first_ready_at (max_ready_age). */
    dueReadyAge: (group: string) => `${base}group:${group}:due:ready_age`,
    /** Set of the group's held VMs (includes/setVmState indexDue; counted by the pool page). */
    held: (group: string) => `${base}group:${group}:held`,
    /** Hash of the group's spawn-to-ready time: ema_ms (exponential moving average), samples (recordHealthCheckResult-1.lua). */
    bootTime: (group: string) => `${base}group:${group}:boot_time`,
    /** Hash of the group's spawn circuit breaker: state, error_class, failures, openings, opened_at, open_until, manual, message (recordSpawnOutcome-1.lua). */
    breaker: (group: string) => `${base}group:${group}:breaker`,
    /**
     * JSON {units, limit, at} while the group's spawns wait for resources (reconcile found the next
     * spawn over max_resources or its account's limits); expires a few cycles after the last finding.
     */
    quotaFull: (group: string) => `${base}group:${group}:quota_full`,
    /** Hash of the autohold rules: id -> JSON {id, owner, sandbox, group, count, for, reason, by, created_at} (includes/autohold.lua). */
    autoholdRules: `${base}autohold_rules`,
    /** Counter of autohold rule ids. */
    autoholdSeq: `${base}autohold_seq`,
    /** JSON {report, fetchedAt} of the account's last quota_cmd answer, shared by every replica (src/pool/quota.ts). */
    accountQuota: (account: string) => `${base}account:${account}:quota`,
    /** Hash of acquire requests that arrived for the group, per minute: minute number (epoch ms / 60000) -> count. */
    arrivals: (group: string) => `${base}group:${group}:arrivals`,
    /**
     * The audit trail: a capped stream of every VM lifecycle event, written by the scripts that make
     * the transitions (includes/audit.lua), so that it cannot disagree with the pool's state.
     */
    auditEvents: `${base}audit_events`,
    /** How many events the audit trail keeps (about: MAXLEN ~); config audit.max_events, written by reconcile. */
    auditMaxEvents: `${base}audit_max_events`,
    /** Hash of one shared metric (src/metrics/shared.ts), written by workers and read by every web process. */
    metric: (name: string) => `${base}metrics:${name}`,
    /**
     * JSON of the group's config as reconcile last published it (provider and check `env` left
     * out: secrets stay out of Redis), for the processes that drain the group once it left the
     * config: its terminate hook, health check and limits.
     */
    publishedGroupConfig: (group: string) => `${base}group:${group}:config`,
    /** Set of the group names the pool has known (config groups, and groups removed from the config whose keys remain). */
    groupRegistry: `${base}groups`,
    /**
     * Hash index -> group name: the config's group list that migrated a version-1 pool (whose keys
     * and payloads named groups by index), so that a payload of a version-1 producer still carrying
     * an index, and an old audit event, read by name (dataFormat.ts, migration 2).
     */
    legacyGroupNames: `${base}legacy_group_names`,
    /** Pub/sub channel told (by the scripts) when a VM of the group may be acquirable. */
    readyChannel: (group: string) => `${base}ready:${group}`,
  };
}

export type PoolKeys = ReturnType<typeof poolKeys>;

