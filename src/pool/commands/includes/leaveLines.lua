--[[
  Takes a waiting acquire request out of the line of each of its groups: out of their waiters and
  demand sets and out of waiter_info. Each group whose line it left and that still has requests
  waiting is told on its ready channel, so that a request behind it that was deferred retries.
  Shared by acquireVm (a request served) and leaveAcquireLine (a request that gives up).
  Returns the number of groups whose line the request left.
]]
--- @include "includes/poolKeys"

local function leaveLines(base, waiter, jobId, groups)
  local left = 0
  redis.call('HDEL', waiterInfoKey(base), waiter)
  for _, group in ipairs(groups) do
    redis.call('ZREM', demandKey(base, group), jobId)
    if redis.call('ZREM', waitersKey(base, group), waiter) == 1 then
      left = left + 1
      if redis.call('ZCARD', waitersKey(base, group)) > 0 then
        redis.call('PUBLISH', readyChannel(base, group), '')
      end
    end
  end
  return left
end
