--[[
  Moves a VM to `terminating` and records terminating_since (includes/startTermination). The
  caller enqueues the terminate job.

  With an allowed pre-state, acts only when the VM is in exactly that state (which may be
  `terminating`, to request termination again). Without one, a VM already terminating is left alone.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] allowed pre-state ('' for any)
    ARGV[3] now (epoch ms)
    ARGV[4] why (a termination reason, for the audit trail; '' or absent: other)
  Output:
    OK           moved to terminating
    WRONG_STATE  refused by the state rule (nothing changed)
    NOT_FOUND    no such VM
]]
local base = KEYS[1]
local name, allowed, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or ''
--- @include "includes/replyCodes"
--- @include "includes/startTermination"

local state = redis.call('HGET', vmKey(base, name), 'state')
if not state then
  return NOT_FOUND
end
if allowed ~= '' and state ~= allowed then
  return WRONG_STATE
end
if allowed == '' and state == 'terminating' then
  return WRONG_STATE
end
startTermination(base, name, now, reason ~= '' and reason or 'other')
return OK
