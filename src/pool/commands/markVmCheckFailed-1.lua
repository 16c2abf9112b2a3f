--[[
  Marks a health check that never reported back as failed: only check_health becomes
  check_health_failed. check_fails is left as it is; the next check counts.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] VM name
  Output:
    1   marked
    0   the VM is not in check_health (nothing changed)
    -1  no such VM
]]
local base = KEYS[1]
local name = ARGV[1]
--- @include "includes/setVmState"

local state = redis.call('HGET', vmKey(base, name), 'state')
if not state then
  return -1
end
if state ~= 'check_health' then
  return 0
end
setVmState(base, name, 'check_health_failed')
return 1
