--[[
  Takes a waiting acquire request out of the line (it timed out, was invalid or failed): out of the
  waiters and demand sets of its groups and out of its owner's and sandbox's lines
  (includes/leaveLines). Nobody behind it needs waking: the dispatcher never waits on a request
  that cannot take a VM.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] waiter member
    ARGV[2] demand member (the acquire job id)
    ARGV[3..] group ids
  Output:
    the number of groups whose line the request left (0 when it was in none)
]]
local base = KEYS[1]
local waiter, jobId = ARGV[1], ARGV[2]
--- @include "includes/leaveLines"

return leaveLines(base, waiter, jobId, {unpack(ARGV, 3)})
