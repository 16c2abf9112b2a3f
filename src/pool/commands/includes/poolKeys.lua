--[[
  Key names of the pool: every key a script uses is spelled here, and only here. Every key starts
  with `base` (KEYS[1] of each script), which carries the pool's hash tag, so that all keys of one
  pool live in one Redis Cluster slot. src/pool/keys.ts builds the same names (<name>Key here is
  <name> there; test/pool/scripts.test.ts checks that both agree).
]]
local function vmKey(base, name)
  return base .. 'vm:' .. name
end

-- Set of every VM name of the pool.
local function allVmsKey(base)
  return base .. 'vms'
end

-- Set of the names of the VMs with that IP.
local function ipKey(base, ip)
  return base .. 'ip:' .. ip
end

-- The name of the VM a task of an owner holds. Task ids are per owner: the same id of two owners
-- names two tasks. The owner's length keeps ("a:b", "c") and ("a", "b:c") apart.
local function ownerTaskKey(base, owner, taskId)
  return base .. 'owner_task:' .. string.len(owner) .. ':' .. owner .. ':' .. taskId
end

-- JSON {owner, sandbox, deadline} of the request of an owner that claimed a task and still waits for it.
local function ownerTaskClaimKey(base, owner, taskId)
  return base .. 'owner_task_claim:' .. string.len(owner) .. ':' .. owner .. ':' .. taskId
end

-- Before task ids were per owner: the VM a task held, and a task's claim, for every owner at once.
-- Only read (and deleted) for requests in flight during an upgrade (includes/taskOwner).
local function legacyTaskKey(base, taskId)
  return base .. 'task:' .. taskId
end

local function legacyTaskClaimKey(base, taskId)
  return base .. 'task_claim:' .. taskId
end

-- What every key of a group starts with.
local function groupKeyPrefixKey(base, group)
  return base .. 'group:' .. group .. ':'
end

local function stateKey(base, group, state)
  return base .. 'group:' .. group .. ':state:' .. state
end

-- Ready VMs bound to no owner, scored by last health check.
local function readyCleanKey(base, group)
  return base .. 'group:' .. group .. ':ready_clean'
end

-- Ready VMs bound to one owner and sandbox, scored by last health check.
-- The owner's length keeps ("a:b", "c") and ("a", "b:c") apart.
local function readyDirtyKey(base, group, owner, sandbox)
  return base .. 'group:' .. group .. ':ready_dirty:' .. string.len(owner) .. ':' .. owner .. ':' .. sandbox
end

-- Hash owner -> number of VMs of the group bound to that owner (for max_vm_per_user).
local function ownerVmsKey(base, group)
  return base .. 'group:' .. group .. ':owner_vms'
end

-- Hash unit -> amount: what the VMs bound to one owner use in a scope, summed over its groups
-- (includes/ownerUsage): scope 'all' (every group) or 'account:<name>' (the groups naming the
-- account), for the top-level and the account's max_resources_per_owner. The owner's length keeps
-- ("a:b", "c") and ("a", "b:c") apart.
local function ownerUsageKey(base, scope, owner)
  return base .. 'owner_usage:' .. scope .. ':' .. string.len(owner) .. ':' .. owner
end

-- Set of the groups in whose line the owner was blocked for a limit across groups (includes/ownerUsage):
-- unblocked there when one of its bound VMs goes.
local function ownerBlockedGroupsKey(base, owner)
  return base .. 'owner_blocked_groups:' .. string.len(owner) .. ':' .. owner
end

-- Time (epoch ms) of the last server start (markServerStart).
local function serverStartKey(base)
  return base .. 'server_start'
end

-- Position of the last server start in the check_seq counter.
local function serverStartSeqKey(base)
  return base .. 'server_start_seq'
end

-- Counter that orders health checks and server starts within one millisecond.
local function checkSeqKey(base)
  return base .. 'check_seq'
end

-- Sorted set of in_use VMs: member VM name, score lease expiry (epoch ms).
local function leasesKey(base)
  return base .. 'leases'
end

-- Sorted set of held VMs whose hold ends: member VM name, score the hold's end (epoch ms).
local function holdsExpiringKey(base)
  return base .. 'holds_expiring'
end

-- Due-time sets of the group (includes/setVmState: indexDue), so that reconcile reads only what is due.
-- VMs in got_ip, ready, in_use or check_health_failed, scored by last health check (0: never).
local function dueCheckKey(base, group)
  return base .. 'group:' .. group .. ':due:check'
end

-- Ready VMs bound to an owner and not held, scored by last release (0: never).
local function dueDirtyKey(base, group)
  return base .. 'group:' .. group .. ':due:dirty'
end

-- VMs in check_health, scored by the check's start.
local function dueCheckStartedKey(base, group)
  return base .. 'group:' .. group .. ':due:check_started'
end

-- VMs in terminating, scored by terminating_since.
local function dueTerminatingKey(base, group)
  return base .. 'group:' .. group .. ':due:terminating'
end

-- Set of the unbound, unheld VMs in got_ip or check_health: with ready_clean, the coming supply of spawn decisions.
local function comingKey(base, group)
  return base .. 'group:' .. group .. ':coming'
end

-- Set of the group's held VMs (counted by the pool page).
local function heldKey(base, group)
  return base .. 'group:' .. group .. ':held'
end

-- Hash of the group's spawn-to-ready time: ema_ms, samples.
local function bootTimeKey(base, group)
  return base .. 'group:' .. group .. ':boot_time'
end

-- Hash of the group's spawn circuit breaker (recordSpawnOutcome).
local function breakerKey(base, group)
  return base .. 'group:' .. group .. ':breaker'
end

-- Hash of acquire requests that arrived for the group, per minute: minute number -> count.
local function arrivalsKey(base, group)
  return base .. 'group:' .. group .. ':arrivals'
end

-- Sorted set of waiting acquire requests of the group, in serving order.
local function waitersKey(base, group)
  return base .. 'group:' .. group .. ':waiters'
end

-- Sorted set of waiting acquire requests of the group: member job id (a set's item:
-- setDemandMember), score deadline (epoch ms).
local function demandKey(base, group)
  return base .. 'group:' .. group .. ':demand'
end

-- Hash waiter member -> JSON {owner, sandbox, deadline, groups} of each waiting acquire request.
local function waiterInfoKey(base)
  return base .. 'waiter_info'
end

-- Why a waiting acquire request (by waiter member) was withdrawn; the acquire script ends it.
local function acquireCancelKey(base, waiter)
  return base .. 'acquire_cancel:' .. waiter
end

-- Sorted set of the group's spawns in flight: member spawn id, score start time (epoch ms).
local function spawningKey(base, group)
  return base .. 'group:' .. group .. ':spawning'
end

-- Hash of one spawn (by spawn id) across its attempts: what its hooks printed and whether its VM
-- entered the pool, so that a re-run after a crash adopts or terminates that machine.
local function spawnRecordKey(base, spawnId)
  return base .. 'spawn:' .. spawnId
end

-- The audit trail: a capped stream of every VM lifecycle event (includes/audit.lua).
local function auditEventsKey(base)
  return base .. 'audit_events'
end

-- How many events the audit trail keeps (about), when set (config audit.max_events).
local function auditMaxEventsKey(base)
  return base .. 'audit_max_events'
end

-- Hash {vm, lease} of the VM an acquire job (by job id) was given, kept as long as that lease ran
-- when given: a re-run of the job (its worker died after the assignment) gets the same VM back.
local function acquireAssignmentKey(base, jobId)
  return base .. 'acquire_assignment:' .. jobId
end

-- The fair line of a group (includes/acquireLine). Owners with waiting requests that may take a clean
-- VM, scored by (priority of their first request) * 2^31 + their turn: round-robin within a priority.
local function lineOwnersKey(base, group)
  return base .. 'group:' .. group .. ':line_owners'
end

-- Owners of the group's line at max_vm_per_user (same scores): skipped for clean VMs until one of
-- their VMs goes (removeVm).
local function lineBlockedKey(base, group)
  return base .. 'group:' .. group .. ':line_blocked'
end

-- One owner's waiting requests in the group, first come first served within a priority.
local function ownerLineKey(base, group, owner)
  return base .. 'group:' .. group .. ':owner_line:' .. string.len(owner) .. ':' .. owner
end

-- One owner and sandbox's waiting requests in the group (for the VMs bound to them).
local function sandboxLineKey(base, group, owner, sandbox)
  return base .. 'group:' .. group .. ':sandbox_line:' .. string.len(owner) .. ':' .. owner .. ':' .. sandbox
end

-- Counter of the turns given in the group's line (round-robin between owners).
local function lineTurnKey(base, group)
  return base .. 'group:' .. group .. ':line_turn'
end

-- Hash of the waiting sets that keep ready clean VMs of the group (includes/acquireLine
-- dispatchClean): waiter member -> '<VMs kept>:<priority>', as the group's last dispatch found
-- them; a set served through another group leaves alone what sets that came before it keep here.
local function setKeepsKey(base, group)
  return base .. 'group:' .. group .. ':set_keeps'
end

-- Sorted set of acquire job ids given a VM by the line whose job has not collected it yet, scored
-- by when (epoch ms): their parked jobs are promoted (woken), also after a lost wake.
local function acquireAssignedKey(base)
  return base .. 'acquire_assigned'
end

-- Pub/sub channel told when a VM of the group may be acquirable.
local function readyChannel(base, group)
  return base .. 'ready:' .. group
end

-- Hash of the pool's state marker: generation, epoch, run_id (the Redis run it was verified on).
local function poolStateKey(base)
  return base .. 'pool_state'
end

-- The reconcile cycle lock (src/pool/locks.ts): a token, with an expiry; one cycle at a time.
local function reconcileLockKey(base)
  return base .. 'reconcile_lock'
end

-- Hash of the pool's data-format version (src/pool/dataFormat.ts): version, migrating, migration, progress.
local function dataFormatKey(base)
  return base .. 'data_format'
end

-- The migration lock (src/pool/locks.ts): a token, with an expiry; one migration at a time.
local function migrationLockKey(base)
  return base .. 'migration_lock'
end

-- Hash of the group's current launch configuration (publishLaunch): fingerprint, launch_revision,
-- revision (moves forward at each change), published_at, published_by, started_at, and superseded
-- (the fingerprints that were current before, space-separated, the most recent last).
local function launchKey(base, group)
  return base .. 'group:' .. group .. ':launch'
end

-- Sorted set of the processes that run another launch configuration of the group than the
-- published one and so make no decision for it: member '<process id>|<fingerprint>', score last seen.
local function launchDeferringKey(base, group)
  return base .. 'group:' .. group .. ':launch_deferring'
end

-- Set of the group's VMs, not terminating, whose launch fingerprint is not the current one (outdated).
local function outdatedKey(base, group)
  return base .. 'group:' .. group .. ':outdated'
end

-- Clean ready outdated VMs, scored by last health check: acquire takes one only when ready_clean
-- has none (they serve until enough new VMs are ready).
local function readyOutdatedKey(base, group)
  return base .. 'group:' .. group .. ':ready_outdated'
end

-- Clean, unheld ready VMs scored by first_ready_at (their first passed check), for max_ready_age.
local function dueReadyAgeKey(base, group)
  return base .. 'group:' .. group .. ':due:ready_age'
end

-- Hash index -> group name: the config's group list that migrated a version-1 pool (data format 2).
local function legacyGroupNamesKey(base)
  return base .. 'legacy_group_names'
end

-- Hash of one shared metric (src/metrics/shared.ts).
local function metricKey(base, name)
  return base .. 'metrics:' .. name
end

-- Set of the group names the pool has known (config groups, and removed groups whose keys remain).
local function groupRegistryKey(base)
  return base .. 'groups'
end

-- Hash of the autohold rules: id -> JSON {id, owner, sandbox, group, count, for, reason, by, created_at}.
local function autoholdRulesKey(base)
  return base .. 'autohold_rules'
end
