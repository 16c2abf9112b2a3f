--[[
  Takes a waiting acquire request out of the line of each of its groups: out of their waiters and
  demand sets, out of its owner's and sandbox's lines, and out of waiter_info (a set: its items' demand too). Its owner keeps its
  place in each group's round-robin while it has other requests there (includes/acquireLine).
  A set may have kept back ready VMs in the groups it waited in (dispatchClean keeps clean ones for
  it, dispatchDirty its sandbox's dirty ones): each group whose line it left is told on its ready
  channel ('' for its clean VMs, and the name of a ready VM of the set's owner and sandbox), so that
  the dispatcher gives them to the requests behind it at once, not at the next safety sweep; its
  entry in the group's record of what sets keep (set_keeps) goes.
  Shared by acquireVm (a request served), dispatchAcquireLine, cancelAcquire and leaveAcquireLine.
  Returns the number of groups whose line the request left.
  A caller that read the request's record already passes it (`known`), and one that places the
  owner in a group's round-robin itself right after names that group (`placedByCaller`).
]]
--- @include "includes/lineOwners"
--- @include "includes/setKeeps"

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
      if info and info.set then
        setKeeps.drop(base, group, waiter)
        redis.call('PUBLISH', readyChannel(base, group), '')
        local dirty = redis.call('ZRANGE', readyDirtyKey(base, group, info.owner, info.sandbox), 0, 0)[1]
        if dirty then
          redis.call('PUBLISH', readyChannel(base, group), dirty)
        end
      end
    end
  end
  -- A set's demand: one member per item, in the item's first group.
  for i, item in ipairs(info and info.set or {}) do
    redis.call('ZREM', demandKey(base, item.groups[1].group), setDemandMember(jobId, i))
  end
  return left
end
