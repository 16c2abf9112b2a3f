--[[
  Takes a waiting acquire request out of the line (it timed out, was invalid or failed): out of the
  waiters and demand sets of its groups and out of its owner's and sandbox's lines
  (includes/leaveLines; a set tells its groups, whose dispatch gives the VMs it kept back to the
  requests behind it). A VM the line gave it that its job has not collected (acquire_assigned; a
  set's: all its VMs) goes back at once, its `released` event with reason 'abandoned': the job
  gives up, and nobody would collect it before its lease ended.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] waiter member
    ARGV[2] demand member (the acquire job id)
    ARGV[3] now (epoch ms)
    ARGV[4..] group ids
  Output:
    the number of groups whose line the request left (0 when it was in none)
]]
local base = KEYS[1]
local waiter, jobId, now = ARGV[1], ARGV[2], ARGV[3]
--- @include "includes/leaveLines"
--- @include "includes/releaseVm"
--- @include "includes/setAssignment"

local left = leaveLines(base, waiter, jobId, {unpack(ARGV, 4)})
if redis.call('ZREM', acquireAssignedKey(base), jobId) == 1 then
  releaseAssignment(base, jobId, now, 'abandoned', releaseInUseVm)
end
return left
