--[[
  Starts a health check: records last_health_check and moves the VM to `check_health`, except that
  an `in_use` VM stays `in_use` (includes/startCheck). Allowed from got_ip, ready, in_use and
  check_health_failed, and from check_health only when a script started the check for the health
  job (check_pending, set by expireLeases), which this call takes over. Clears check_pending.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] now (epoch ms)
  Output:
    OK           check started
    WRONG_STATE  not allowed from the current state (nothing changed)
    NOT_FOUND    no such VM
]]
local base = KEYS[1]
local name, now = ARGV[1], ARGV[2]
--- @include "includes/replyCodes"
--- @include "includes/startCheck"

local key = vmKey(base, name)
local state = redis.call('HGET', key, 'state')
if not state then
  return NOT_FOUND
end
local pending = redis.call('HGET', key, 'check_pending')
if state ~= 'got_ip' and state ~= 'ready' and state ~= 'in_use' and state ~= 'check_health_failed'
    and not (state == 'check_health' and pending) then
  return WRONG_STATE
end
if pending then
  redis.call('HDEL', key, 'check_pending')
end
startCheck(base, name, now, state)
return OK
