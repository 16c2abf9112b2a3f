--[[
  Holds a VM for an operator: it stays in the pool, in its state, but acquire never hands it out.
  A hold with an end is listed in the expiring holds, which reconcile's expireHolds ends when due.
  A held ready VM leaves the ready indexes (which acquire pops from); while held_by is set,
  setVmState never puts it back there. A terminating VM cannot be held.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] VM name
    ARGV[2] who holds it (operator name, never empty)
    ARGV[3] now (epoch ms)
    ARGV[4] when the hold ends (epoch ms), or '' for a hold until unheld
    ARGV[5] why it is held, or ''
  Output:
    OK            held
    ALREADY_HELD  already held (nothing changed; the first holder stays)
    NOT_FOUND     no such VM
    WRONG_STATE   the VM is terminating (nothing changed)
]]
local base = KEYS[1]
local name, by, now, heldUntil, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
--- @include "includes/replyCodes"
--- @include "includes/setVmState"
--- @include "includes/audit"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'group', 'owner', 'sandbox', 'held_by')
local state, group, owner, sandbox = vm[1], vm[2], vm[3], vm[4]
if not state then
  return NOT_FOUND
end
if vm[5] then
  return ALREADY_HELD
end
if state == 'terminating' then
  return WRONG_STATE
end
redis.call('HSET', key, 'held_by', by, 'held_since', now)
if reason ~= '' then
  redis.call('HSET', key, 'hold_reason', reason)
end
if heldUntil ~= '' then
  redis.call('HSET', key, 'held_until', heldUntil)
  redis.call('ZADD', holdsExpiringKey(base), heldUntil, name)
end
if state == 'ready' then
  removeFromReadyIndex(base, name, group, owner, sandbox)
end
indexDue(base, name)
recordEvent(base, 'held', name, {'by', by, 'reason', reason, 'until', heldUntil})
return OK
