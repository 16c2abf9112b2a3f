--[[
  Marks a health check that never reported back as failed: only check_health becomes
  check_health_failed. check_fails is left as it is; the next check counts.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
  Output:
    OK           marked
    WRONG_STATE  the VM is not in check_health (nothing changed)
    NOT_FOUND    no such VM
]]
local base = KEYS[1]
local name = ARGV[1]
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/audit"

local state = redis.call('HGET', vmKey(base, name), 'state')
if not state then
  return NOT_FOUND
end
if state ~= 'check_health' then
  return WRONG_STATE
end
setVmState(base, name, 'check_health_failed')
recordEvent(base, 'check_failed', name, {'reason', 'the check never reported back'})
return OK
