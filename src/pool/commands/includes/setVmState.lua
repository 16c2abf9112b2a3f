--[[
  Moves a VM between states and keeps every index in step:
    - the per-group state sets;
    - the ready indexes (clean, or dirty per owner and sandbox), which acquire pops from;
    - the leases sorted set: leaving in_use ends the lease;
    - the due-time sets and the coming set (indexDue), which reconcile reads instead of every VM;
    - the rollout's sets: a VM in the group's `outdated` set (its launch fingerprint is not the
      current one) goes, clean and ready, to ready_outdated instead of ready_clean (acquire takes
      one only when ready_clean has none), bound and ready to no ready index (never reused;
      reconcile retires it), and it leaves `outdated` when it starts terminating.
  Entering ready publishes the VM name on the group's ready channel, so waiting acquire jobs wake
  (a missed message only delays them until their slow safety retry).
  The VM hash must exist. Readiness is indexed with the VM's current owner, sandbox and
  last_health_check, so set those before moving a VM into `ready`.
]]
--- @include "includes/poolKeys"

local function removeFromReadyIndex(base, name, group, owner, sandbox)
  if owner then
    redis.call('ZREM', readyDirtyKey(base, group, owner, sandbox or ''), name)
  elseif redis.call('ZREM', readyCleanKey(base, group), name) == 0 then
    -- Only a VM that was not in ready_clean costs this second call (acquire's usual pick was there).
    redis.call('ZREM', readyOutdatedKey(base, group), name)
  end
end

local function isOutdated(base, name, group)
  return redis.call('SISMEMBER', outdatedKey(base, group), name) == 1
end

-- Readiness index of a ready VM: clean, or dirty for its owner and sandbox; an outdated one goes to
-- ready_outdated when clean, and to no index when bound (a build's VM of an old launch is not reused).
local function addToReadyIndex(base, name, group, owner, sandbox, score)
  if isOutdated(base, name, group) then
    if not owner then
      redis.call('ZADD', readyOutdatedKey(base, group), score, name)
    end
  elseif owner then
    redis.call('ZADD', readyDirtyKey(base, group, owner, sandbox or ''), score, name)
  else
    redis.call('ZADD', readyCleanKey(base, group), score, name)
  end
end

local DUE_CHECKED = { got_ip = true, ready = true, in_use = true, check_health_failed = true }
-- Unbound VMs on their way to ready; the clean ready ones are counted from ready_clean.
local COMING = { got_ip = true, check_health = true }

local function dueEntry(key, member, wanted, score)
  if wanted then
    redis.call('ZADD', key, tonumber(score) or 0, member)
  else
    redis.call('ZREM', key, member)
  end
end

-- indexDue on fields already read: f = {state, group, owner, held_by, last_health_check,
-- last_release, terminating_since, first_ready_at}. With `previous` (the state just left, the other fields
-- unchanged by the move), a set that neither state belongs in is left alone: the VM is not in it.
local ONLY_READY, ONLY_CHECKING, ONLY_TERMINATING = { ready = true }, { check_health = true }, { terminating = true }
local function mayBeIn(states, state, previous)
  return previous == nil or states[state] or states[previous]
end

local function indexDueFields(base, name, f, previous)
  local state, group, owner, held = f[1], f[2], f[3], f[4]
  if not state then
    return
  end
  dueEntry(dueCheckKey(base, group), name, DUE_CHECKED[state], f[5])
  if mayBeIn(ONLY_READY, state, previous) then
    dueEntry(dueDirtyKey(base, group), name, state == 'ready' and owner and not held, f[6])
    -- A VM ready since before first_ready_at was recorded gets it at its next passed check.
    dueEntry(dueReadyAgeKey(base, group), name, state == 'ready' and not owner and not held and f[8], f[8])
  end
  if mayBeIn(ONLY_CHECKING, state, previous) then
    dueEntry(dueCheckStartedKey(base, group), name, state == 'check_health', f[5])
  end
  if mayBeIn(ONLY_TERMINATING, state, previous) then
    dueEntry(dueTerminatingKey(base, group), name, state == 'terminating', f[7])
  end
  -- An outdated VM on its way to ready is no supply: the rollout spawns its replacement.
  if COMING[state] and not owner and not held and not isOutdated(base, name, group) then
    redis.call('SADD', comingKey(base, group), name)
  elseif mayBeIn(COMING, state, previous) then
    redis.call('SREM', comingKey(base, group), name)
  end
  if held then
    redis.call('SADD', heldKey(base, group), name)
  else
    redis.call('SREM', heldKey(base, group), name)
  end
end

-- Puts the VM in the due-time sets its hash calls for, and takes it out of the others. Called after
-- every change of state, owner, hold, last_health_check, last_release or terminating_since.
local function indexDue(base, name)
  indexDueFields(base, name, redis.call('HMGET', vmKey(base, name), 'state', 'group', 'owner', 'held_by', 'last_health_check', 'last_release', 'terminating_since', 'first_ready_at'))
end

-- Takes a VM out of every due-time set (removeVm).
local function unindexDue(base, name, group)
  redis.call('ZREM', dueCheckKey(base, group), name)
  redis.call('ZREM', dueDirtyKey(base, group), name)
  redis.call('ZREM', dueCheckStartedKey(base, group), name)
  redis.call('ZREM', dueTerminatingKey(base, group), name)
  redis.call('ZREM', dueReadyAgeKey(base, group), name)
  redis.call('SREM', comingKey(base, group), name)
  redis.call('SREM', heldKey(base, group), name)
  redis.call('SREM', outdatedKey(base, group), name)
  redis.call('ZREM', readyOutdatedKey(base, group), name)
end

-- Returns the fields it read: {old state, group, owner, sandbox, last_health_check, held_by,
-- last_release, terminating_since, first_ready_at}.
local function setVmState(base, name, newState)
  local key = vmKey(base, name)
  local fields = redis.call('HMGET', key, 'state', 'group', 'owner', 'sandbox', 'last_health_check', 'held_by', 'last_release', 'terminating_since', 'first_ready_at')
  local oldState, group, owner, sandbox = fields[1], fields[2], fields[3], fields[4]
  if oldState == newState then
    indexDue(base, name)
    return fields
  end
  if oldState then
    redis.call('SREM', stateKey(base, group, oldState), name)
    if oldState == 'ready' then
      removeFromReadyIndex(base, name, group, owner, sandbox)
    elseif oldState == 'in_use' then
      redis.call('ZREM', leasesKey(base), name)
      redis.call('HDEL', key, 'lease_id', 'lease_expires_at', 'lease_timeout_ms')
    end
  end
  redis.call('SADD', stateKey(base, group, newState), name)
  redis.call('HSET', key, 'state', newState)
  local firstReadyAt = fields[9]
  if newState == 'ready' then
    -- Its age counts from the check that first made it ready; recorded (and indexed in
    -- due:ready_age) only in a group with max_ready_age, as the group's launch record says.
    if redis.call('HEXISTS', launchKey(base, group), 'max_ready_age_ms') == 1 and not firstReadyAt then
      firstReadyAt = tostring(tonumber(fields[5]) or 0)
      redis.call('HSET', key, 'first_ready_at', firstReadyAt)
    end
  elseif newState == 'terminating' then
    -- Retiring: no longer a VM of an old launch to replace.
    redis.call('SREM', outdatedKey(base, group), name)
  end
  -- A VM held by an operator stays out of the ready indexes (unholdVm puts it back).
  if newState == 'ready' and not fields[6] then
    addToReadyIndex(base, name, group, owner, sandbox, tonumber(fields[5]) or 0)
    redis.call('PUBLISH', readyChannel(base, group), name)
  end
  -- The move changed the state alone (and lease fields, which no due-time set uses, and
  -- first_ready_at, passed as it is now).
  indexDueFields(base, name, {newState, group, owner, fields[6], fields[5], fields[7], fields[8], firstReadyAt}, oldState or nil)
  return fields
end
