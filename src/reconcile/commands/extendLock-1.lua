--[[
  Extends a lock held with the given token (another holder's lock is left alone).

  Input:
    KEYS[1] lock key (the pool's reconcile_lock, built from the pool key base)
    ARGV[1] token
    ARGV[2] new time to live (ms)
  Output:
    OK             extended
    LOCK_NOT_HELD  the lock is not held with this token (expired or taken by another holder)
]]
--- @include "includes/replyCodes"

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return OK
end
return LOCK_NOT_HELD
