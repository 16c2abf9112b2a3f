--[[
  Adds a new VM to the pool in state `got_ip`.

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] VM name
    ARGV[2] VM IP
    ARGV[3] group id
    ARGV[4] now (epoch ms), kept as added_at
  Output:
    OK              added
    ALREADY_EXISTS  a VM of that name is already in the pool (nothing changed)
]]
local base = KEYS[1]
local name, ip, group, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/audit"

local key = vmKey(base, name)
if redis.call('EXISTS', key) == 1 then
  return ALREADY_EXISTS
end
redis.call('HSET', key, 'vm_name', name, 'vm_ip', ip, 'group', group, 'check_fails', 0, 'builds_count', 0, 'added_at', now)
redis.call('SADD', allVmsKey(base), name)
redis.call('SADD', ipKey(base, ip), name)
setVmState(base, name, 'got_ip')
recordEvent(base, 'spawned', name, {'ip', ip})
return OK
