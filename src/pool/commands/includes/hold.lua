--[[
  Holds a VM that is not terminating and not held (the caller checked): it stays in the pool, in
  its state, but acquire never hands it out. A hold with an end is listed in the expiring holds,
  which reconcile's expireHolds ends when due. A held ready VM leaves the ready indexes; while
  held_by is set, setVmState never puts it back there. Records the `held` event with `extra`
  (more field/value pairs, such as the autohold rule).
  Needs: poolKeys, setVmState (removeFromReadyIndex, indexDue), audit.
]]
local function startHold(base, name, by, now, heldUntil, reason, extra)
  local key = vmKey(base, name)
  local vm = redis.call('HMGET', key, 'state', 'group', 'owner', 'sandbox')
  redis.call('HSET', key, 'held_by', by, 'held_since', now)
  if reason ~= '' then
    redis.call('HSET', key, 'hold_reason', reason)
  end
  if heldUntil ~= '' then
    redis.call('HSET', key, 'held_until', heldUntil)
    redis.call('ZADD', holdsExpiringKey(base), heldUntil, name)
  end
  if vm[1] == 'ready' then
    removeFromReadyIndex(base, name, vm[2], vm[3], vm[4])
  end
  indexDue(base, name)
  local fields = {'by', by, 'reason', reason, 'until', heldUntil}
  for _, v in ipairs(extra or {}) do
    fields[#fields + 1] = v
  end
  recordEvent(base, 'held', name, fields)
end
