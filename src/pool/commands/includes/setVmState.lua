--[[
  Moves a VM between states and keeps every index in step:
    - the per-group state sets;
    - the ready indexes (clean, or dirty per owner and sandbox), which acquire pops from;
    - the leases sorted set: leaving in_use ends the lease.
  Entering ready publishes the VM name on the group's ready channel, so waiting acquire jobs wake
  (a missed message only delays them until their slow safety retry).
  The VM hash must exist. Readiness is indexed with the VM's current owner, sandbox and
  last_health_check, so set those before moving a VM into `ready`.
]]
--- @include "includes/poolKeys"

local function removeFromReadyIndex(base, name, group, owner, sandbox)
  if owner then
    redis.call('ZREM', readyDirtyKey(base, group, owner, sandbox or ''), name)
  else
    redis.call('ZREM', readyCleanKey(base, group), name)
  end
end

-- Readiness index of a ready VM: clean, or dirty for its owner and sandbox.
local function addToReadyIndex(base, name, group, owner, sandbox, score)
  if owner then
    redis.call('ZADD', readyDirtyKey(base, group, owner, sandbox or ''), score, name)
  else
    redis.call('ZADD', readyCleanKey(base, group), score, name)
  end
end

local function setVmState(base, name, newState)
  local key = vmKey(base, name)
  local fields = redis.call('HMGET', key, 'state', 'group', 'owner', 'sandbox', 'last_health_check', 'held_by')
  local oldState, group, owner, sandbox = fields[1], fields[2], fields[3], fields[4]
  if oldState == newState then
    return
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
  -- A VM held by an operator stays out of the ready indexes (unholdVm puts it back).
  if newState == 'ready' and not fields[6] then
    addToReadyIndex(base, name, group, owner, sandbox, tonumber(fields[5]) or 0)
    redis.call('PUBLISH', readyChannel(base, group), name)
  end
end
