--[[
  Drops the minutes that fell out of target_wait's window from the group's arrivals hash.

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] group id
    ARGV[2] first minute kept (epoch ms / 60000, an integer)
  Output:
    the number of minutes dropped
]]
local base = KEYS[1]
local group, firstMinute = ARGV[1], tonumber(ARGV[2])
--- @include "includes/arrivals"

return trimArrivals(base, group, firstMinute)
