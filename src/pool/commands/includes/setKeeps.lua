--[[
  What waiting sets keep of a group's ready clean VMs (setKeepsKey: waiter member ->
  '<VMs kept>:<priority>', written by includes/acquireLine dispatchClean), read and written only
  here. Read once per group and script, then kept in step with this script's own writes: one
  dispatch passes up to one set per ready clean VM, and each may ask what the sets before it keep in
  each of its groups (includes/pickSet keptBefore, setKeeps.before); read afresh each time, that
  cost grew with the square of the ready VMs (358 ms a sweep with 400 sets keeping VMs; 51 ms now,
  28 ms before set_keeps existed: npm run bench:set-keeps, docs/performance.md).
  An entry of a set no longer in the group's line (one that an acquire process of an older release
  served, which knows no set_keeps) is left out when read.
]]
--- @include "includes/poolKeys"

-- Whether the waiting request at (waiter member `a`, priority `pa`) came before the one at (`b`,
-- `pb`): a better priority, or the same priority and an older waiter member (the order of a
-- group's `waiters`). One order for all groups, unlike the round-robins of owners.
local function cameBefore(a, pa, b, pb)
  return pa < pb or (pa == pb and a < b)
end

-- One table, not a local per function: a script's main chunk may have at most 200 locals.
-- setKeeps.read: per group name, the keeps as read or written in this script run; setKeeps.sorted:
-- per group name, the same in cameBefore order with running totals, built by `before` on a group
-- asked about twice since its last write (a group a dispatch writes at each set it passes is
-- walked instead: sorting it again each time would cost more); setKeeps.asked: those asks.
local setKeeps = {read = {}, sorted = {}, asked = {}}

-- The waiting sets that keep ready clean VMs of `group`: {{waiter, count, priority}, ...}. At most the
-- group's ready clean VMs (each keeps one at least). The caller must not change the list; one that
-- may remove entries while it walks it (a set served leaves the lines) walks a copy (setKeeps.copy).
function setKeeps.of(base, group)
  local keeps = setKeeps.read[tostring(group)]
  if keeps then
    return keeps
  end
  keeps = {}
  local flat = redis.call('HGETALL', setKeepsKey(base, group))
  for i = 1, #flat, 2 do
    local count, priority = string.match(flat[i + 1], '^(%d+):(.+)$')
    if count and tonumber(priority) and redis.call('ZSCORE', waitersKey(base, group), flat[i]) then
      keeps[#keeps + 1] = {waiter = flat[i], count = tonumber(count), priority = tonumber(priority)}
    end
  end
  setKeeps.read[tostring(group)] = keeps
  return keeps
end

-- A copy of setKeeps.of's list, to walk while entries may go.
function setKeeps.copy(base, group)
  local copy = {}
  for i, keep in ipairs(setKeeps.of(base, group)) do
    copy[i] = keep
  end
  return copy
end

-- Records that the set at `waiter` keeps `count` ready clean VMs of `group`.
function setKeeps.record(base, group, waiter, count, priority)
  redis.call('HSET', setKeepsKey(base, group), waiter, count .. ':' .. priority)
  setKeeps.sorted[tostring(group)], setKeeps.asked[tostring(group)] = nil, nil
  local keeps = setKeeps.read[tostring(group)]
  if keeps then
    for _, keep in ipairs(keeps) do
      if keep.waiter == waiter then
        keep.count, keep.priority = count, priority
        return
      end
    end
    keeps[#keeps + 1] = {waiter = waiter, count = count, priority = priority}
  end
end

-- The set at `waiter` keeps nothing of `group` any more (it left the group's line).
function setKeeps.drop(base, group, waiter)
  redis.call('HDEL', setKeepsKey(base, group), waiter)
  setKeeps.sorted[tostring(group)], setKeeps.asked[tostring(group)] = nil, nil
  local keeps = setKeeps.read[tostring(group)]
  if keeps then
    for i, keep in ipairs(keeps) do
      if keep.waiter == waiter then
        table.remove(keeps, i)
        return
      end
    end
  end
end

-- Nothing is kept of `group` (a dispatch of the group records it anew).
function setKeeps.clear(base, group)
  redis.call('DEL', setKeepsKey(base, group))
  setKeeps.read[tostring(group)] = {}
  setKeeps.sorted[tostring(group)], setKeeps.asked[tostring(group)] = nil, nil
end

-- How many ready clean VMs of `group` the waiting sets that came before the one at (`waiter`,
-- `priority`) keep there (cameBefore): a binary search of the sorted keeps once the group was asked
-- about twice since its last write, else one walk of them.
function setKeeps.before(base, group, waiter, priority)
  local key = tostring(group)
  local sorted = setKeeps.sorted[key]
  if not sorted then
    local keeps = setKeeps.of(base, group)
    setKeeps.asked[key] = (setKeeps.asked[key] or 0) + 1
    if setKeeps.asked[key] < 2 then
      local kept = 0
      for _, keep in ipairs(keeps) do
        if cameBefore(keep.waiter, keep.priority, waiter, priority) then
          kept = kept + keep.count
        end
      end
      return kept
    end
    sorted = {}
    for i, keep in ipairs(keeps) do
      sorted[i] = {waiter = keep.waiter, priority = keep.priority, count = keep.count}
    end
    table.sort(sorted, function(x, y)
      return cameBefore(x.waiter, x.priority, y.waiter, y.priority)
    end)
    local total = 0
    for _, entry in ipairs(sorted) do
      total = total + entry.count
      entry.upTo = total
    end
    setKeeps.sorted[key] = sorted
  end
  -- The number of keeps that came before (waiter, priority): the first index that did not.
  local lo, hi = 1, #sorted + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cameBefore(sorted[mid].waiter, sorted[mid].priority, waiter, priority) then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo > 1 and sorted[lo - 1].upTo or 0
end
