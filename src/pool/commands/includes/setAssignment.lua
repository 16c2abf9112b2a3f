--[[
  The record of the VMs a set request was given (acquire_assignment:<job id>, one hash: `items`,
  and `vm<i>`, `lease<i>` per item), kept for the longest lease's first term, so that a re-run of
  the job, or its parked job woken by the line, collects the same VMs and leases; and so that a
  withdrawal gives them back. releaseAssignment gives back either kind of record (a set's, or a
  single request's). Shared by acquireVmSet, includes/acquireLine, cancelAcquire and
  leaveAcquireLine.
]]
--- @include "includes/poolKeys"

-- Records the set given to job `jobId`: names[i] under leases[i], kept for maxLeaseMs.
local function recordSetAssignment(base, jobId, names, leases, maxLeaseMs)
  local key = acquireAssignmentKey(base, jobId)
  local fields = {'items', #names}
  for i, name in ipairs(names) do
    fields[#fields + 1], fields[#fields + 2] = 'vm' .. i, name
    fields[#fields + 1], fields[#fields + 2] = 'lease' .. i, leases[i]
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, maxLeaseMs)
end

-- Whether job `jobId`'s assignment record is a set's.
local function isSetAssignment(base, jobId)
  return redis.call('HEXISTS', acquireAssignmentKey(base, jobId), 'items') == 1
end

-- Gives back the set recorded for job `jobId`: each VM still in_use under its lease is released
-- (`reason`, as releaseInUseVm); the record goes. `release` is releaseInUseVm (includes/releaseVm).
local function releaseSetAssignment(base, jobId, now, reason, release)
  local key = acquireAssignmentKey(base, jobId)
  local count = tonumber(redis.call('HGET', key, 'items')) or 0
  for i = 1, count do
    local record = redis.call('HMGET', key, 'vm' .. i, 'lease' .. i)
    local vm = record[1] and redis.call('HMGET', vmKey(base, record[1]), 'state', 'lease_id')
    if vm and vm[1] == 'in_use' and vm[2] == record[2] then
      release(base, record[1], now, reason)
    end
  end
  redis.call('DEL', key)
end

-- The VMs of the set recorded for job `jobId`, in item order, when every one is still in_use
-- under its lease for `owner`; otherwise nil: the record is dropped, and the set's VMs still in
-- use under their leases are given back (`release`: releaseInUseVm, reason 'abandoned'), so that
-- none is left to its lease's expiry while the set is picked afresh.
local function givenSet(base, jobId, owner, now, release)
  local key = acquireAssignmentKey(base, jobId)
  local count = tonumber(redis.call('HGET', key, 'items'))
  if not count then
    return nil
  end
  local names = {}
  for i = 1, count do
    local record = redis.call('HMGET', key, 'vm' .. i, 'lease' .. i)
    local vm = record[1] and redis.call('HMGET', vmKey(base, record[1]), 'state', 'lease_id', 'owner')
    if not (vm and vm[1] == 'in_use' and vm[2] == record[2] and vm[3] == owner) then
      releaseSetAssignment(base, jobId, now, 'abandoned', release)
      return nil
    end
    names[i] = record[1]
  end
  return names
end

-- Gives back what job `jobId` was given and has not collected, whichever its record is (a set's,
-- or a single request's `vm` and `lease`): each VM still in_use under its lease is released
-- (`reason`, by `release`: releaseInUseVm); the record goes. Shared by cancelAcquire,
-- leaveAcquireLine and acquireVmSet.
local function releaseAssignment(base, jobId, now, reason, release)
  if isSetAssignment(base, jobId) then
    releaseSetAssignment(base, jobId, now, reason, release)
    return
  end
  local record = redis.call('HMGET', acquireAssignmentKey(base, jobId), 'vm', 'lease')
  local vm = record[1] and redis.call('HMGET', vmKey(base, record[1]), 'state', 'lease_id')
  if vm and vm[1] == 'in_use' and vm[2] == record[2] then
    release(base, record[1], now, reason)
  end
  redis.call('DEL', acquireAssignmentKey(base, jobId))
end
