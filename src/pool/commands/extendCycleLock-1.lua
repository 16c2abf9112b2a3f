--[[
  Extends a pool lock (the reconcile cycle lock, or the migration lock) held with the given token (another holder's lock is left alone).

  Input:
    KEYS[1] pool key base (with hash tag), e.g. "vmpool:{vmpool}:"; every key is built from it
    ARGV[1] token
    ARGV[2] new time to live (ms)
    ARGV[3] the lock's kind: reconcile (when absent) or migration
  Output:
    OK             extended
    LOCK_NOT_HELD  the lock is not held with this token (expired or taken by another holder)
]]
local base = KEYS[1]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

local key = ARGV[3] == 'migration' and migrationLockKey(base) or reconcileLockKey(base)
if redis.call('GET', key) == ARGV[1] then
  redis.call('PEXPIRE', key, ARGV[2])
  return OK
end
return LOCK_NOT_HELD
