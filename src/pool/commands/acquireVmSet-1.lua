--[[
  Hands several ready VMs to one owner and sandbox at once, all or nothing (a nodeset). Each item
  of the set has its own groups (tried in the order given) and gets its own VM and its own lease
  (assignVm, as acquireVm gives). The VMs are picked first without changing anything
  (includes/pickSet: dirty first, then clean within the owner limit, one account preferred); only
  when every item has one are they all taken, in one step. No VM is ever held for a half-served
  set, so two sets can never deadlock each other.

  Without a waiter (ARGV[7] ''), at once or not at all, outside the line (VmManager.acquireVmSet
  retries): a set that is not served counts as demand of each item's first group until ARGV[6]
  (member setDemandMember(job id, item) in the group's demand set), renewed by each retry.

  With a waiter (an acquire-set job), the set waits in the fair line as ONE request
  (includes/acquireLine): it is served at once only when nobody waits in any of its groups;
  otherwise it joins the line of every group its items list, refused (TOO_MANY_WAITING) when its
  owner has max_waiting_per_owner requests waiting in one of them already (one already waiting
  that now may use more groups joins none where its owner is at the cap), and the line of each of
  its groups is dispatched: the set takes all its VMs when its turn comes and all can be had, and
  until then keeps its turn and the ready VMs it could use. A set served by the dispatcher while
  parked collects its VMs here when its job is woken. A withdrawn set (cancelAcquire) ends here.

  A waiting set that a dispatcher of an older release (which knows no sets) served as a single
  request gives that one VM back (reason 'abandoned') and waits again.

  A job (ARGV[5]) that was given the set and runs again (its worker died, or the line served it
  while parked) gets the same VMs and leases (includes/setAssignment); if some of them are no longer
  its own under those leases, the record is dropped and the set is picked afresh.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] owner
    ARGV[3] sandbox
    ARGV[4] worker id
    ARGV[5] job id ('' for none: no re-run record; a waiter needs one)
    ARGV[6] demand until (epoch ms; 0 for none), without a waiter only
    ARGV[7] waiter member ('' when the caller does not wait): '<job timestamp 15 digits>|<job id>'
    ARGV[8] waiter priority (BullMQ priority, 0 first)
    ARGV[9] waiter deadline (epoch ms)
    ARGV[10] number of items M
    then per item: lease id, number of groups N, and N sextuples: group id, owner limit in VMs
    (ownerVmLimit), lease_timeout in ms, account ('' for none), max_waiting_per_owner, the group's
    owner usage spec across groups as JSON ('' for none: includes/ownerUsage)
  Output:
    {OK, {HGETALL of each item's VM, in item order}, job ids}  taken now, each under a new lease
                                      (job ids: other requests the dispatch served, to be woken)
    {REATTACHED, {HGETALL of each item's VM, in item order}}  this job was given them by an earlier run
    {NO_VM, job ids, missing}         not all can be had now: nothing assigned to this set (a
                                      waiter is in the line; job ids: requests the dispatch served;
                                      missing: the 1-based indexes of the items that cannot have a
                                      VM now, includes/pickSet setMissingItems; empty when all
                                      could be had but the set waits for its turn in the line)
    {CANCELLED, reason}               the waiting set was withdrawn: it left the line
    {TOO_MANY_WAITING, group, cap}    it would wait, but its owner has max_waiting_per_owner
                                      requests waiting in that group already (nothing changed)
]]
local base = KEYS[1]
local now, owner, sandbox, workerId, jobId = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local demandUntil = tonumber(ARGV[6])
local waiter, priority, deadline = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local itemCount = tonumber(ARGV[10])
local waiting = waiter ~= ''
--- @include "includes/replyCodes"
--- @include "includes/acquireLine"
--- @include "includes/releaseVm"

local items = {}
-- The groups of all items (first appearance order), with each one's limits and waiting cap.
local groups, groupLimits, groupCaps, inGroups = {}, {}, {}, {}
do
  local at = 11
  for i = 1, itemCount do
    local item = {leaseId = ARGV[at], groups = {}}
    local n = tonumber(ARGV[at + 1])
    at = at + 2
    for g = 1, n do
      local group = ARGV[at]
      local usage = decodeOwnerUsage(ARGV[at + 5])
      item.groups[g] = {group = group, maxVmPerOwner = tonumber(ARGV[at + 1]), leaseMs = tonumber(ARGV[at + 2]), account = ARGV[at + 3], usage = usage}
      if not inGroups[group] then
        inGroups[group] = true
        groups[#groups + 1] = group
        -- As a single request's: the dispatcher blocks the set's owner over its limits too.
        groupLimits[#groupLimits + 1] = {tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), usage}
        groupCaps[#groupCaps + 1] = tonumber(ARGV[at + 4])
      end
      at = at + 6
    end
    items[i] = item
  end
end

local function hashes(names)
  local out = {}
  for i, name in ipairs(names) do
    out[i] = redis.call('HGETALL', vmKey(base, name))
  end
  return out
end

local function inLine()
  return waiting and redis.call('HEXISTS', waiterInfoKey(base), waiter) == 1
end

if waiting then
  local cancelled = redis.call('GET', acquireCancelKey(base, waiter))
  if cancelled then
    redis.call('DEL', acquireCancelKey(base, waiter))
    -- VMs given to this set never reached the builder, who withdrew: they go back.
    if jobId ~= '' then
      releaseAssignment(base, jobId, now, 'withdrawn', releaseInUseVm)
    end
    redis.call('ZREM', acquireAssignedKey(base), jobId)
    leaveLines(base, waiter, jobId, groups)
    return {CANCELLED, cancelled}
  end
end

-- A dispatcher of an older release, which knows no sets, may have served this waiting set as a
-- single request (one VM, recorded as a single's assignment, out of every line): that VM goes back
-- (released, reason 'abandoned') and the set waits again.
if waiting and jobId ~= '' and redis.call('HEXISTS', acquireAssignmentKey(base, jobId), 'vm') == 1 then
  releaseAssignment(base, jobId, now, 'abandoned', releaseInUseVm)
  redis.call('ZREM', acquireAssignedKey(base), jobId)
end

-- A re-run of the same job, or a parked job woken by the line, gets the VMs and leases it was given.
if jobId ~= '' then
  local given = givenSet(base, jobId, owner, now, releaseInUseVm)
  if given then
    if inLine() then
      leaveLines(base, waiter, jobId, groups)
    end
    local collected = redis.call('ZREM', acquireAssignedKey(base), jobId) == 1
    if not collected then
      for _, name in ipairs(given) do
        recordEvent(base, 'reattached', name)
      end
    end
    return {collected and OK or REATTACHED, hashes(given), {}}
  end
end

local request = {owner = owner, sandbox = sandbox, workerId = workerId, jobId = jobId}

-- While it waits outside the line, the set is demand (one per item, in its first group).
local function demandOutsideLine(waits)
  if jobId == '' then
    return
  end
  for i, item in ipairs(items) do
    local key = demandKey(base, item.groups[1].group)
    if waits and demandUntil > tonumber(now) then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      redis.call('ZADD', key, demandUntil, setDemandMember(jobId, i))
    else
      redis.call('ZREM', key, setDemandMember(jobId, i))
    end
  end
end

if not waiting then
  local choice = pickSet(base, owner, sandbox, items)
  if not choice then
    demandOutsideLine(true)
    return {NO_VM, {}, setMissingItems(base, owner, sandbox, items)}
  end
  demandOutsideLine(false)
  local names = assignSet(base, request, items, choice, now)
  countArrival(base, items[1].groups[1].group, now)
  return {OK, hashes(names), {}}
end

-- Nobody waits in any of its groups: served at once if it can be, never in the line.
local nobodyWaits = true
for _, group in ipairs(groups) do
  if redis.call('EXISTS', waitersKey(base, group)) == 1 then
    nobodyWaits = false
    break
  end
end
if nobodyWaits then
  local choice = pickSet(base, owner, sandbox, items)
  if choice then
    local names = assignSet(base, request, items, choice, now)
    if inLine() then
      leaveLines(base, waiter, jobId, groups)
    else
      countArrival(base, items[1].groups[1].group, now)
    end
    return {OK, hashes(names), {}}
  end
end

-- The cap holds when a request first waits (as acquireVm's). A set already waiting that now may
-- use more groups (fallbacks) keeps waiting where it waits, and joins no other group's line where
-- its owner is at the cap (its VMs may still come from that group when its turn comes elsewhere).
local waitingAlready = inLine()
local lineGroups, lineLimits = {}, {}
for i, group in ipairs(groups) do
  local cap = groupCaps[i]
  if ownerWaiting(base, group, owner, waiter, now, cap) < cap then
    lineGroups[#lineGroups + 1] = group
    lineLimits[#lineLimits + 1] = groupLimits[i]
  elseif not waitingAlready then
    return {TOO_MANY_WAITING, group, cap}
  end
end

joinLines(base, waiter, {
  owner = owner, sandbox = sandbox, deadline = deadline, groups = lineGroups, limits = lineLimits,
  jobId = jobId, priority = priority, taskId = '', buildId = '', chroot = '', workerId = workerId,
  leaseId = '', set = items,
}, now)

local served = {}
for _, group in ipairs(groups) do
  dispatchDirty(base, group, owner, sandbox, now, jobId, served)
  dispatchClean(base, group, now, jobId, served)
  local mine = givenSet(base, jobId, owner, now, releaseInUseVm)
  if mine then
    local others = {}
    for _, id in ipairs(served) do
      if id ~= jobId then others[#others + 1] = id end
    end
    return {OK, hashes(mine), others}
  end
end
return {NO_VM, served, setMissingItems(base, owner, sandbox, items)}
