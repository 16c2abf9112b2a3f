--[[
  Hands one ready VM to an owner and sandbox (Copr's acquire_vm, without the O(N) scan), or puts a
  waiting request in the fair line of its groups (includes/acquireLine).

  Groups are tried in the order given. In each group:
    1. a ready VM already bound to the same owner and sandbox (dirty) is preferred;
    2. otherwise a clean VM, but only while the owner has fewer than max_vm_per_user VMs there and
       one more VM of the group fits the owner's limits across groups (includes/ownerUsage):
       one of the group's current launch, or one of an older launch only while none is ready
       (includes/pickReady: pickClean; a rollout's old VMs serve until they are replaced).
  Only VMs health-checked after the last server start qualify (includes/pickReady).
  If the task already holds a VM, that VM is returned instead (reattach) with its existing lease.
  A job (by its job id, ARGV[12]) that was given a VM and runs again (its worker died before
  completing it, or the line gave it a VM while it was parked) gets that VM and lease (the
  acquire_assignment record, kept for the lease's first term), with or without a task id.
  Task ids are per owner (includes/taskOwner): another owner's task of the same id is another task.
  Within an owner, a task belongs to one sandbox: while it holds a VM, or a request for it waits
  (its claim), a request of another sandbox is refused, whatever its job id.
  A waiting request claims its task until its deadline; the claim ends when it is served.
  A waiting request that was withdrawn (cancelAcquire) ends here: it leaves the line, gets no VM;
  a VM the line gave it meanwhile goes back (its `released` event has reason 'withdrawn').
  A new assignment gets a lease: lease_id, lease_timeout_ms (of its group, so renew needs no
  config), lease_expires_at = now + lease_timeout_ms, and an entry in the leases sorted set.

  A waiting request (an acquire job; ARGV[9] set) joins the line of every group it asked for, and
  the line is dispatched for those groups (includes/acquireLine): priority first, round-robin
  between owners, first come first served within an owner. It is served now only when the line
  gives it a VM; the dispatch may serve requests ahead of it too (their job ids are returned, to be
  woken). Otherwise it stays in the line (parked) until the dispatcher gives it a VM
  (dispatchAcquireLine), it is withdrawn, or it gives up (leaveAcquireLine). A request that would
  first join the lines while its owner has max_waiting_per_owner requests waiting in one of its
  groups is refused (TOO_MANY_WAITING): the cap holds for requests added to the queue by any means.
  One already waiting that now may use more groups (fallbacks) joins none where its owner is at
  the cap.
  A call without a waiter takes a VM at once if one fits, without joining the line.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] owner
    ARGV[3] sandbox
    ARGV[4] worker id
    ARGV[5] task id ('' for none)
    ARGV[6] build id ('' for none)
    ARGV[7] chroot ('' for none)
    ARGV[8] lease id of a new assignment
    ARGV[9] waiter member ('' when the caller does not wait): '<job timestamp 15 digits>|<job id>'
    ARGV[10] waiter priority (BullMQ priority, 0 first)
    ARGV[11] waiter deadline (epoch ms)
    ARGV[12] demand member (the acquire job id)
    ARGV[13] number of groups N
    ARGV[14..13+4N] N quadruples: group id, max_vm_per_user, lease_timeout in ms,
               max_waiting_per_owner of that group
    ARGV[14+4N..13+5N] per group, in the same order, its owner usage spec as JSON ('' for none:
               not limited, counted as 1 instance; includes/ownerUsage, src/reconcile/quota.ts
               ownerUsageSpec): what one VM uses and the owner's limits across groups it counts in
  Output:
    {OK, HGETALL of the VM, job ids}  acquired: the VM is in_use under a new lease (job ids: other
                                      requests the dispatch served, to be woken)
    {REATTACHED, HGETALL of the VM}   the task already held this VM, or this job was given it by
                                      an earlier run (its lease unchanged)
    {TASK_CONFLICT}                   the owner's task holds a VM, or is claimed, for another of the
                                      owner's sandboxes (nothing changed; the caller leaves the line)
    {CANCELLED, reason}               the waiting request was withdrawn: it left the line
    {TOO_MANY_WAITING, group, cap}    the request would wait, but its owner has max_waiting_per_owner
                                      requests waiting in that group already (nothing changed)
    {NO_VM, job ids}                  nothing fits now (a waiting request is in the line; job ids:
                                      requests the dispatch served, to be woken)
]]
local base = KEYS[1]
local now, owner, sandbox, workerId = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local taskId, buildId, chroot, leaseId = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local waiter, priority, deadline, jobId = ARGV[9], tonumber(ARGV[10]), ARGV[11], ARGV[12]
local groupCount = tonumber(ARGV[13])
local waiting = waiter ~= ''
--- @include "includes/replyCodes"
--- @include "includes/acquireLine"
--- @include "includes/releaseVm"
--- @include "includes/taskOwner"

local function groupArg(i, field)
  return ARGV[14 + i * 4 + field]
end

local groups, usages = {}, {}
for i = 0, groupCount - 1 do
  groups[i + 1] = groupArg(i, 0)
  usages[i + 1] = decodeOwnerUsage(ARGV[14 + groupCount * 4 + i])
end

local function leaveLinesIfWaiting()
  if waiting then
    leaveLines(base, waiter, jobId, groups)
  end
end

-- The VM this job was given (by an earlier run, or by the line while it was parked), while it is
-- still in_use under the lease given then; nil otherwise (the record is dropped).
local function givenToThisJob()
  if jobId == '' then
    return nil
  end
  local record = redis.call('HMGET', acquireAssignmentKey(base, jobId), 'vm', 'lease')
  if not record[1] then
    return nil
  end
  -- Only the owner's own VM: a job id is no capability across owners.
  local vm = redis.call('HMGET', vmKey(base, record[1]), 'state', 'lease_id', 'owner')
  if vm[1] == 'in_use' and vm[2] == record[2] and vm[3] == owner then
    return record[1]
  end
  redis.call('DEL', acquireAssignmentKey(base, jobId))
  return nil
end

if waiting then
  local cancelled = redis.call('GET', acquireCancelKey(base, waiter))
  if cancelled then
    redis.call('DEL', acquireCancelKey(base, waiter))
    -- A VM given to this job never reached the builder, who withdrew: it goes back.
    local given = givenToThisJob()
    if given then
      releaseInUseVm(base, given, now, 'withdrawn')
      redis.call('DEL', acquireAssignmentKey(base, jobId))
    end
    redis.call('ZREM', acquireAssignedKey(base), jobId)
    leaveLinesIfWaiting()
    return {CANCELLED, cancelled}
  end
end

-- A re-run of the same job, or a parked job woken by the line, gets the VM and lease it was given.
do
  local given = givenToThisJob()
  if given then
    -- Served by the line, the request left it then (serveWaiter); a record left says otherwise.
    if waiting and redis.call('HEXISTS', waiterInfoKey(base), waiter) == 1 then
      leaveLines(base, waiter, jobId, groups)
    end
    local collected = redis.call('ZREM', acquireAssignedKey(base), jobId) == 1
    if not collected then
      recordEvent(base, 'reattached', given)
    end
    return {collected and OK or REATTACHED, redis.call('HGETALL', vmKey(base, given)), {}}
  end
end

-- The task's owner (taskOfAnother's rules, with the held VM read once for both questions).
if taskId ~= '' then
  local held, heldSandbox, stale = heldVmOfTask(base, owner, taskId)
  if held and heldSandbox ~= sandbox then
    return {TASK_CONFLICT}
  end
  if held then
    leaveLinesIfWaiting()
    recordEvent(base, 'reattached', held)
    return {REATTACHED, redis.call('HGETALL', vmKey(base, held))}
  end
  local claim = liveTaskClaim(base, owner, taskId, now)
  if claim and claim.sandbox ~= sandbox then
    return {TASK_CONFLICT}
  end
  if stale then
    redis.call('DEL', ownerTaskKey(base, owner, taskId))
  end
end

local request = {
  owner = owner, sandbox = sandbox, workerId = workerId, taskId = taskId, buildId = buildId,
  chroot = chroot, leaseId = leaseId, jobId = jobId,
}

if not waiting then
  -- At once or not at all, outside the line.
  for i = 0, groupCount - 1 do
    local group = groups[i + 1]
    local name = pickReady(base, readyDirtyKey(base, group, owner, sandbox))
    local fresh = false
    if not name and (tonumber(redis.call('HGET', ownerVmsKey(base, group), owner)) or 0) < tonumber(groupArg(i, 1))
        and ownerMayBind(base, owner, usages[i + 1]) then
      name = pickClean(base, group)
      fresh = name ~= nil
    end
    if name then
      request.leaseMs, request.usage = tonumber(groupArg(i, 2)), usages[i + 1]
      assignVm(base, group, name, fresh, request, now)
      countArrival(base, groups[1], now)
      return {OK, redis.call('HGETALL', vmKey(base, name)), {}}
    end
  end
  return {NO_VM, {}}
end

-- Nobody waits who could take what this request can take now (no request of its sandbox waits for
-- a dirty VM; no owner waits in the round-robin for a clean one): served at once, never in the line.
for i = 0, groupCount - 1 do
  local group = groups[i + 1]
  local name, fresh = nil, false
  if redis.call('EXISTS', sandboxLineKey(base, group, owner, sandbox)) == 0 then
    name = pickReady(base, readyDirtyKey(base, group, owner, sandbox))
  end
  if not name and redis.call('EXISTS', lineOwnersKey(base, group)) == 0
      and (tonumber(redis.call('HGET', ownerVmsKey(base, group), owner)) or 0) < tonumber(groupArg(i, 1))
      and ownerMayBind(base, owner, usages[i + 1]) then
    name = pickClean(base, group)
    fresh = name ~= nil
  end
  if name then
    request.leaseMs, request.usage = tonumber(groupArg(i, 2)), usages[i + 1]
    assignVm(base, group, name, fresh, request, now)
    -- Without its record the request is in no line (joinLines writes the record first, leaveLines
    -- drops it with the entries): a new arrival, with no line to leave.
    if redis.call('HEXISTS', waiterInfoKey(base), waiter) == 0 then
      countArrival(base, groups[1], now)
    else
      leaveLines(base, waiter, jobId, groups)
    end
    return {OK, redis.call('HGETALL', vmKey(base, name)), {}}
  end
end

-- The cap holds when a request first waits: refused. One already in a line (a re-run, or one that
-- spills over to a fallback group since) keeps waiting where it waits, and joins no other group's
-- line where its owner is at the cap.
local waitingAlready = redis.call('HEXISTS', waiterInfoKey(base), waiter) == 1
local lineGroups, limits = {}, {}
for i = 0, groupCount - 1 do
  local cap = tonumber(groupArg(i, 3))
  if ownerWaiting(base, groups[i + 1], owner, waiter, now, cap) < cap then
    lineGroups[#lineGroups + 1] = groups[i + 1]
    limits[#limits + 1] = {tonumber(groupArg(i, 1)), tonumber(groupArg(i, 2)), usages[i + 1]}
  elseif not waitingAlready then
    return {TOO_MANY_WAITING, groups[i + 1], cap}
  end
end

joinLines(base, waiter, {
  owner = owner, sandbox = sandbox, deadline = tonumber(deadline), groups = lineGroups, limits = limits,
  jobId = jobId, priority = priority, taskId = taskId, buildId = buildId, chroot = chroot,
  workerId = workerId, leaseId = leaseId,
}, now)
if taskId ~= '' then
  claimTask(base, taskId, owner, sandbox, deadline, now)
end

local served = {}
for _, group in ipairs(groups) do
  dispatchDirty(base, group, owner, sandbox, now, jobId, served)
  local mine = givenToThisJob()
  if not mine then
    dispatchClean(base, group, now, jobId, served)
    mine = givenToThisJob()
  end
  if mine then
    local others = {}
    for _, id in ipairs(served) do
      if id ~= jobId then others[#others + 1] = id end
    end
    return {OK, redis.call('HGETALL', vmKey(base, mine)), others}
  end
end
return {NO_VM, served}
