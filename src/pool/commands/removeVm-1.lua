--[[
  Deletes a VM record and every index entry of it. Only a `terminating` VM is removed.
  A VM bound to an owner leaves the owner's counts: its group's owner_vms, and what it added to the
  owner's usage across groups (includes/ownerUsage); the owner is unblocked in its group's line and
  in every group where a limit across groups blocked it, whose ready channels are told.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
  Output:
    OK           removed
    WRONG_STATE  the VM is not terminating (nothing changed)
    NOT_FOUND    no such VM
]]
local base = KEYS[1]
local name = ARGV[1]
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/audit"
--- @include "includes/lineOwners"
--- @include "includes/taskOwner"
--- @include "includes/ownerUsage"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'group', 'vm_ip', 'owner', 'task_id')
local state, group, ip, owner, taskId = vm[1], vm[2], vm[3], vm[4], vm[5]
if not state then
  return NOT_FOUND
end
if state ~= 'terminating' then
  return WRONG_STATE
end
recordEvent(base, 'removed', name)
redis.call('SREM', stateKey(base, group, state), name)
redis.call('SREM', allVmsKey(base), name)
if ip then
  redis.call('SREM', ipKey(base, ip), name)
end
if owner then
  if redis.call('HINCRBY', ownerVmsKey(base, group), owner, -1) <= 0 then
    redis.call('HDEL', ownerVmsKey(base, group), owner)
  end
  -- The owner is under max_vm_per_user again: a waiting request of theirs may take a clean VM.
  unblockOwner(base, group, owner)
  redis.call('PUBLISH', readyChannel(base, group), name)
  uncountOwnerBinding(base, name, owner)
  unblockOwnerAcross(base, owner, group, name)
end
forgetTaskVm(base, name, owner, taskId)
redis.call('ZREM', holdsExpiringKey(base), name)
unindexDue(base, name, group)
redis.call('DEL', key)
return OK
