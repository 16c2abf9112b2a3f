--[[
  The fair acquire line: how a ready VM is handed out (assignVm), how a waiting request joins the
  line of its groups (joinLines), and the dispatcher that gives ready VMs to waiting requests
  (dispatchClean, dispatchDirty).

  Order within a group: BullMQ priority first (0 first); among requests of equal priority,
  round-robin between owners (includes/lineOwners); within one owner, first come, first served.
  An owner at max_vm_per_user is skipped for clean VMs (blocked), so it never holds back another
  owner's request that a free VM could serve; its requests still take VMs bound to their own owner
  and sandbox (dirty), first come first served within that sandbox. Every step is O(log n) in the
  number of waiting requests; no line is scanned. (What waiting sets keep, set_keeps, is read whole,
  once per group and script, includes/setKeeps: at most one entry per ready clean VM of the group,
  whatever the number waiting.)

  A request given a VM by the dispatcher (not by its own attempt) gets its assignment recorded
  under its job id (acquire_assignment) and is added to acquire_assigned: its parked job is woken
  (promoted) by the caller, and collects the assignment at its next attempt (acquireVm).
  A set (acquireVmSet: several VMs, all or nothing) waits as one request: its record has `set`, its
  items. It joins the lines of every group its items list, and counts as demand once per item, in
  the item's first group ('set|<job id>|<item>'). When its turn comes it takes all its VMs in one
  step (serveSet), or none: then the ready clean VMs of that group that it could use stay ready for
  it, and only the rest go on down the line. What it keeps is recorded for the group (set_keeps,
  anew at each dispatch of the group, a one-VM dispatch updating the sets it reaches; its entry goes
  when it leaves the line), so that a set behind it served through the dispatch of another group,
  or of its sandbox's line, leaves those VMs alone too (includes/pickSet keptBefore). Between two sets, one order holds in every group: the one that
  came first (a better priority, or the same and older) may take what the other keeps, whatever
  the order of the group's round-robin, and is tried at once in a dispatch where the other keeps VMs
  (serveKeepersBefore); so two sets never each keep what the other waits for. Nothing is assigned
  to a set before all of it can be, so two sets never hold parts of each other's VMs.
  Shared by acquireVm, acquireVmSet and dispatchAcquireLine.
]]
--- @include "includes/setVmState"
--- @include "includes/leaveLines"
--- @include "includes/pickReady"
--- @include "includes/audit"
--- @include "includes/arrivals"
--- @include "includes/ownerUsage"
--- @include "includes/pickSet"
--- @include "includes/setAssignment"

-- Hands the ready VM `name` of `group` to a request r = {owner, sandbox, workerId, taskId, buildId,
-- chroot, leaseId, leaseMs, jobId, usage} (text fields '' for none; usage: the group's owner usage
-- spec, includes/ownerUsage, nil for the default): in_use under a new lease. A clean VM (fresh) is
-- bound to the owner and counts for max_vm_per_user and in the owner's usage across groups. With a job id, the assignment is
-- recorded for the lease's first term, so that a re-run of the job gets it back.
-- The build's fields are written in one HSET (and the empty ones dropped in one HDEL): each
-- call inside a script costs about as much as a small command.
local function assignVm(base, group, name, fresh, r, now)
  local key = vmKey(base, name)
  local before = setVmState(base, name, 'in_use')
  local expiresAt = tonumber(now) + tonumber(r.leaseMs)
  local fields = {'used_by_worker', r.workerId, 'in_use_since', now, 'lease_id', r.leaseId, 'lease_timeout_ms', r.leaseMs, 'lease_expires_at', expiresAt}
  if fresh then
    for _, v in ipairs({'owner', r.owner, 'sandbox', r.sandbox, 'bound_since', now}) do
      fields[#fields + 1] = v
    end
    redis.call('HINCRBY', ownerVmsKey(base, group), r.owner, 1)
    fields[#fields + 1], fields[#fields + 2] = 'owner_usage', countOwnerBinding(base, name, r.owner, r.usage)
  end
  local unset = {}
  for _, field in ipairs({{'task_id', r.taskId}, {'build_id', r.buildId}, {'chroot', r.chroot}}) do
    if field[2] ~= '' then
      fields[#fields + 1], fields[#fields + 2] = field[1], field[2]
    else
      unset[#unset + 1] = field[1]
    end
  end
  if #unset > 0 then
    redis.call('HDEL', key, unpack(unset))
  end
  redis.call('HSET', key, unpack(fields))
  if r.taskId ~= '' then
    redis.call('SET', ownerTaskKey(base, r.owner, r.taskId), name)
    -- The VM binds the task now; its claim is no longer needed.
    redis.call('DEL', ownerTaskClaimKey(base, r.owner, r.taskId))
  end
  redis.call('ZADD', leasesKey(base), expiresAt, name)
  if r.jobId ~= '' then
    redis.call('HSET', acquireAssignmentKey(base, r.jobId), 'vm', name, 'lease', r.leaseId)
    redis.call('PEXPIRE', acquireAssignmentKey(base, r.jobId), r.leaseMs)
  end
  -- A clean VM is bound to the owner and sandbox now, a dirty one was bound to them already.
  recordEvent(base, 'acquired', name, {'worker', r.workerId}, {before[2], r.owner, r.sandbox, r.taskId ~= '' and r.taskId, r.leaseId})
end

-- Whether one more request of `owner` in the group could still be served: the VMs bound to it
-- and its requests waiting there are below max_vm_per_user, and one more VM fits its limits across
-- groups (`usage`, includes/ownerUsage). An arrival beyond that is not counted for target_wait (no
-- VM spawned for the warm pool would serve it).
local function ownerMayUseOneMore(base, group, owner, maxVmPerOwner, usage)
  local bound = tonumber(redis.call('HGET', ownerVmsKey(base, group), owner)) or 0
  return bound + redis.call('ZCARD', ownerLineKey(base, group, owner)) < tonumber(maxVmPerOwner)
    and ownerMayBind(base, owner, usage)
end

-- The number of requests of `owner` waiting in the group's line (not counting `waiter`, which
-- keeps its place). When it reaches `cap`, the requests whose time is up or whose record is gone
-- are taken out first (O(cap), only at the cap), so that a stale entry refuses nobody.
local function ownerWaiting(base, group, owner, waiter, now, cap)
  local line = ownerLineKey(base, group, owner)
  if redis.call('ZSCORE', line, waiter) then
    return 0
  end
  if redis.call('ZCARD', line) < cap then
    return redis.call('ZCARD', line)
  end
  for _, member in ipairs(redis.call('ZRANGE', line, 0, -1)) do
    local raw = redis.call('HGET', waiterInfoKey(base), member)
    local other = raw and cjson.decode(raw)
    if not other then
      redis.call('ZREM', line, member)
    elseif tonumber(other.deadline) <= tonumber(now) then
      leaveLines(base, member, other.jobId, other.groups, other)
    end
  end
  return redis.call('ZCARD', line)
end

-- Joins (or stays in) the line of every group of the request; info is its waiter_info record:
-- {owner, sandbox, deadline, groups, limits = {{max_vm_per_user, lease ms, owner usage spec} per
-- group}, jobId,
-- priority, taskId, buildId, chroot, workerId, leaseId}. A request keeps its place when it joins again.
-- One that joins again with fewer groups (a fallback group no longer blocked) leaves the lines of
-- the groups it no longer lists: left there, its record, which does not name the group, would
-- block its owner in that group's round-robin (dispatchClean finds no limits for it).
local function joinLines(base, waiter, info, now)
  local raw = redis.call('HGET', waiterInfoKey(base), waiter)
  local old = raw and cjson.decode(raw)
  if old then
    local listed = {}
    for _, group in ipairs(info.groups) do
      listed[tostring(group)] = true
    end
    for _, group in ipairs(old.groups or {}) do
      if not listed[tostring(group)] then
        redis.call('ZREM', waitersKey(base, group), waiter)
        redis.call('ZREM', ownerLineKey(base, group, old.owner), waiter)
        redis.call('ZREM', sandboxLineKey(base, group, old.owner, old.sandbox), waiter)
        redis.call('ZREM', demandKey(base, group), old.jobId)
        setKeeps.drop(base, group, waiter)
        placeOwner(base, group, old.owner, nil)
      end
    end
    -- A set's demand is written again below, per item's first group as it is now.
    for i, item in ipairs(old.set or {}) do
      redis.call('ZREM', demandKey(base, item.groups[1].group), setDemandMember(old.jobId, i))
    end
  end
  if redis.call('HSET', waiterInfoKey(base), waiter, cjson.encode(info)) == 1 and info.groups[1]
      and ownerMayUseOneMore(base, info.groups[1], info.owner, info.limits[1][1], info.limits[1][3]) then
    countArrival(base, info.groups[1], now)
  end
  for _, group in ipairs(info.groups) do
    redis.call('ZADD', waitersKey(base, group), info.priority, waiter)
    redis.call('ZADD', ownerLineKey(base, group, info.owner), info.priority, waiter)
    redis.call('ZADD', sandboxLineKey(base, group, info.owner, info.sandbox), info.priority, waiter)
    redis.call('ZREMRANGEBYSCORE', demandKey(base, group), '-inf', now)
    if not info.set then
      redis.call('ZADD', demandKey(base, group), info.deadline, info.jobId)
    end
    placeOwner(base, group, info.owner, nil)
  end
  -- A set is demand once per item, in the item's first group.
  for i, item in ipairs(info.set or {}) do
    redis.call('ZADD', demandKey(base, item.groups[1].group), info.deadline, setDemandMember(info.jobId, i))
  end
end

-- {max_vm_per_user, lease ms, owner usage spec (nil in a record written before it)} of a waiting
-- request in one of its groups.
local function limitsOf(info, group)
  for i, g in ipairs(info.groups) do
    if tostring(g) == tostring(group) then
      return info.limits[i]
    end
  end
  return nil
end

-- The first request of a line that still waits (its deadline after now), with its record; requests
-- whose time is up or whose record is gone are taken out of the line on the way.
local function firstLive(base, lineKey, now)
  for _ = 1, 100 do
    local head = redis.call('ZRANGE', lineKey, 0, 0)[1]
    if not head then
      return nil
    end
    local raw = redis.call('HGET', waiterInfoKey(base), head)
    local info = raw and cjson.decode(raw)
    if info and tonumber(info.deadline) > tonumber(now) then
      return head, info
    end
    if info then
      leaveLines(base, head, info.jobId, info.groups, info)
    else
      redis.call('ZREM', lineKey, head)
    end
  end
  return nil
end

-- Gives the VM to a waiting request: assigned, out of every line, its owner's turn moves to the
-- back of this group's round-robin. A request other than `selfJobId` is added to acquire_assigned.
local function serveWaiter(base, group, name, fresh, waiter, info, now, selfJobId, served)
  local limits = limitsOf(info, group)
  assignVm(base, group, name, fresh, {
    owner = info.owner, sandbox = info.sandbox, workerId = info.workerId, taskId = info.taskId or '',
    buildId = info.buildId or '', chroot = info.chroot or '', leaseId = info.leaseId,
    leaseMs = limits[2], jobId = info.jobId, usage = limits[3],
  }, now)
  leaveLines(base, waiter, info.jobId, info.groups, info, group)
  placeOwner(base, group, info.owner, redis.call('INCR', lineTurnKey(base, group)))
  if info.jobId ~= selfJobId then
    redis.call('ZADD', acquireAssignedKey(base), now, info.jobId)
  end
  served[#served + 1] = info.jobId
end

-- Hands the set's chosen VMs (pickSet's choice) to the request r = {owner, sandbox, workerId,
-- jobId}, each under its item's lease id, and records them for the job. Returns the VM names.
local function assignSet(base, r, items, choice, now)
  local names, leases, maxLeaseMs = {}, {}, 0
  for i, c in ipairs(choice) do
    assignVm(base, c.group, c.name, c.fresh, {
      owner = r.owner, sandbox = r.sandbox, workerId = r.workerId, taskId = '', buildId = '', chroot = '',
      leaseId = items[i].leaseId, leaseMs = c.leaseMs, jobId = '', usage = c.usage,
    }, now)
    names[i], leases[i] = c.name, items[i].leaseId
    maxLeaseMs = math.max(maxLeaseMs, c.leaseMs)
  end
  if r.jobId ~= '' then
    recordSetAssignment(base, r.jobId, names, leases, maxLeaseMs)
  end
  return names
end

-- Gives a waiting set all its VMs, if it can have them all now (pickSet), leaving alone in each
-- group the clean VMs that sets which came before it keep there: assigned, out of every line, its
-- owner's turn in `group` moves to the back. False when it cannot (nothing changed).
local function serveSet(base, group, waiter, info, now, selfJobId, served)
  local choice = pickSet(base, info.owner, info.sandbox, info.set, false, {waiter = waiter, priority = tonumber(info.priority) or 0})
  if not choice then
    return false
  end
  assignSet(base, info, info.set, choice, now)
  leaveLines(base, waiter, info.jobId, info.groups, info, group)
  placeOwner(base, group, info.owner, redis.call('INCR', lineTurnKey(base, group)))
  if info.jobId ~= selfJobId then
    redis.call('ZADD', acquireAssignedKey(base), now, info.jobId)
  end
  served[#served + 1] = info.jobId
  return true
end

-- The sets `keepers` ({waiter, info} each) keep ready clean VMs of `group` now: the waiting sets that
-- came before one of them and keep VMs of one of its other groups may take everything they need
-- now, what it keeps included (pickSet keptBefore), so they are tried at once rather than at their
-- groups' next dispatch (in opposite orders in two groups' round-robins, the second of two sets
-- would otherwise keep the VM that the first waits for until a sweep). Each is tried once per
-- dispatch (`tried`). Per other group, only the latest of the keepers that list it matters (what
-- came before an earlier keeper came before it too): one walk of that group's record, whatever the
-- number of keepers. Called once the dispatch of `group` recorded what every set it passed keeps
-- there (dispatchClean).
local function serveKeepersBefore(base, group, keepers, now, selfJobId, served, maxServed, tried)
  local latest, order = {}, {}
  for _, keeper in ipairs(keepers) do
    local priority = tonumber(keeper.info.priority) or 0
    for _, other in ipairs(keeper.info.groups) do
      local key = tostring(other)
      if key ~= tostring(group) then
        local last = latest[key]
        if not last then
          order[#order + 1] = other
        end
        if not last or cameBefore(last.waiter, last.priority, keeper.waiter, priority) then
          latest[key] = {waiter = keeper.waiter, priority = priority}
        end
      end
    end
  end
  for _, other in ipairs(order) do
    local last = latest[tostring(other)]
    -- A copy: a set served leaves the lines, and its entry the record.
    for _, keep in ipairs(setKeeps.copy(base, other)) do
      if maxServed and #served >= maxServed then
        return
      end
      if not tried[keep.waiter] and cameBefore(keep.waiter, keep.priority, last.waiter, last.priority) then
        tried[keep.waiter] = true
        local raw = redis.call('HGET', waiterInfoKey(base), keep.waiter)
        local keeper = raw and cjson.decode(raw)
        if keeper and keeper.set and tonumber(keeper.deadline) > tonumber(now) then
          serveSet(base, other, keep.waiter, keeper, now, selfJobId, served)
        end
      end
    end
  end
end

-- Ready clean VMs of the group that could be handed out (both launches; an upper bound): those
-- checked in the server start's millisecond or after (includes/pickReady), so that after a start
-- the VMs not checked again yet do not count as beyond what the sets passed keep.
local function readyCleanCount(base, group)
  local since = tonumber(redis.call('GET', serverStartKey(base))) or 0
  return redis.call('ZCOUNT', readyCleanKey(base, group), since, '+inf') + redis.call('ZCOUNT', readyOutdatedKey(base, group), since, '+inf')
end

-- Gives the group's ready clean VMs to the line, in order: the owner next in the round-robin,
-- skipping (blocking) owners at max_vm_per_user or over a limit across groups (includes/ownerUsage:
-- noted, so that a VM of theirs going in another group unblocks them here). A set whose turn it is
-- takes all its VMs or, when it cannot have them all yet, keeps its turn and keeps for itself as
-- many ready clean VMs of the group as it could take (includes/pickSet setCleanNeed: none while its
-- owner's limits let it have no whole set): only VMs beyond those go on to the owners behind it.
-- What each set keeps is recorded (setKeepsKey, anew at each dispatch of the group), so that a set
-- served through another group's dispatch leaves those VMs alone too, unless it came before the
-- keeper (includes/pickSet keptBefore); sets that came before it and keep VMs of its other groups
-- are tried then (serveKeepersBefore), once the walk down the line is over: until then, the record
-- holds only the sets passed so far, and a set tried earlier could take what a set further down the
-- line, that came before it, keeps. Appends the job ids served to `served`. With `maxServed`,
-- stops once it served that many (one ready message, one VM to give); such a dispatch updates the
-- records of the sets it reaches and leaves the others as they were: erased, the keep of a set
-- behind an owner it served would be free for a set that came after it, until the next dispatch.
local function dispatchClean(base, group, now, selfJobId, served, maxServed)
  local ring = lineOwnersKey(base, group)
  if not maxServed then
    setKeeps.clear(base, group)
  end
  -- Owners passed over (a set that waits for the rest of its VMs) keep their place at the front.
  local passed, kept, tried, keepers = 0, 0, {}, {}
  for _ = 1, 1000 do
    if maxServed and #served >= maxServed then
      break
    end
    local owner = redis.call('ZRANGE', ring, passed, passed)[1]
    if not owner then
      break
    end
    local name = pickClean(base, group)
    if not name or (kept > 0 and readyCleanCount(base, group) <= kept) then
      break
    end
    local waiter, info = firstLive(base, ownerLineKey(base, group, owner), now)
    if not waiter then
      placeOwner(base, group, owner, nil)
    else
      local limits = limitsOf(info, group)
      local bound = tonumber(redis.call('HGET', ownerVmsKey(base, group), owner)) or 0
      local across = limits and bound < tonumber(limits[1]) and ownerOverLimit(base, owner, limits[3])
      if not limits or bound >= tonumber(limits[1]) or across then
        local score = redis.call('ZSCORE', ring, owner)
        redis.call('ZREM', ring, owner)
        redis.call('ZADD', lineBlockedKey(base, group), score, owner)
        setKeeps.drop(base, group, waiter)
        if across then
          noteOwnerBlockedAcross(base, owner, group)
        end
      elseif info.set then
        if not serveSet(base, group, waiter, info, now, selfJobId, served) then
          local need = setCleanNeed(base, info.owner, info.sandbox, info.set, group)
          passed, kept, tried[waiter] = passed + 1, kept + need, true
          if need == 0 then
            -- Its owner's limits keep it from a whole set: it keeps its turn but no VM; one of the
            -- owner's VMs going, in any group, tells this group (as for an owner blocked across groups).
            setKeeps.drop(base, group, waiter)
            noteOwnerBlockedAcross(base, info.owner, group)
          else
            setKeeps.record(base, group, waiter, need, tonumber(info.priority) or 0)
            keepers[#keepers + 1] = {waiter = waiter, info = info}
          end
        end
      else
        serveWaiter(base, group, name, true, waiter, info, now, selfJobId, served)
      end
    end
  end
  serveKeepersBefore(base, group, keepers, now, selfJobId, served, maxServed, tried)
end

-- Gives the group's ready VMs bound to owner and sandbox to that sandbox's line, first come first
-- served; a set first in that line takes all its VMs or waits, keeping those VMs. Appends the job
-- ids served to `served`.
local function dispatchDirty(base, group, owner, sandbox, now, selfJobId, served)
  for _ = 1, 100 do
    local name = pickReady(base, readyDirtyKey(base, group, owner, sandbox))
    if not name then
      return
    end
    local waiter, info = firstLive(base, sandboxLineKey(base, group, owner, sandbox), now)
    if not waiter then
      return
    end
    if info.set then
      if not serveSet(base, group, waiter, info, now, selfJobId, served) then
        return
      end
    else
      serveWaiter(base, group, name, false, waiter, info, now, selfJobId, served)
    end
  end
end
