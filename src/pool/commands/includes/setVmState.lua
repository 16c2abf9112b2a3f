--[[
  Moves a VM between states and keeps every index in step:
    - the per-group state sets;
    - the ready indexes (clean, or dirty per owner and sandbox), which acquire pops from.
  The VM hash must exist. Readiness is indexed with the VM's current bound_to_user, sandbox and
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

local function setVmState(base, name, newState)
  local key = vmKey(base, name)
  local fields = redis.call('HMGET', key, 'state', 'group', 'bound_to_user', 'sandbox', 'last_health_check')
  local oldState, group, owner, sandbox = fields[1], fields[2], fields[3], fields[4]
  if oldState == newState then
    return
  end
  if oldState then
    redis.call('SREM', stateKey(base, group, oldState), name)
    if oldState == 'ready' then
      removeFromReadyIndex(base, name, group, owner, sandbox)
    end
  end
  redis.call('SADD', stateKey(base, group, newState), name)
  redis.call('HSET', key, 'state', newState)
  if newState == 'ready' then
    local score = tonumber(fields[5]) or 0
    if owner then
      redis.call('ZADD', readyDirtyKey(base, group, owner, sandbox or ''), score, name)
    else
      redis.call('ZADD', readyCleanKey(base, group), score, name)
    end
  end
end
