--[[
  Records the machine a spawn's hook printed (as soon as it printed it, and again once the hook
  succeeded), so that a re-run after a crash can adopt or terminate it. A spawn whose VM is in the
  pool already keeps its record as it is.

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] spawn id
    ARGV[2] VM name
    ARGV[3] VM IP ('' when not printed yet)
    ARGV[4] '1' when the hook succeeded with this machine, else ''
    ARGV[5] how long the record is kept after this call (ms)
  Output:
    OK              recorded
    ALREADY_EXISTS  the spawn's VM is in the pool already (nothing changed)
]]
local base = KEYS[1]
local spawnId, name, ip, done, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local record = spawnRecordKey(base, spawnId)
if redis.call('HGET', record, 'added') == '1' then
  return ALREADY_EXISTS
end
redis.call('HSET', record, 'vm_name', name, 'vm_ip', ip, 'hook_done', done)
redis.call('PEXPIRE', record, ttl)
return OK
