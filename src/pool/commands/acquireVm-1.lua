--[[
  Hands one ready VM to an owner and sandbox (Copr's acquire_vm, without the O(N) scan).

  Groups are tried in the order given. In each group:
    1. a ready VM already bound to the same owner and sandbox (dirty) is preferred;
    2. otherwise a clean VM, but only while the owner has fewer than max_vm_per_user VMs there.
  Only VMs health-checked after the last server start (server_start) qualify; within
  the start's millisecond, check_seq tells which came first (markServerStart);
  ready VMs always have check_fails == 0, which is checked again here.
  If the task already holds a VM, that VM is returned instead (reattach) with its existing lease.
  A job (by its job id, ARGV[12]) that was given a VM and runs again (its worker died before
  completing it) gets that VM and lease back (REATTACHED), with or without a task id, while that
  lease holds: the assignment is recorded under the job id for the lease's first term.
  A task belongs to one owner and sandbox (includes/taskOwner): while it holds a VM, or a request
  for it waits (its claim), a request of another owner or sandbox is refused, whatever its job id.
  A waiting request claims its task until its deadline; the claim ends when it is served.
  A waiting request that was withdrawn (cancelAcquire) ends here: it leaves the line, gets no VM.
  A new assignment gets a lease: lease_id, lease_timeout_ms (of its group, so renew needs no
  config), lease_expires_at = now + lease_timeout_ms, and an entry in the leases sorted set.

  Waiting requests (acquire jobs; ARGV[9] set) are served first come, first served, honouring
  priority: a request does not take a VM that a request ahead of it in the group's waiters set
  could take (same owner and sandbox for a dirty VM; an owner under max_vm_per_user for a clean one).
  At most WAITERS_SCANNED requests ahead are looked at. When nothing fits, the request joins the
  waiters and demand sets of every group it asked for (the line); it leaves them when it gets a VM
  (includes/leaveLines).

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
    ARGV[14..] N triples: group id, max_vm_per_user, lease_timeout in ms of that group
  Output:
    {OK, HGETALL of the VM}          acquired: the VM is in_use under a new lease
    {REATTACHED, HGETALL of the VM}  the task already held this VM, or an earlier run of this job was
                                     given it (its lease unchanged)
    {TASK_CONFLICT}                  the task holds a VM, or is claimed, for another owner or
                                     sandbox (nothing changed; the caller leaves the line)
    {CANCELLED, reason}              the waiting request was withdrawn: it left the line
    {NO_VM}                          nothing fits (a waiting request joined the line)
    {DEFERRED}                       a VM fits, but a request ahead could take it (a waiting
                                     request joined the line)
]]
local base = KEYS[1]
local now, owner, sandbox, workerId = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local taskId, buildId, chroot, leaseId = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local waiter, priority, deadline, jobId = ARGV[9], tonumber(ARGV[10]), ARGV[11], ARGV[12]
local groupCount = tonumber(ARGV[13])
local waiting = waiter ~= ''
local WAITERS_SCANNED = 200
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/releaseVm"
--- @include "includes/leaveLines"
--- @include "includes/taskOwner"

local function groupArg(i, field)
  return ARGV[14 + i * 3 + field]
end

local groups = {}
for i = 0, groupCount - 1 do
  groups[i + 1] = groupArg(i, 0)
end

-- Leaves the line of every group asked for; the next request in line retries (it may have been deferred).
local function leaveLinesIfWaiting()
  if waiting then
    leaveLines(base, waiter, jobId, groups)
  end
end

-- Whether a live request ahead of this one in the group's line could take the VM.
local function someoneAhead(group, maxPerOwner, dirty)
  local entries = redis.call('ZRANGE', waitersKey(base, group), 0, WAITERS_SCANNED - 1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local member, score = entries[i], tonumber(entries[i + 1])
    if score > priority or (score == priority and member >= waiter) then
      return false
    end
    local raw = redis.call('HGET', waiterInfoKey(base), member)
    local info = raw and cjson.decode(raw)
    if not info or tonumber(info.deadline) <= tonumber(now) then
      -- A request that timed out without leaving (its process died): drop it.
      redis.call('ZREM', waitersKey(base, group), member)
      redis.call('HDEL', waiterInfoKey(base), member)
    elseif info.owner == owner and info.sandbox == sandbox then
      return true
    elseif not dirty then
      if info.owner == owner or (tonumber(redis.call('HGET', ownerVmsKey(base, group), info.owner)) or 0) < maxPerOwner then
        return true
      end
    end
  end
  return false
end

-- The VM this job was given by an earlier run (its worker died before completing the job), while
-- it is still in_use under the lease given then; nil otherwise (the record is dropped).
local function earlierAssignment()
  if jobId == '' then
    return nil
  end
  local record = redis.call('HMGET', acquireAssignmentKey(base, jobId), 'vm', 'lease')
  if not record[1] then
    return nil
  end
  local vm = redis.call('HMGET', vmKey(base, record[1]), 'state', 'lease_id')
  if vm[1] == 'in_use' and vm[2] == record[2] then
    return record[1]
  end
  redis.call('DEL', acquireAssignmentKey(base, jobId))
  return nil
end

if waiting then
  local cancelled = redis.call('GET', acquireCancelKey(base, waiter))
  if cancelled then
    redis.call('DEL', acquireCancelKey(base, waiter))
    -- A VM an earlier run of this job was given never reached the builder, who withdrew: it goes back.
    local given = earlierAssignment()
    if given then
      releaseInUseVm(base, given, now)
      redis.call('DEL', acquireAssignmentKey(base, jobId))
    end
    leaveLinesIfWaiting()
    return {CANCELLED, cancelled}
  end
end

-- A re-run of the same job (with or without a task id) gets the VM and lease its first run was given.
do
  local given = earlierAssignment()
  if given then
    leaveLinesIfWaiting()
    return {REATTACHED, redis.call('HGETALL', vmKey(base, given))}
  end
end

if taskId ~= '' then
  if taskOfAnother(base, taskId, owner, sandbox, now) then
    return {TASK_CONFLICT}
  end
  local held = heldVmOfTask(base, taskId)
  if held then
    leaveLinesIfWaiting()
    return {REATTACHED, redis.call('HGETALL', vmKey(base, held))}
  end
  redis.call('DEL', taskKey(base, taskId))
end

local serverStart = tonumber(redis.call('GET', serverStartKey(base)))

-- Joins the line of every group asked for (idempotent), so that VMs freed later are offered in order.
local function joinLines()
  if not waiting then
    return
  end
  redis.call('HSET', waiterInfoKey(base), waiter, cjson.encode({owner = owner, sandbox = sandbox, deadline = tonumber(deadline), groups = groups}))
  if taskId ~= '' then
    claimTask(base, taskId, owner, sandbox, deadline, now)
  end
  for _, group in ipairs(groups) do
    redis.call('ZADD', waitersKey(base, group), priority, waiter)
    redis.call('ZREMRANGEBYSCORE', demandKey(base, group), '-inf', now)
    redis.call('ZADD', demandKey(base, group), deadline, jobId)
  end
end

if not serverStart then
  joinLines()
  return {NO_VM}
end

local serverStartSeq = tonumber(redis.call('GET', serverStartSeqKey(base))) or 0

local function checkedAfterStart(vm)
  return vm[1] == 'ready' and vm[2] == '0' and (tonumber(vm[3]) or 0) > serverStartSeq
end

-- Rare path: the first candidates were checked in the start's own millisecond, some before it.
-- Looks among those (bounded) for one checked after the start, then past that millisecond.
local function pickPastStartMillisecond(indexKey)
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', indexKey, serverStart, serverStart, 'LIMIT', 0, 100)) do
    if checkedAfterStart(redis.call('HMGET', vmKey(base, name), 'state', 'check_fails', 'check_seq')) then
      return name
    end
  end
  local later = redis.call('ZRANGEBYSCORE', indexKey, '(' .. serverStart, '+inf', 'LIMIT', 0, 1)[1]
  local vm = later and redis.call('HMGET', vmKey(base, later), 'state', 'check_fails')
  if vm and vm[1] == 'ready' and vm[2] == '0' then
    return later
  end
  return nil
end

-- First VM of an index checked after the server start. A check in the start's own millisecond counts
-- when it happened after the start (check_seq). Entries that no longer qualify (which the scripts
-- never leave behind, but an operator editing hashes could) are dropped from the index.
local function pick(indexKey)
  for _ = 1, 16 do
    local entry = redis.call('ZRANGEBYSCORE', indexKey, serverStart, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local name = entry[1]
    if not name then
      return nil
    end
    local vm = redis.call('HMGET', vmKey(base, name), 'state', 'check_fails', 'check_seq')
    if vm[1] ~= 'ready' or vm[2] ~= '0' then
      redis.call('ZREM', indexKey, name)
    elseif tonumber(entry[2]) > serverStart or checkedAfterStart(vm) then
      return name
    else
      return pickPastStartMillisecond(indexKey)
    end
  end
  return nil
end

local deferred = false
for i = 0, groupCount - 1 do
  local group = groups[i + 1]
  local maxPerOwner = tonumber(groupArg(i, 1))
  local leaseMs = tonumber(groupArg(i, 2))
  local queued = waiting and redis.call('ZCARD', waitersKey(base, group)) > 0
  local name = pick(readyDirtyKey(base, group, owner, sandbox))
  local fresh = false
  if not name then
    local bound = tonumber(redis.call('HGET', ownerVmsKey(base, group), owner)) or 0
    if bound < maxPerOwner then
      name = pick(readyCleanKey(base, group))
      fresh = name ~= nil
    end
  end
  if name and queued and someoneAhead(group, maxPerOwner, not fresh) then
    name = nil
    deferred = true
  end
  if name then
    local key = vmKey(base, name)
    setVmState(base, name, 'in_use')
    if fresh then
      redis.call('HSET', key, 'owner', owner, 'sandbox', sandbox, 'bound_since', now)
      redis.call('HINCRBY', ownerVmsKey(base, group), owner, 1)
    end
    redis.call('HSET', key, 'used_by_worker', workerId, 'in_use_since', now)
    redis.call('HDEL', key, 'task_id', 'build_id', 'chroot')
    if taskId ~= '' then
      redis.call('HSET', key, 'task_id', taskId)
      redis.call('SET', taskKey(base, taskId), name)
      -- The VM binds the task now; a claim (ours: taskOfAnother said so) is no longer needed.
      redis.call('DEL', taskClaimKey(base, taskId))
    end
    if buildId ~= '' then redis.call('HSET', key, 'build_id', buildId) end
    if chroot ~= '' then redis.call('HSET', key, 'chroot', chroot) end
    local expiresAt = tonumber(now) + leaseMs
    redis.call('HSET', key, 'lease_id', leaseId, 'lease_timeout_ms', leaseMs, 'lease_expires_at', expiresAt)
    redis.call('ZADD', leasesKey(base), expiresAt, name)
    if jobId ~= '' then
      -- Kept for the lease's first term: a re-run of this job gets this VM back (earlierAssignment).
      redis.call('HSET', acquireAssignmentKey(base, jobId), 'vm', name, 'lease', leaseId)
      redis.call('PEXPIRE', acquireAssignmentKey(base, jobId), leaseMs)
    end
    leaveLinesIfWaiting()
    return {OK, redis.call('HGETALL', key)}
  end
end
joinLines()
if deferred then
  return {DEFERRED}
end
return {NO_VM}
