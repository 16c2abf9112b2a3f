--[[
  Takes a VM back from its build. Only `in_use` is released: the VM becomes `ready` again, still
  bound to its owner and sandbox (dirty), or `check_health_failed` if a check failed during the build.
  Records last_release, counts the build and clears the task fields.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] VM name
    ARGV[2] now (epoch ms)
  Output:
    1   released
    0   the VM is not in_use (nothing changed)
    -1  no such VM
]]
local base = KEYS[1]
local name, now = ARGV[1], ARGV[2]
--- @include "includes/setVmState"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'check_fails', 'task_id')
if not vm[1] then
  return -1
end
if vm[1] ~= 'in_use' then
  return 0
end
if vm[3] and redis.call('GET', taskKey(base, vm[3])) == name then
  redis.call('DEL', taskKey(base, vm[3]))
end
redis.call('HDEL', key, 'used_by_worker', 'task_id', 'build_id', 'chroot', 'in_use_since')
redis.call('HSET', key, 'last_release', now)
redis.call('HINCRBY', key, 'builds_count', 1)
if tonumber(vm[2]) > 0 then
  setVmState(base, name, 'check_health_failed')
else
  setVmState(base, name, 'ready')
end
return 1
