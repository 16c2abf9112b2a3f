--[[
  Takes a waiting acquire request out of the line (it timed out, was invalid or its worker stops):
  removes it from the waiters and demand sets of its groups, and tells each group whose line is not
  empty, so that a request behind it that was deferred retries.

  Input:
    KEYS[1] pool key base (with hash tag)
    ARGV[1] waiter member
    ARGV[2] demand member (the acquire job id)
    ARGV[3..] group ids
  Output:
    number of groups whose line the request left
]]
local base = KEYS[1]
local waiter, jobId = ARGV[1], ARGV[2]
--- @include "includes/poolKeys"

local left = 0
redis.call('HDEL', waiterInfoKey(base), waiter)
for i = 3, #ARGV do
  local group = ARGV[i]
  redis.call('ZREM', demandKey(base, group), jobId)
  if redis.call('ZREM', waitersKey(base, group), waiter) == 1 then
    left = left + 1
    if redis.call('ZCARD', waitersKey(base, group)) > 0 then
      redis.call('PUBLISH', readyChannel(base, group), '')
    end
  end
end
return left
