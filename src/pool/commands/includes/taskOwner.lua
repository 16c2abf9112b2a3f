--[[
  Who a task belongs to. Task ids are per owner: the same task id of two owners names two tasks,
  and nothing one owner does with a task id (a live, withdrawn or finished request) touches another
  owner's. Within an owner, a task id is bound to one sandbox: while it holds a VM (in_use under
  that task id), to the VM's sandbox; while a request for it waits, to the sandbox of that request's
  claim (owner_task_claim, until the request's deadline). A request of another sandbox of the same
  owner for the task is refused (TASK_CONFLICT) and learns nothing of the other's VM.
  Keys written before task ids were per owner (legacyTaskKey, legacyTaskClaimKey) are read too, but
  only when they belong to the same owner, so that a request in flight during an upgrade reattaches.
  Shared by acquireVm (every attempt) and claimTask (a builder about to enqueue a request); the VM's
  task index is dropped through forgetTaskVm (releaseVm, removeVm).
]]
--- @include "includes/poolKeys"

-- Whether the VM `name` is in_use under the task of that owner; then its sandbox.
local function inUseForTask(base, name, owner, taskId)
  local vm = redis.call('HMGET', vmKey(base, name), 'state', 'task_id', 'owner', 'sandbox')
  if vm[1] == 'in_use' and vm[2] == taskId and vm[3] == owner then
    return true, vm[4]
  end
  return false
end

-- The VM the owner's task holds now (in_use under that task id), with its sandbox; nil when none,
-- then also whether the owner's task index names a VM that no longer holds the task (stale). Both
-- keys in one MGET (same slot: every key shares the pool's hash tag).
local function heldVmOfTask(base, owner, taskId)
  local names = redis.call('MGET', ownerTaskKey(base, owner, taskId), legacyTaskKey(base, taskId))
  for i = 1, 2 do
    if names[i] then
      local mine, heldSandbox = inUseForTask(base, names[i], owner, taskId)
      if mine then
        return names[i], heldSandbox
      end
    end
  end
  return nil, nil, names[1] ~= false
end

-- The owner's claim of the task while its deadline is after now, or nil.
local function liveTaskClaim(base, owner, taskId, now)
  local raws = redis.call('MGET', ownerTaskClaimKey(base, owner, taskId), legacyTaskClaimKey(base, taskId))
  local claim = raws[1] and cjson.decode(raws[1])
  if not claim then
    claim = raws[2] and cjson.decode(raws[2])
    if claim and claim.owner ~= owner then
      claim = nil
    end
  end
  if claim and tonumber(claim.deadline) > tonumber(now) then
    return claim
  end
  return nil
end

-- Whether the owner's task belongs to another of the owner's sandboxes: the VM it holds, or a live claim.
local function taskOfAnother(base, taskId, owner, sandbox, now)
  local held, heldSandbox = heldVmOfTask(base, owner, taskId)
  if held then
    return heldSandbox ~= sandbox
  end
  local claim = liveTaskClaim(base, owner, taskId, now)
  return claim ~= nil and claim.sandbox ~= sandbox
end

-- Claims the owner's task for the sandbox until deadline (a later deadline already claimed stays).
-- Call only once taskOfAnother said no. The key outlives the deadline by a minute, then goes.
local function claimTask(base, taskId, owner, sandbox, deadline, now)
  local claim = liveTaskClaim(base, owner, taskId, now)
  if claim and tonumber(claim.deadline) >= tonumber(deadline) then
    return
  end
  local ttl = math.max(1, tonumber(deadline) - tonumber(now)) + 60000
  redis.call('SET', ownerTaskClaimKey(base, owner, taskId), cjson.encode({owner = owner, sandbox = sandbox, deadline = tonumber(deadline)}), 'PX', ttl)
end

-- The VM `name` no longer holds the owner's task: its task index goes (the legacy one too).
local function forgetTaskVm(base, name, owner, taskId)
  if not taskId or not owner then
    return
  end
  local keys = {ownerTaskKey(base, owner, taskId), legacyTaskKey(base, taskId)}
  local names = redis.call('MGET', keys[1], keys[2])
  for i = 1, 2 do
    if names[i] == name then
      redis.call('DEL', keys[i])
    end
  end
end
