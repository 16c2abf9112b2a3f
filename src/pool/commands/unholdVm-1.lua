--[[
  Ends an operator's hold. A ready VM goes back into its ready index (clean, or dirty for its
  owner and sandbox), scored by its last health check, so acquire can hand it out again.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
  Output:
    OK         unheld
    NOT_HELD   the VM was not held (nothing changed)
    NOT_FOUND  no such VM
]]
local base = KEYS[1]
local name = ARGV[1]
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/endHold"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'group', 'owner', 'sandbox', 'held_by', 'last_health_check')
local state, group, owner, sandbox = vm[1], vm[2], vm[3], vm[4]
if not state then
  return NOT_FOUND
end
if not vm[5] then
  return NOT_HELD
end
endHold(base, name, state, group, owner, sandbox, vm[6])
return OK
