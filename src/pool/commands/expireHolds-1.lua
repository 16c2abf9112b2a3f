--[[
  Ends the holds whose end has come (oldest first, at most a batch): each held VM is unheld as
  unholdVm does. Reads only the holds that are due (the expiring holds' sorted set).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] batch size
  Output:
    the names of the VMs whose hold ended
]]
local base = KEYS[1]
local now, batch = ARGV[1], tonumber(ARGV[2])
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/endHold"

local ended = {}
for _, name in ipairs(redis.call('ZRANGE', holdsExpiringKey(base), '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)) do
  local vm = redis.call('HMGET', vmKey(base, name), 'state', 'group', 'owner', 'sandbox', 'held_by', 'last_health_check')
  if vm[1] and vm[5] then
    endHold(base, name, vm[1], vm[2], vm[3], vm[4], vm[6])
    ended[#ended + 1] = name
  else
    redis.call('ZREM', holdsExpiringKey(base), name)
  end
end
return ended
