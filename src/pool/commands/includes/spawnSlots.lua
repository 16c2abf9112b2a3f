--[[
  The group's spawning set: its spawns in flight, each a slot against max_vm_total, scored by the
  spawn's start (epoch ms). Only these functions write it (registerSpawn, finishSpawn, addVm).
  Needs: poolKeys.
]]
--- @include "includes/poolKeys"

-- A new spawn takes a slot.
local function addSpawnSlot(base, group, spawnId, now)
  redis.call('ZADD', spawningKey(base, group), now, spawnId)
end

-- Drops the spawn's slot (its VM took it, or the spawn ended); false when it held none.
local function takeSpawnSlot(base, group, spawnId)
  return redis.call('ZREM', spawningKey(base, group), spawnId) == 1
end
