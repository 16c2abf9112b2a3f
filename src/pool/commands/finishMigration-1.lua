--[[
  Ends a migration of the pool's data format (src/pool/dataFormat.ts): the pool is at its version
  (never lowered), and nothing is in progress; only while the caller still holds the migration lock
  (as saveMigrationProgress): a process that lost it (it paused past the lock's expiry, and another
  process took over and may still be running a step) does not declare the migration done.

  Input:
    KEYS[1] pool key base (with hash tag); every key is built from it
    ARGV[1] the migration's version
    ARGV[2] now (epoch ms)
    ARGV[3] the migration lock's token (src/pool/locks.ts)
  Output:
    the pool's version after the call
    LOCK_NOT_HELD   the lock is not held with this token: nothing changed
]]
local base = KEYS[1]
local version, now, token = tonumber(ARGV[1]), ARGV[2], ARGV[3]
--- @include "includes/replyCodes"
--- @include "includes/poolKeys"

if redis.call('GET', migrationLockKey(base)) ~= token then
  return LOCK_NOT_HELD
end

local key = dataFormatKey(base)
local found = tonumber(redis.call('HGET', key, 'version') or '1')
if found < version then
  redis.call('HSET', key, 'version', version, 'migrated_at', now)
  found = version
end
if tonumber(redis.call('HGET', key, 'migrating') or '0') <= found then
  redis.call('HDEL', key, 'migrating', 'migration', 'migration_started_at', 'progress')
end
return found
