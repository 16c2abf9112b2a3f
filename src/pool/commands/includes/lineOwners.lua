--[[
  The round-robin of owners in a group's line. Each owner with waiting requests in the group has a
  score (priority of its first request) * 2^31 + its turn: the lowest score is served next, so
  priority comes first, then the owner whose turn is oldest. An owner served gets a new turn (the
  group's counter), at the back. An owner at max_vm_per_user is moved to the blocked set (same
  score) by the dispatcher, and back when one of its VMs goes (removeVm), keeping its place.
  Shared by leaveLines, acquireLine and removeVm.
]]
--- @include "includes/poolKeys"

local LINE_TURN_SPAN = 2147483648

-- Puts the owner in the group's round-robin by its first waiting request's priority, at its turn
-- (`turn` given: a new turn, at the back; nil: the turn it has, or a new one for a new owner). An
-- owner at max_vm_per_user stays in the blocked set. An owner with no request left leaves.
local function placeOwner(base, group, owner, turn)
  local ring, blocked = lineOwnersKey(base, group), lineBlockedKey(base, group)
  local head = redis.call('ZRANGE', ownerLineKey(base, group, owner), 0, 0, 'WITHSCORES')
  if not head[1] then
    redis.call('ZREM', ring, owner)
    redis.call('ZREM', blocked, owner)
    return
  end
  local inBlocked = redis.call('ZSCORE', blocked, owner)
  local current = inBlocked or redis.call('ZSCORE', ring, owner)
  if not turn then
    if current then
      turn = tonumber(current) % LINE_TURN_SPAN
    else
      turn = redis.call('INCR', lineTurnKey(base, group))
    end
  end
  redis.call('ZADD', inBlocked and blocked or ring, tonumber(head[2]) * LINE_TURN_SPAN + turn, owner)
end

-- An owner whose VM count went down is no longer at max_vm_per_user: back in the round-robin, at its place.
local function unblockOwner(base, group, owner)
  local score = redis.call('ZSCORE', lineBlockedKey(base, group), owner)
  if score then
    redis.call('ZREM', lineBlockedKey(base, group), owner)
    redis.call('ZADD', lineOwnersKey(base, group), score, owner)
  end
end
