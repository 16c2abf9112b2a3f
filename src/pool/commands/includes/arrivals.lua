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
-- HDEL by batches: unpack takes at most about 8000 values, and a hash counted for days before
-- target_wait was turned on holds more minutes than that.
local function trimArrivals(base, group, firstMinute)
  local key = arrivalsKey(base, group)
  local batch, dropped = {}, 0
  for _, minute in ipairs(redis.call('HKEYS', key)) do
    if tonumber(minute) < firstMinute then
      batch[#batch + 1] = minute
      if #batch == 1000 then
        dropped = dropped + redis.call('HDEL', key, unpack(batch))
        batch = {}
      end
    end
  end
  if #batch > 0 then
    dropped = dropped + redis.call('HDEL', key, unpack(batch))
  end
  return dropped
end
