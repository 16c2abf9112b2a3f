--[[
  Starts a health check: records last_health_check and moves the VM to `check_health`, except that
  an `in_use` VM stays `in_use`. Allowed from got_ip, ready, in_use and check_health_failed, and
  from check_health only when a script started the check for the health job (check_pending, set by
  expireLeases), which this call takes over. Clears check_pending.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] VM name
    ARGV[2] now (epoch ms)
  Output:
    1   check started
    0   not allowed from the current state (nothing changed)
    -1  no such VM
]]
local base = KEYS[1]
local name, now = ARGV[1], ARGV[2]
--- @include "includes/setVmState"

local key = vmKey(base, name)
local state = redis.call('HGET', key, 'state')
if not state then
  return -1
end
local pending = redis.call('HGET', key, 'check_pending')
if state ~= 'got_ip' and state ~= 'ready' and state ~= 'in_use' and state ~= 'check_health_failed'
    and not (state == 'check_health' and pending) then
  return 0
end
if pending then
  redis.call('HDEL', key, 'check_pending')
end
if state ~= 'in_use' then
  setVmState(base, name, 'check_health')
end
-- check_seq orders this check against a server start in the same millisecond (markServerStart).
redis.call('HSET', key, 'last_health_check', now, 'check_seq', redis.call('INCR', base .. 'check_seq'))
return 1
