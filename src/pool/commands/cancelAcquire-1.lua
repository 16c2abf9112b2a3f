--[[
  Withdraws a waiting acquire request (its builder went away): records why under its waiter member,
  takes it out of the line of its groups (includes/leaveLines) and wakes each of them, so that the
  request's own worker retries at once. The acquire script then ends the request with CANCELLED
  whenever it sees it (parked, or still queued in vm-acquire), before it could be given a VM.
  A request already served is not changed here: its builder releases the VM it got.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] waiter member: '<job timestamp 15 digits>|<job id>'
    ARGV[2] demand member (the acquire job id)
    ARGV[3] reason (for the job's failedReason)
    ARGV[4] how long the record is kept, in ms (as long as a queued job may wait for a worker)
  Output:
    the number of groups whose line the request left (0 when it was in none: queued, or served)
]]
local base = KEYS[1]
local waiter, jobId, reason, keepMs = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
--- @include "includes/leaveLines"

redis.call('SET', acquireCancelKey(base, waiter), reason, 'PX', keepMs)
local raw = redis.call('HGET', waiterInfoKey(base), waiter)
local groups = (raw and cjson.decode(raw).groups) or {}
local left = leaveLines(base, waiter, jobId, groups)
for _, group in ipairs(groups) do
  redis.call('PUBLISH', readyChannel(base, group), '')
end
return left
