--[[
  Moves a VM to `terminating` and records terminating_since. The caller enqueues the terminate job.

  With an allowed pre-state, acts only when the VM is in exactly that state (which may be
  `terminating`, to request termination again). Without one, a VM already terminating is left alone.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] VM name
    ARGV[2] allowed pre-state ('' for any)
    ARGV[3] now (epoch ms)
  Output:
    1   moved to terminating
    0   refused by the state rule (nothing changed)
    -1  no such VM
]]
local base = KEYS[1]
local name, allowed, now = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/setVmState"

local key = vmKey(base, name)
local state = redis.call('HGET', key, 'state')
if not state then
  return -1
end
if allowed ~= '' and state ~= allowed then
  return 0
end
if allowed == '' and state == 'terminating' then
  return 0
end
setVmState(base, name, 'terminating')
redis.call('HSET', key, 'terminating_since', now)
return 1
