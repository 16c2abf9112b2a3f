--[[
  Adds a new VM to the pool in state `got_ip`.

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] VM name
    ARGV[2] VM IP
    ARGV[3] group id
    ARGV[4] now (epoch ms), kept as added_at
    ARGV[5] spawn id of the spawn that made it, or '' (added by hand): the spawn's slot among the
            group's spawns in flight becomes this VM, at once, and its record says so
    ARGV[6] how long the spawn's record is kept (ms); with a spawn id only
    ARGV[7] when its spawn started (epoch ms; '' when not spawned), kept as spawn_started_at: the
            first passed check measures the group's boot time from it (recordHealthCheckResult)
    ARGV[8] launch fingerprint of the config that made it ('' or absent: unknown, as a machine
            added by hand; such a VM is never outdated), kept as launch_fingerprint. One that is
            not the group's published fingerprint (an old spawn worker's) joins `outdated` at once
  Output:
    OK              added
    ALREADY_EXISTS  a VM of that name is already in the pool (nothing changed)
    NO_SPAWN_SLOT   the spawn no longer holds a slot (finished, or dropped as stale): it must not
                    add a VM, which max_vm_total may no longer allow (nothing changed)
]]
local base = KEYS[1]
local name, ip, group, now, spawnId, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local spawnStartedAt = ARGV[7] or ''
local fingerprint = ARGV[8] or ''
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/audit"
--- @include "includes/spawnSlots"

local key = vmKey(base, name)
if redis.call('EXISTS', key) == 1 then
  return ALREADY_EXISTS
end
if spawnId and spawnId ~= '' then
  if not takeSpawnSlot(base, group, spawnId) then
    return NO_SPAWN_SLOT
  end
  local record = spawnRecordKey(base, spawnId)
  redis.call('HSET', record, 'vm_name', name, 'vm_ip', ip, 'added', '1')
  redis.call('PEXPIRE', record, ttl)
  redis.call('HSET', key, 'spawn_id', spawnId)
end
redis.call('HSET', key, 'vm_name', name, 'vm_ip', ip, 'group', group, 'check_fails', 0, 'builds_count', 0, 'added_at', now)
redis.call('SADD', allVmsKey(base), name)
redis.call('SADD', ipKey(base, ip), name)
if spawnStartedAt ~= '' then
  redis.call('HSET', key, 'spawn_started_at', spawnStartedAt)
end
if fingerprint ~= '' then
  redis.call('HSET', key, 'launch_fingerprint', fingerprint)
  local current = redis.call('HGET', launchKey(base, group), 'fingerprint')
  if current and current ~= fingerprint then
    redis.call('SADD', outdatedKey(base, group), name)
  end
end
setVmState(base, name, 'got_ip')
recordEvent(base, 'spawned', name, {'ip', ip, 'launch', fingerprint})
return OK
