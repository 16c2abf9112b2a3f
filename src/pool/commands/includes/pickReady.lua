--[[
  Which ready VM of an index may be handed out: only VMs health-checked after the last server start
  (server_start) qualify; within the start's millisecond, check_seq tells which came first
  (markServerStart). Ready VMs always have check_fails == 0, which is checked again here.
  Nothing is handed out while the pool's state is not verified on this Redis run (includes/poolState:
  after a restart or failover, until a process verified it or recovered from its loss).
  Shared by acquireVm and dispatchAcquireLine.
]]
--- @include "includes/poolKeys"
--- @include "includes/poolState"

local function checkedAfterStart(vm, serverStartSeq)
  return vm[1] == 'ready' and vm[2] == '0' and (tonumber(vm[3]) or 0) > serverStartSeq
end

-- Rare path: the first candidates were checked in the start's own millisecond, some before it.
-- Looks among those (bounded) for one checked after the start, then past that millisecond.
local function pickPastStartMillisecond(base, indexKey, serverStart, serverStartSeq)
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', indexKey, serverStart, serverStart, 'LIMIT', 0, 100)) do
    if checkedAfterStart(redis.call('HMGET', vmKey(base, name), 'state', 'check_fails', 'check_seq'), serverStartSeq) then
      return name
    end
  end
  local later = redis.call('ZRANGEBYSCORE', indexKey, '(' .. serverStart, '+inf', 'LIMIT', 0, 1)[1]
  local vm = later and redis.call('HMGET', vmKey(base, later), 'state', 'check_fails')
  if vm and vm[1] == 'ready' and vm[2] == '0' then
    return later
  end
  return nil
end

-- First VM of a ready index checked after the server start, or nil (also before the first start).
-- Entries that no longer qualify (which the scripts never leave behind, but an operator editing
-- hashes could) are dropped from the index.
local function pickReady(base, indexKey)
  local serverStart = tonumber(redis.call('GET', serverStartKey(base)))
  if not serverStart or not poolVerified(base) then
    return nil
  end
  for _ = 1, 16 do
    local entry = redis.call('ZRANGEBYSCORE', indexKey, serverStart, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local name = entry[1]
    if not name then
      return nil
    end
    local vm = redis.call('HMGET', vmKey(base, name), 'state', 'check_fails', 'check_seq')
    if vm[1] ~= 'ready' or vm[2] ~= '0' then
      redis.call('ZREM', indexKey, name)
    elseif tonumber(entry[2]) > serverStart then
      return name
    else
      -- Checked in the start's own millisecond: only then does the order within it matter.
      local serverStartSeq = tonumber(redis.call('GET', serverStartSeqKey(base))) or 0
      if checkedAfterStart(vm, serverStartSeq) then
        return name
      end
      return pickPastStartMillisecond(base, indexKey, serverStart, serverStartSeq)
    end
  end
  return nil
end

-- First clean VM of the group that may be handed out: one of the current launch (ready_clean), or,
-- only while none is ready, one of an older launch (ready_outdated), which keeps serving during a
-- rollout until its replacements are ready.
local function pickClean(base, group)
  return pickReady(base, readyCleanKey(base, group)) or pickReady(base, readyOutdatedKey(base, group))
end
