--[[
  Who a task belongs to. A task id is bound to one owner and sandbox: while it holds a VM (in_use
  under that task id), to the VM's owner and sandbox; while a request for it waits, to the owner and
  sandbox of that request's claim (task_claim, until the request's deadline). A request of another
  owner or sandbox for the task is refused (TASK_CONFLICT) and learns nothing of the other's VM.
  Shared by acquireVm (every attempt) and claimTask (a builder about to enqueue a request).
]]
--- @include "includes/poolKeys"

-- The VM the task holds now (in_use under that task id), with its owner and sandbox; nil when none.
local function heldVmOfTask(base, taskId)
  local held = redis.call('GET', taskKey(base, taskId))
  if not held then
    return nil
  end
  local vm = redis.call('HMGET', vmKey(base, held), 'state', 'task_id', 'owner', 'sandbox')
  if vm[1] == 'in_use' and vm[2] == taskId then
    return held, vm[3], vm[4]
  end
  return nil
end

-- The task's claim while its deadline is after now, or nil.
local function liveTaskClaim(base, taskId, now)
  local raw = redis.call('GET', taskClaimKey(base, taskId))
  local claim = raw and cjson.decode(raw)
  if claim and tonumber(claim.deadline) > tonumber(now) then
    return claim
  end
  return nil
end

-- Whether the task belongs to another owner or sandbox: the VM it holds, or a live claim.
local function taskOfAnother(base, taskId, owner, sandbox, now)
  local held, heldOwner, heldSandbox = heldVmOfTask(base, taskId)
  if held then
    return heldOwner ~= owner or heldSandbox ~= sandbox
  end
  local claim = liveTaskClaim(base, taskId, now)
  return claim ~= nil and (claim.owner ~= owner or claim.sandbox ~= sandbox)
end

-- Claims the task for owner and sandbox until deadline (a later deadline already claimed stays).
-- Call only once taskOfAnother said no. The key outlives the deadline by a minute, then goes.
local function claimTask(base, taskId, owner, sandbox, deadline, now)
  local claim = liveTaskClaim(base, taskId, now)
  if claim and tonumber(claim.deadline) >= tonumber(deadline) then
    return
  end
  local ttl = math.max(1, tonumber(deadline) - tonumber(now)) + 60000
  redis.call('SET', taskClaimKey(base, taskId), cjson.encode({owner = owner, sandbox = sandbox, deadline = tonumber(deadline)}), 'PX', ttl)
end
