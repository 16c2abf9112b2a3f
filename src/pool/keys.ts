/**
 * Redis key names of one pool. All of them share the `{vmpool}` hash tag, so that every script's
 * keys sit in one Redis Cluster slot. The Lua side builds the same names
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
    task: (taskId: string) => `${base}task:${taskId}`,
    /** JSON {owner, sandbox, deadline} of the request that claimed a task and still waits for it (includes/taskOwner.lua). */
    taskClaim: (taskId: string) => `${base}task_claim:${taskId}`,
    state: (group: number, state: string) => `${base}group:${group}:state:${state}`,
    /** Ready VMs bound to no owner, scored by last health check. */
    readyClean: (group: number) => `${base}group:${group}:ready_clean`,
    /**
     * Ready VMs bound to one owner and sandbox, scored by last health check. The owner's length (in
     * bytes, as Lua's string.len) keeps ("a:b", "c") and ("a", "b:c") apart.
     */
    readyDirty: (group: number, owner: string, sandbox: string) => `${base}group:${group}:ready_dirty:${Buffer.byteLength(owner)}:${owner}:${sandbox}`,
    /** Hash owner -> number of VMs of the group bound to that owner (for max_vm_per_user). */
    ownerVms: (group: number) => `${base}group:${group}:owner_vms`,
    groupInfo: (group: number) => `${base}group:${group}:info`,
    serverStart: `${base}server_start`,
    /** Position of the last server start in the check_seq counter (markServerStart-1.lua). */
    serverStartSeq: `${base}server_start_seq`,
    /** Counter that orders health checks and server starts within one millisecond. */
    checkSeq: `${base}check_seq`,
    /** Sorted set of spawns in flight: member spawn id, score start time (epoch ms). */
    spawning: (group: number) => `${base}group:${group}:spawning`,
    /** Sorted set of waiting acquire requests: member acquire job id, score deadline (epoch ms). */
    demand: (group: number) => `${base}group:${group}:demand`,
    /** Sorted set of in_use VMs with a lease: member VM name, score lease expiry (epoch ms). */
    leases: `${base}leases`,
    /** Sorted set of held VMs whose hold ends: member VM name, score the hold's end (epoch ms). */
    holdsExpiring: `${base}holds_expiring`,
    /**
     * Sorted set of acquire requests waiting in the group, in serving order: score BullMQ priority
     * (0 first), member `<job timestamp, 15 digits>|<job id>` (older first within a priority).
     */
    waiters: (group: number) => `${base}group:${group}:waiters`,
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
    lineOwners: (group: number) => `${base}group:${group}:line_owners`,
    /** Owners of the group's line at max_vm_per_user (same scores), skipped for clean VMs. */
    lineBlocked: (group: number) => `${base}group:${group}:line_blocked`,
    /** One owner's waiting requests in the group: score priority, member the waiter member. */
    ownerLine: (group: number, owner: string) => `${base}group:${group}:owner_line:${Buffer.byteLength(owner)}:${owner}`,
    /** One owner and sandbox's waiting requests in the group (for the VMs bound to them). */
    sandboxLine: (group: number, owner: string, sandbox: string) => `${base}group:${group}:sandbox_line:${Buffer.byteLength(owner)}:${owner}:${sandbox}`,
    /** Counter of the turns given in the group's line. */
    lineTurn: (group: number) => `${base}group:${group}:line_turn`,
    /** Acquire job ids given a VM by the line that have not collected it yet, scored by when (epoch ms). */
    acquireAssigned: `${base}acquire_assigned`,
    /** Hash of machines the group's provider lists but the pool does not know: name -> first seen (epoch ms). */
    orphanUnknown: (group: number) => `${base}group:${group}:orphan_unknown`,
    /** Hash of the group's pool VMs missing from the provider's last list: name -> first missed (epoch ms). */
    orphanMissing: (group: number) => `${base}group:${group}:orphan_missing`,
    /** The reconcile cycle lock (src/reconcile/cycleLock.ts): one cycle at a time across replicas. */
    reconcileLock: `${base}reconcile_lock`,
    /** Pub/sub channel told (by the scripts) when a VM of the group may be acquirable. */
    readyChannel: (group: number) => `${base}ready:${group}`,
  };
}

export type PoolKeys = ReturnType<typeof poolKeys>;

