--[[
  Ends the hold of a held VM (its hash fields given): the hold fields go, it leaves the expiring
  holds, and a ready VM goes back into its ready index (clean, or dirty for its owner and sandbox),
  scored by its last health check, and its group's waiters are told.
  Needs: poolKeys, setVmState (addToReadyIndex, indexDue).
]]
--- @include "includes/audit"
local function endHold(base, name, state, group, owner, sandbox, lastHealthCheck)
  recordEvent(base, 'unheld', name)
  redis.call('HDEL', vmKey(base, name), 'held_by', 'held_since', 'held_until', 'hold_reason')
  redis.call('ZREM', holdsExpiringKey(base), name)
  indexDue(base, name)
  if state == 'ready' then
    addToReadyIndex(base, name, group, owner, sandbox, tonumber(lastHealthCheck) or 0)
    redis.call('PUBLISH', readyChannel(base, group), name)
  end
end
