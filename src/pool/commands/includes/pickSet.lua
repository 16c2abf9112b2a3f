--[[
  Picks one ready VM for each item of an all-or-nothing set (acquireVmSet, and the line's
  dispatcher for a set that waits), without changing anything.
  An item is {leaseId, groups = {{group, maxVmPerOwner, leaseMs, account, usage}, ...}} (usage: the
  group's owner usage spec across groups, includes/ownerUsage, held to as a single acquire is): its groups are
  tried in order. Per item, as a single acquire: a ready VM bound to the owner and sandbox (dirty)
  first, then a clean one (current launch, then an older one) while the owner stays below the
  group's owner limit, counting the clean VMs this set picks. Only VMs health-checked after the last
  server start (strictly after its millisecond) qualify; nothing while the pool is not verified.
  One provider preferred: when the items list groups of several accounts, the set is first tried
  with every item restricted to the groups of one account (accounts in the order they first
  appear), and only then with all groups. setMissingItems names the items that cannot have a VM
  now (acquireVmSet's NO_VM answer, for telling why a set waits).
  A waiting set served by the line (its `place` given: waiter member and priority) leaves alone, in
  each group, the ready clean VMs that waiting sets which came before it keep there (setKeepsKey,
  written by includes/acquireLine dispatchClean); see keptBefore.
  Shared by acquireVmSet and includes/acquireLine.
]]
--- @include "includes/poolKeys"
--- @include "includes/poolState"
--- @include "includes/ownerUsage"
--- @include "includes/setKeeps"

-- How many ready clean VMs of `group` the waiting sets that came before the set at `place`
-- ({waiter, priority}) keep there (cameBefore). Its own keep and those of sets that came after it
-- do not count, whatever their places in this group's round-robin: with one order for all groups,
-- two sets that the round-robins of two groups put in opposite orders never each keep what the
-- other needs and both wait until their deadlines; the one that came first may take what the other
-- keeps.
local function keptBefore(base, group, place)
  return setKeeps.before(base, group, place.waiter, place.priority)
end

-- Whether `name` qualifies: ready and passing.
local function setVmQualifies(base, name)
  local vm = redis.call('HMGET', vmKey(base, name), 'state', 'check_fails')
  return vm[1] == 'ready' and vm[2] == '0'
end

-- First VM of a ready index that qualifies and is not picked yet (bounded: the index's first
-- picked-count + 16 entries).
local function pickUnpicked(base, indexKey, picked, pickedCount, serverStart)
  local entries = redis.call('ZRANGEBYSCORE', indexKey, '(' .. serverStart, '+inf', 'LIMIT', 0, pickedCount + 16)
  for _, name in ipairs(entries) do
    if not picked[name] and setVmQualifies(base, name) then
      return name
    end
  end
  return nil
end

-- Whether the group has clean VMs ready or on their way (coming up, or spawning): a set may count
-- on it for a VM soon. A group with none (its breaker open, at its limit, drained) may leave the set
-- waiting until its deadline, so the set keeps no VM of its other groups for it (setCleanNeed).
local function groupHasSupply(base, group)
  return redis.call('ZCARD', readyCleanKey(base, group)) + redis.call('ZCARD', readyOutdatedKey(base, group)) > 0
    or redis.call('SCARD', comingKey(base, group)) > 0
    or redis.call('ZCARD', spawningKey(base, group)) > 0
end

-- One VM per item using only groups of `account` (nil: any group): {{name, fresh, group, leaseMs, usage}
-- per item}, or nil when some item has none. With `ample`, every group that has clean VMs ready or
-- on their way (groupHasSupply) is taken to have a ready clean VM for each item (a placeholder name),
-- so that only the owner's limits, its dirty VMs and what is coming decide (setCleanNeed). With
-- `room` (a function of the group), no more clean VMs of a group are picked than it says. With a
-- `missing` list, an item that has none is appended to it (its 1-based index) and skipped, and the
-- others are picked as usual (setMissingItems: a report, never a choice to assign).
local function pickSetIn(base, owner, sandbox, items, account, serverStart, ample, room, missing)
  local picked, pickedCount, choice, bound, pending = {}, 0, {}, {}, {}
  for i, item in ipairs(items) do
    for _, g in ipairs(item.groups) do
      if account == nil or g.account == account then
        local name = pickUnpicked(base, readyDirtyKey(base, g.group, owner, sandbox), picked, pickedCount, serverStart)
        local fresh = false
        if not name then
          local ownerVms = (tonumber(redis.call('HGET', ownerVmsKey(base, g.group), owner)) or 0) + (bound[g.group] or 0)
          if ownerVms < tonumber(g.maxVmPerOwner) and ownerMayBind(base, owner, g.usage, pending) then
            if ample then
              name = groupHasSupply(base, g.group) and ('\0ample:' .. i) or nil
            elseif room and (bound[g.group] or 0) >= room(g.group) then
              name = nil
            else
              name = pickUnpicked(base, readyCleanKey(base, g.group), picked, pickedCount, serverStart)
                or pickUnpicked(base, readyOutdatedKey(base, g.group), picked, pickedCount, serverStart)
            end
            fresh = name ~= nil
          end
        end
        if name then
          picked[name], pickedCount = true, pickedCount + 1
          if fresh then
            bound[g.group] = (bound[g.group] or 0) + 1
            addOwnerPending(pending, g.usage)
          end
          choice[i] = {name = name, fresh = fresh, group = g.group, leaseMs = tonumber(g.leaseMs), usage = g.usage}
          break
        end
      end
    end
    if not choice[i] then
      if not missing then
        return nil
      end
      missing[#missing + 1] = i
    end
  end
  return choice
end

-- The set's VMs, one per item (as pickSetIn), preferring one account; nil when not all can be had.
-- With `place` ({waiter, priority}: a waiting set served by the line), only the ready clean VMs of
-- each group beyond those kept there by sets that came before it (keptBefore) may be picked.
local function pickSet(base, owner, sandbox, items, ample, place)
  local serverStart = tonumber(redis.call('GET', serverStartKey(base)))
  if not serverStart or not poolVerified(base) then
    return nil
  end
  local room
  if place then
    -- Only the VMs it could pick (checked after the server start, as pickUnpicked) make room: after
    -- a start, the ready VMs not checked again yet would otherwise let it take VMs a keeper counts on.
    local rooms, after = {}, '(' .. serverStart
    room = function(group)
      if not rooms[group] then
        rooms[group] = redis.call('ZCOUNT', readyCleanKey(base, group), after, '+inf')
          + redis.call('ZCOUNT', readyOutdatedKey(base, group), after, '+inf')
          - keptBefore(base, group, place)
      end
      return rooms[group]
    end
  end
  local accounts, seen = {}, {}
  for _, item in ipairs(items) do
    for _, g in ipairs(item.groups) do
      if g.account ~= '' and not seen[g.account] then
        seen[g.account] = true
        accounts[#accounts + 1] = g.account
      end
    end
  end
  if #accounts > 1 then
    for _, account in ipairs(accounts) do
      local choice = pickSetIn(base, owner, sandbox, items, account, serverStart, ample, room)
      if choice then
        return choice
      end
    end
  end
  return pickSetIn(base, owner, sandbox, items, nil, serverStart, ample, room)
end

-- The items (1-based indexes, in order) of a set that cannot have a VM now, for telling why it waits:
-- {} when pickSet would serve it whole (it waits only for its turn in the line), else those that
-- get none when every item picks as pickSet does with all groups (no account preferred), an item
-- without a VM skipped so that the others still pick theirs. Every item while the pool is not verified.
local function setMissingItems(base, owner, sandbox, items)
  local serverStart = tonumber(redis.call('GET', serverStartKey(base)))
  local missing = {}
  if not serverStart or not poolVerified(base) then
    for i = 1, #items do
      missing[i] = i
    end
    return missing
  end
  if pickSet(base, owner, sandbox, items) then
    return missing
  end
  pickSetIn(base, owner, sandbox, items, nil, serverStart, false, nil, missing)
  return missing
end

-- How many ready clean VMs of `group` a waiting set could use: the clean VMs of the group it would
-- take if every group had enough of them ready (its dirty VMs as they are, its owner's limits as
-- they are now, and only groups with VMs ready or on their way). 0 when its owner's limits let it
-- have no whole set now, however many VMs were ready, or when some VM of the set has no group with
-- a VM ready or coming: then it keeps none of the group's VMs from the requests behind it
-- (includes/acquireLine dispatchClean), until one of the owner's VMs goes or a VM is on its way.
local function setCleanNeed(base, owner, sandbox, items, group)
  local choice = pickSet(base, owner, sandbox, items, true)
  local n = 0
  for _, c in ipairs(choice or {}) do
    if c.fresh and tostring(c.group) == tostring(group) then
      n = n + 1
    end
  end
  return n
end
