--[[
  Forgets the machine an earlier attempt of a spawn printed, once it was terminated (or handed to
  a terminate job), so that the next attempt may spawn again.

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] spawn id
    ARGV[2] VM name: only that machine is forgotten
  Output:
    OK         forgotten (also when the record held no machine or another one: nothing changed)
    ALREADY_EXISTS  the spawn's VM is in the pool (nothing changed)
]]
local base = KEYS[1]
local spawnId, name = ARGV[1], ARGV[2]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local record = spawnRecordKey(base, spawnId)
local fields = redis.call('HMGET', record, 'vm_name', 'added')
if fields[2] == '1' then
  return ALREADY_EXISTS
end
if fields[1] == name then
  redis.call('HDEL', record, 'vm_name', 'vm_ip', 'hook_done')
end
return OK
