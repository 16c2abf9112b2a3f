--[[
  Withdraws a waiting acquire request (its builder went away, DELETE /api/v1/requests/:id): records
  why under its waiter member and takes it out of the line of its groups (includes/leaveLines). The
  acquire script then ends the request with CANCELLED whenever its job runs (the caller wakes a
  parked job), before it could be given a VM. A VM the line gave it that its job has not collected
  yet (acquire_assigned; a set's: all its VMs) goes back at once (its `released` event has reason 'withdrawn'). A
  request already served (its job collected the VM) is not changed here: its builder releases the
  VM it got.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] waiter member: '<job timestamp 15 digits>|<job id>'
    ARGV[2] demand member (the acquire job id)
    ARGV[3] reason (for the job's failedReason)
    ARGV[4] how long the record is kept, in ms (as long as a queued job may wait for a worker)
    ARGV[5] now (epoch ms)
    ARGV[6] the data-format version the caller knows (includes/dataFormat)
  Output:
    the number of groups whose line the request left (0 when it was in none: queued, or served)
    {DATA_FORMAT_AHEAD, version needed}  the pool's data format is past the caller's (nothing
      changed: no record of the withdrawal, the request still waits)
]]
local base = KEYS[1]
local waiter, jobId, reason, keepMs, now, knownFormat = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
--- @include "includes/replyCodes"
--- @include "includes/leaveLines"
--- @include "includes/releaseVm"
--- @include "includes/setAssignment"
--- @include "includes/dataFormat"

local needed = dataFormatAhead(base, knownFormat)
if needed then
  return {DATA_FORMAT_AHEAD, needed}
end

redis.call('SET', acquireCancelKey(base, waiter), reason, 'PX', keepMs)
local raw = redis.call('HGET', waiterInfoKey(base), waiter)
local groups = (raw and cjson.decode(raw).groups) or {}
local left = leaveLines(base, waiter, jobId, groups)
if redis.call('ZREM', acquireAssignedKey(base), jobId) == 1 then
  releaseAssignment(base, jobId, now, 'withdrawn', releaseInUseVm)
end
return left
