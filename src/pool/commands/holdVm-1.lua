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
--- @include "includes/hold"

local key = vmKey(base, name)
local vm = redis.call('HMGET', key, 'state', 'held_by')
local state = vm[1]
if not state then
  return NOT_FOUND
end
if vm[2] then
  return ALREADY_HELD
end
if state == 'terminating' then
  return WRONG_STATE
end
startHold(base, name, by, now, heldUntil, reason)
return OK
