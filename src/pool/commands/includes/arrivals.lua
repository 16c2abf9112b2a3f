--[[
  The group's arrivals hash (target_wait): acquire requests that arrived per minute. Only these
  functions write it: the acquire scripts count, trimArrivals drops the minutes out of the window.
  Needs: poolKeys.
]]
--- @include "includes/poolKeys"

-- Counts an acquire request that arrived for a group (its first group), in the minute of `now`.
local function countArrival(base, group, now)
  redis.call('HINCRBY', arrivalsKey(base, group), tostring(math.floor(tonumber(now) / 60000)), 1)
end

-- Drops the minutes before `firstMinute` (minute numbers, epoch ms / 60000); returns how many.
local function trimArrivals(base, group, firstMinute)
  local key = arrivalsKey(base, group)
  local old = {}
  for _, minute in ipairs(redis.call('HKEYS', key)) do
    if tonumber(minute) < firstMinute then
      old[#old + 1] = minute
    end
  end
  if #old > 0 then
    redis.call('HDEL', key, unpack(old))
  end
  return #old
end
