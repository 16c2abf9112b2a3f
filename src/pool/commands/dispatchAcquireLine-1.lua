--[[
  The line's dispatcher: gives a group's ready VMs to its waiting acquire requests, in line order
  (includes/acquireLine). The acquire processes run it when a ready message names a VM of the
  group (once per message: one freed VM wakes only the request it serves), and for every group at
  each safety sweep (a message lost while no process listened).

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] group id
    ARGV[3] VM name from the ready message ('' for none: dispatch the group's clean VMs)
  Output:
    the job ids of the requests given a VM (their parked jobs are to be woken); none when the VM
    is no longer ready (another process dispatched it first). A message for a clean ready VM
    serves at most one request; a sweep, or a VM gone (owners may be under max_vm_per_user
    again), serves every request a ready clean VM can take.
]]
local base = KEYS[1]
local now, group, name = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/acquireLine"

local served = {}
if name ~= '' then
  local vm = redis.call('HMGET', vmKey(base, name), 'state', 'owner', 'sandbox', 'held_by')
  if vm[1] == 'ready' and not vm[4] and vm[2] then
    dispatchDirty(base, group, vm[2], vm[3] or '', now, '', served)
    return served
  end
  if vm[1] and vm[1] ~= 'ready' then
    return served
  end
  if vm[1] == 'ready' and not vm[4] then
    -- A clean VM became ready: one VM to give. The others ready have messages of their own (the
    -- sweep covers a lost one), so the dispatch stops after one serve instead of looking again.
    dispatchClean(base, group, now, '', served, 1)
    return served
  end
end
-- A clean ready VM, a VM gone (its owner may be under max_vm_per_user again), or a sweep.
dispatchClean(base, group, now, '', served)
return served
