--[[
  Hands several ready VMs to one owner and sandbox at once, all or nothing (a nodeset: issue 22).
  Each item of the set has its own groups (tried in the order given) and gets its own VM and its
  own lease (assignVm, as acquireVm gives). First every item's VM is picked without changing
  anything; only when every item has one are they all taken, in this one call. Otherwise nothing
  changes and NO_VM is returned: no VM is ever held for a half-served set, so two sets can never
  deadlock each other.

  Per item, as acquireVm without a waiter: a ready VM bound to the owner and sandbox (dirty) first,
  then a clean one while the owner is below the group's owner limit (max_vm_per_user, or fewer by
  max_resources_per_owner, as passed in ARGV), counting the VMs this set picks. Only VMs
  health-checked after the last server start (strictly after its millisecond) qualify. The set is served outside the acquire line (as acquireVm without a waiter): it does not
  wait behind single requests in line, which may wait one set longer.

  One provider preferred: when items list groups of several accounts, the set is first tried with
  every item restricted to the groups of one account (accounts in the order they first appear),
  and only then with all groups.

  A job (ARGV[5]) that was given the set and runs again (its worker died) gets the same VMs and
  leases: item i's assignment is recorded under acquire_assignment:<job id>#<i> for the lease's
  first term. If some of those VMs are no longer in_use under that lease, the records are dropped
  and the set is picked afresh.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] now (epoch ms)
    ARGV[2] owner
    ARGV[3] sandbox
    ARGV[4] worker id
    ARGV[5] job id ('' for none: no re-run record)
    ARGV[6] demand until (epoch ms; 0 for none): a set that waits (retries) counts as demand of
            each item's first group until then (member 'set|<job id>|<item>' in its demand set: reconcile
            spawns for it, poolReader.setDemand); renewed by each retry, dropped when the set is served
    ARGV[7] number of items M
    then per item: lease id, number of groups N, and N quadruples: group id, owner limit in VMs (ownerVmLimit),
               lease_timeout in ms, account ('' for none)
  Output:
    {OK, {HGETALL of each item's VM, in item order}}          taken now, each under a new lease
    {REATTACHED, {HGETALL of each item's VM, in item order}}  this job was given them by an earlier run
    {NO_VM}                                                   some item cannot be served: nothing changed
]]
local base = KEYS[1]
local now, owner, sandbox, workerId, jobId = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local demandUntil = tonumber(ARGV[6])
local itemCount = tonumber(ARGV[7])
--- @include "includes/replyCodes"
--- @include "includes/acquireLine"

local items = {}
do
  local at = 8
  for i = 1, itemCount do
    local item = {leaseId = ARGV[at], groups = {}}
    local n = tonumber(ARGV[at + 1])
    at = at + 2
    for g = 1, n do
      item.groups[g] = {group = ARGV[at], maxVmPerOwner = tonumber(ARGV[at + 1]), leaseMs = tonumber(ARGV[at + 2]), account = ARGV[at + 3]}
      at = at + 4
    end
    items[i] = item
  end
end

local function recordKey(i)
  return acquireAssignmentKey(base, jobId .. '#' .. i)
end

local function hashes(names)
  local out = {}
  for i, name in ipairs(names) do
    out[i] = redis.call('HGETALL', vmKey(base, name))
  end
  return out
end

-- A re-run of the same job gets the VMs and leases it was given, if all of them are still its own.
if jobId ~= '' then
  local given, complete = {}, true
  for i = 1, itemCount do
    local record = redis.call('HMGET', recordKey(i), 'vm', 'lease')
    local vm = record[1] and redis.call('HMGET', vmKey(base, record[1]), 'state', 'lease_id', 'owner')
    if vm and vm[1] == 'in_use' and vm[2] == record[2] and vm[3] == owner then
      given[i] = record[1]
    else
      complete = false
    end
  end
  if complete then
    return {REATTACHED, hashes(given)}
  end
  for i = 1, itemCount do
    redis.call('DEL', recordKey(i))
  end
end

-- Whether `name` qualifies: ready, passing, checked after the server start (strictly after its
-- millisecond: the rare VMs checked within it wait for their next check).
local function qualifies(name)
  local vm = redis.call('HMGET', vmKey(base, name), 'state', 'check_fails')
  return vm[1] == 'ready' and vm[2] == '0'
end

-- First VM of a ready index that qualifies and is not picked yet (bounded: the index's first
-- picked-count + 16 entries).
local function pickFrom(indexKey, picked, pickedCount, serverStart)
  local entries = redis.call('ZRANGEBYSCORE', indexKey, '(' .. serverStart, '+inf', 'LIMIT', 0, pickedCount + 16)
  for _, name in ipairs(entries) do
    if not picked[name] and qualifies(name) then
      return name
    end
  end
  return nil
end

-- Picks one VM per item, using only groups of `account` (nil: any group); nil if some item has none.
local function pickAll(account, serverStart)
  local picked, pickedCount, choice, bound = {}, 0, {}, {}
  for i, item in ipairs(items) do
    for _, g in ipairs(item.groups) do
      if account == nil or g.account == account then
        local name = pickFrom(readyDirtyKey(base, g.group, owner, sandbox), picked, pickedCount, serverStart)
        local fresh = false
        if not name then
          local ownerVms = (tonumber(redis.call('HGET', ownerVmsKey(base, g.group), owner)) or 0) + (bound[g.group] or 0)
          if ownerVms < g.maxVmPerOwner then
            name = pickFrom(readyCleanKey(base, g.group), picked, pickedCount, serverStart)
              or pickFrom(readyOutdatedKey(base, g.group), picked, pickedCount, serverStart)
            fresh = name ~= nil
          end
        end
        if name then
          picked[name], pickedCount = true, pickedCount + 1
          if fresh then
            bound[g.group] = (bound[g.group] or 0) + 1
          end
          choice[i] = {name = name, fresh = fresh, group = g.group, leaseMs = g.leaseMs}
          break
        end
      end
    end
    if not choice[i] then
      return nil
    end
  end
  return choice
end

-- While it waits, the set is demand (one per item, in its first group); served, it is not.
local function demand(waiting)
  if jobId == '' then
    return
  end
  for i, item in ipairs(items) do
    local key = demandKey(base, item.groups[1].group)
    if waiting and demandUntil > tonumber(now) then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      redis.call('ZADD', key, demandUntil, 'set|' .. jobId .. '|' .. i)
    else
      redis.call('ZREM', key, 'set|' .. jobId .. '|' .. i)
    end
  end
end

local serverStart = tonumber(redis.call('GET', serverStartKey(base)))
if not serverStart or not poolVerified(base) then
  demand(true)
  return {NO_VM}
end

local choice
do
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
      choice = pickAll(account, serverStart)
      if choice then break end
    end
  end
  choice = choice or pickAll(nil, serverStart)
end
if not choice then
  demand(true)
  return {NO_VM}
end
demand(false)

local names = {}
for i, c in ipairs(choice) do
  assignVm(base, c.group, c.name, c.fresh, {
    owner = owner, sandbox = sandbox, workerId = workerId, taskId = '', buildId = '', chroot = '',
    leaseId = items[i].leaseId, leaseMs = c.leaseMs, jobId = '',
  }, now)
  if jobId ~= '' then
    redis.call('HSET', recordKey(i), 'vm', c.name, 'lease', items[i].leaseId)
    redis.call('PEXPIRE', recordKey(i), c.leaseMs)
  end
  names[i] = c.name
end
countArrival(base, items[1].groups[1].group, now)
return {OK, hashes(names)}
