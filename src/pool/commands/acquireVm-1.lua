--[[
  Hands one ready VM to an owner and sandbox (Copr's acquire_vm, without the O(N) scan).

  Groups are tried in the order given. In each group:
    1. a ready VM already bound to the same owner and sandbox (dirty) is preferred;
    2. otherwise a clean VM, but only while the owner has fewer than max_vm_per_user VMs there.
  Only VMs health-checked at or after the last server start (KEYS[1]..'server_start') qualify;
  ready VMs always have check_fails == 0, which is checked again here.
  If the task already holds a VM, that VM is returned instead (reattach), and nothing changes.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] now (epoch ms)
    ARGV[2] owner
    ARGV[3] sandbox
    ARGV[4] worker id
    ARGV[5] task id ('' for none)
    ARGV[6] build id ('' for none)
    ARGV[7] chroot ('' for none)
    ARGV[8] number of groups N
    ARGV[9..] N pairs: group id, max_vm_per_user of that group
  Output:
    {'acquired', HGETALL of the VM}
    {'reattached', HGETALL of the VM}  the task already held this VM
    {'task_conflict', vm name}         the task holds a VM for another owner or sandbox
    {'none'}                           nothing fits
]]
local base = KEYS[1]
local now, owner, sandbox, workerId = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local taskId, buildId, chroot = ARGV[5], ARGV[6], ARGV[7]
local groupCount = tonumber(ARGV[8])
--- @include "includes/setVmState"

if taskId ~= '' then
  local held = redis.call('GET', taskKey(base, taskId))
  if held then
    local vm = redis.call('HMGET', vmKey(base, held), 'state', 'task_id', 'bound_to_user', 'sandbox')
    if vm[1] == 'in_use' and vm[2] == taskId then
      if vm[3] ~= owner or vm[4] ~= sandbox then
        return {'task_conflict', held}
      end
      return {'reattached', redis.call('HGETALL', vmKey(base, held))}
    end
    redis.call('DEL', taskKey(base, taskId))
  end
end

local serverStart = tonumber(redis.call('GET', base .. 'server_start'))
if not serverStart then
  return {'none'}
end

-- First VM of an index checked at or after server start. Entries that no longer qualify (which the
-- scripts never leave behind, but an operator editing hashes could) are dropped from the index.
local function pick(indexKey)
  for _ = 1, 16 do
    local names = redis.call('ZRANGEBYSCORE', indexKey, serverStart, '+inf', 'LIMIT', 0, 1)
    local name = names[1]
    if not name then
      return nil
    end
    local vm = redis.call('HMGET', vmKey(base, name), 'state', 'check_fails')
    if vm[1] == 'ready' and vm[2] == '0' then
      return name
    end
    redis.call('ZREM', indexKey, name)
  end
  return nil
end

for i = 0, groupCount - 1 do
  local group = ARGV[9 + i * 2]
  local maxPerUser = tonumber(ARGV[10 + i * 2])
  local name = pick(readyDirtyKey(base, group, owner, sandbox))
  local fresh = false
  if not name then
    local bound = tonumber(redis.call('HGET', userVmsKey(base, group), owner)) or 0
    if bound < maxPerUser then
      name = pick(readyCleanKey(base, group))
      fresh = name ~= nil
    end
  end
  if name then
    local key = vmKey(base, name)
    setVmState(base, name, 'in_use')
    if fresh then
      redis.call('HSET', key, 'bound_to_user', owner, 'sandbox', sandbox, 'bound_since', now)
      redis.call('HINCRBY', userVmsKey(base, group), owner, 1)
    end
    redis.call('HSET', key, 'used_by_worker', workerId, 'in_use_since', now)
    redis.call('HDEL', key, 'task_id', 'build_id', 'chroot')
    if taskId ~= '' then
      redis.call('HSET', key, 'task_id', taskId)
      redis.call('SET', taskKey(base, taskId), name)
    end
    if buildId ~= '' then redis.call('HSET', key, 'build_id', buildId) end
    if chroot ~= '' then redis.call('HSET', key, 'chroot', chroot) end
    return {'acquired', redis.call('HGETALL', key)}
  end
end
return {'none'}
