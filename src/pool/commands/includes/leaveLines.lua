--[[
  Takes a waiting acquire request out of the line of each of its groups: out of their waiters and
  demand sets, out of its owner's and sandbox's lines, and out of waiter_info (a set: its items' demand too). Its owner keeps its
  place in each group's round-robin while it has other requests there (includes/acquireLine).
  Shared by acquireVm (a request served), dispatchAcquireLine, cancelAcquire and leaveAcquireLine.
  Returns the number of groups whose line the request left.
  A caller that read the request's record already passes it (`known`), and one that places the
  owner in a group's round-robin itself right after names that group (`placedByCaller`).
]]
--- @include "includes/lineOwners"

-- The demand member of item i of the set request of job `jobId` (acquireLine.ts setDemandMember).
local function setDemandMember(jobId, i)
  return 'set|' .. jobId .. '|' .. i
end

local function leaveLines(base, waiter, jobId, groups, known, placedByCaller)
  local left = 0
  local info = known
  if not info then
    local raw = redis.call('HGET', waiterInfoKey(base), waiter)
    info = raw and cjson.decode(raw)
  end
  redis.call('HDEL', waiterInfoKey(base), waiter)
  for _, group in ipairs(groups) do
    redis.call('ZREM', demandKey(base, group), jobId)
    if info then
      redis.call('ZREM', ownerLineKey(base, group, info.owner), waiter)
      redis.call('ZREM', sandboxLineKey(base, group, info.owner, info.sandbox), waiter)
      if tostring(group) ~= tostring(placedByCaller) then
        placeOwner(base, group, info.owner, nil)
      end
    end
    if redis.call('ZREM', waitersKey(base, group), waiter) == 1 then
      left = left + 1
    end
  end
  -- A set's demand: one member per item, in the item's first group.
  for i, item in ipairs(info and info.set or {}) do
    redis.call('ZREM', demandKey(base, item.groups[1].group), setDemandMember(jobId, i))
  end
  return left
end
