--[[
  What waiting sets keep of a group's ready clean VMs (setKeepsKey: waiter member ->
  '<VMs kept>:<priority>', written by includes/acquireLine dispatchClean), read and written only
  here. Read once per group and script, then kept in step with this script's own writes: one
  dispatch passes up to one set per ready clean VM, and each may ask what the sets before it keep in
  each of its groups (includes/pickSet keptBefore); read afresh each time, that cost grew with the
  square of the ready VMs (about 355 ms a dispatch with 400 sets keeping VMs, 35 ms without keeps).
  An entry of a set no longer in the group's line (one that an acquire process of an older release
  served, which knows no set_keeps) is left out when read.
]]
--- @include "includes/poolKeys"

-- One table, not a local per function: a script's main chunk may have at most 200 locals.
-- setKeeps.read: per group name, the keeps as read or written in this script run.
local setKeeps = {read = {}}

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
end
