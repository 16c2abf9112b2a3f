--[[
  Deletes a VM record and every index entry of it. Only a `terminating` VM is removed.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] VM name
  Output:
    1   removed
    0   the VM is not terminating (nothing changed)
    -1  no such VM
]]
local base = KEYS[1]
local name = ARGV[1]
--- @include "includes/setVmState"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'group', 'vm_ip', 'bound_to_user', 'task_id')
local state, group, ip, owner, taskId = vm[1], vm[2], vm[3], vm[4], vm[5]
if not state then
  return -1
end
if state ~= 'terminating' then
  return 0
end
redis.call('SREM', stateKey(base, group, state), name)
redis.call('SREM', base .. 'vms', name)
if ip then
  redis.call('SREM', base .. 'ip:' .. ip, name)
end
if owner then
  if redis.call('HINCRBY', userVmsKey(base, group), owner, -1) <= 0 then
    redis.call('HDEL', userVmsKey(base, group), owner)
  end
  -- The owner is under max_vm_per_user again: a waiting request of theirs may take a clean VM.
  redis.call('PUBLISH', readyChannel(base, group), name)
end
if taskId and redis.call('GET', taskKey(base, taskId)) == name then
  redis.call('DEL', taskKey(base, taskId))
end
redis.call('DEL', key)
return 1
