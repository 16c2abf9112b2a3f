--[[
  Starts a health check of a VM in `state`: it moves to check_health, except that an in_use VM
  stays in_use (a check during a build). Records last_health_check and the check's place in
  check_seq, which orders it against a server start in the same millisecond (markServerStart).
  Shared by startVmCheck and expireLeases.
]]
--- @include "includes/setVmState"

local function startCheck(base, name, now, state)
  if state ~= 'in_use' and state ~= 'check_health' then
    setVmState(base, name, 'check_health')
  end
  redis.call('HSET', vmKey(base, name), 'last_health_check', now, 'check_seq', redis.call('INCR', checkSeqKey(base)))
  indexDue(base, name)
end
