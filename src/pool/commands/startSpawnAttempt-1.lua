--[[
  Starts one attempt of a spawn (a run of its spawn job), or tells what an earlier attempt left:
  the spawn's record (spawnRecordKey) outlives a crashed worker, so a re-run never makes a second
  machine for the same spawn, nor counts one twice against max_vm_total.

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] spawn id
    ARGV[2] group id
    ARGV[3] now (epoch ms)
    ARGV[4] how long the record is kept after this call (ms)
  Output:
    {OK, attempt}         a new attempt may run the spawn hook (attempt counts from 1); recorded
    {ALREADY_EXISTS, vm_name, vm_ip}
                          an earlier attempt added its VM to the pool: nothing to spawn
    {MACHINE_PENDING, vm_name, vm_ip, hook_done, slot_held}
                          an earlier attempt's hook printed this machine, which is not in the pool:
                          hook_done '1' when that hook succeeded with it; slot_held '1' while the
                          spawn still holds its slot. Nothing changed
    {NO_SPAWN_SLOT}       the spawn no longer holds a slot (finished, or dropped as stale) and left
                          no machine: nothing may be spawned. Nothing changed
]]
local base = KEYS[1]
local spawnId, group, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local record = spawnRecordKey(base, spawnId)
local fields = redis.call('HMGET', record, 'vm_name', 'vm_ip', 'hook_done', 'added')
local name, ip, done, added = fields[1], fields[2], fields[3], fields[4]
if added == '1' then
  return {ALREADY_EXISTS, name or '', ip or ''}
end
local slotHeld = redis.call('ZSCORE', spawningKey(base, group), spawnId) ~= false
if name then
  return {MACHINE_PENDING, name, ip or '', done or '', slotHeld and '1' or ''}
end
if not slotHeld then
  return {NO_SPAWN_SLOT}
end
redis.call('HSET', record, 'group', group, 'last_attempt_at', now)
redis.call('HSETNX', record, 'started_at', now)
local attempt = redis.call('HINCRBY', record, 'attempts', 1)
redis.call('PEXPIRE', record, ttl)
return {OK, attempt}
