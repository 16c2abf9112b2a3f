--[[
  Key names of the pool. Every key starts with `base` (KEYS[1] of each script), which carries the
  pool's hash tag, so that all keys of one pool live in one Redis Cluster slot.
]]
local function vmKey(base, name)
  return base .. 'vm:' .. name
end

local function stateKey(base, group, state)
  return base .. 'group:' .. group .. ':state:' .. state
end

-- Ready VMs bound to nobody, scored by last health check.
local function readyCleanKey(base, group)
  return base .. 'group:' .. group .. ':ready_clean'
end

-- Ready VMs bound to one owner and sandbox, scored by last health check.
-- The owner's length keeps ("a:b", "c") and ("a", "b:c") apart.
local function readyDirtyKey(base, group, owner, sandbox)
  return base .. 'group:' .. group .. ':ready_dirty:' .. string.len(owner) .. ':' .. owner .. ':' .. sandbox
end

-- Hash owner -> number of VMs of the group bound to that owner (for max_vm_per_user).
local function userVmsKey(base, group)
  return base .. 'group:' .. group .. ':user_vms'
end

local function taskKey(base, taskId)
  return base .. 'task:' .. taskId
end

-- Sorted set of in_use VMs: member VM name, score lease expiry (epoch ms).
local function leasesKey(base)
  return base .. 'leases'
end

-- Pub/sub channel told when a VM of the group may be acquirable (keys.ts readyChannel).
local function readyChannel(base, group)
  return base .. 'ready:' .. group
end

-- Sorted set of waiting acquire requests of the group (keys.ts waiters).
local function waitersKey(base, group)
  return base .. 'group:' .. group .. ':waiters'
end

local function demandKey(base, group)
  return base .. 'group:' .. group .. ':demand'
end

local function waiterInfoKey(base)
  return base .. 'waiter_info'
end
